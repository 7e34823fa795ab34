"""The package's layers: a module imports only from its own layer or the layers below it,
peers on one layer stay apart, and no modules import each other in a loop.

The layers, bottom first, are the map in the README's "Architecture" section."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agent" / "volagent"

# Bottom first. A layer is a list of groups; a group is a list of module prefixes. Groups on
# one layer are peers: neither imports the other.
LAYERS: list[list[list[str]]] = [
    [
        [
            "volagent",
            "volagent.errors",
            "volagent.log",
            "volagent.metrics",
            "volagent.terminal",
            "volagent.vocabulary",
        ]
    ],
    [["volagent.safedir", "volagent.values", "volagent.retrying", "volagent.nesting"]],
    [["volagent.daemon.systemd", "volagent.daemon.socket_access"]],
    [["volagent.config", "volagent.worker", "volagent.config_watch"]],
    [["volagent.state"]],
    [["volagent.httpserver"]],
    [["volagent.aws"]],
    [["volagent.mount"]],
    [["volagent.rack"]],
    [["volagent.volumes"]],
    [["volagent.guard"], ["volagent.watch"], ["volagent.api"]],
    [["volagent.ops.doctor"], ["volagent.ops.gc"], ["volagent.ops"]],
    [["volagent.daemon"]],
    [["volagent.cli", "volagent.__main__"]],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, wherever in the file (a function-level
    import ties the layers just as much)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from volagent.mount import kernel` names the module volagent.mount.kernel
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for dotted in names:
            owner = dotted
            while owner and owner not in known:
                owner = owner.rpartition(".")[0]  # a name defined in a module: that module
            if owner:
                found.add(owner)
    return found


def place(name: str) -> tuple[int, int]:
    """(layer, group) of a module: the longest matching prefix decides."""
    best: tuple[int, int, int] | None = None
    for li, layer in enumerate(LAYERS):
        for gi, group in enumerate(layer):
            for prefix in group:
                matches = name == prefix or name.startswith(prefix + ".")
                if matches and (best is None or len(prefix) > best[2]):
                    best = (li, gi, len(prefix))
    assert best is not None, f"{name} is on no layer: add it to LAYERS and to the README's map"
    return best[0], best[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def test_every_module_is_on_a_layer() -> None:
    for name in modules():
        place(name)


def test_no_module_imports_upward_or_across() -> None:
    wrong = []
    for name, imported in graph().items():
        layer, group = place(name)
        for other in sorted(imported):
            if other == "volagent" or name.startswith(other + "."):
                continue  # the package's face, or a package's own __init__
            o_layer, o_group = place(other)
            if o_layer > layer or (o_layer == layer and o_group != group):
                wrong.append(f"{name} -> {other}")
    assert wrong == []


def test_no_import_cycles() -> None:
    deps = graph()
    # a package's __init__ handing on names of its own modules is not a loop of layers
    edges = {
        name: {o for o in imported if not o.startswith(name + ".")}
        for name, imported in deps.items()
    }
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycles.append([*visiting[visiting.index(name) :], name])
            return
        visiting.append(name)
        for other in sorted(edges.get(name, ())):
            visit(other)
        visiting.pop()
        done.add(name)

    for name in sorted(edges):
        visit(name)
    assert cycles == []
