"""The package's layers: a module imports only from its own layer or the layers below it, the
packages declared independent never import each other, directly or through other modules, and
no modules import each other in a loop.

The layers, bottom first, are the map in the README's "Architecture" section."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agent" / "volagent"

# Bottom first. A layer is a list of module prefixes: a module may import from its own layer
# and the layers below, never from one above.
LAYERS: list[list[str]] = [
    [
        "volagent",
        "volagent.errors",
        "volagent.log",
        "volagent.metrics",
        "volagent.terminal",
        "volagent.vocabulary",
    ],
    ["volagent.safedir", "volagent.values", "volagent.retrying", "volagent.nesting"],
    ["volagent.daemon.systemd", "volagent.daemon.socket_access"],
    ["volagent.config", "volagent.worker", "volagent.config_watch"],
    ["volagent.state", "volagent.httpserver"],
    ["volagent.aws"],
    ["volagent.mount", "volagent.rack"],
    ["volagent.volumes"],
    ["volagent.guard", "volagent.watch", "volagent.api"],
    ["volagent.ops.doctor", "volagent.ops.gc", "volagent.ops"],
    ["volagent.daemon"],
    ["volagent.cli", "volagent.__main__"],
]

# Packages that never import each other, directly or through other modules, like
# import-linter's "independence" contracts: each list is one contract.
INDEPENDENT: list[list[str]] = [
    ["volagent.daemon.systemd", "volagent.daemon.socket_access"],
    ["volagent.state", "volagent.httpserver"],
    ["volagent.mount", "volagent.rack"],
    ["volagent.guard", "volagent.watch", "volagent.api"],
    ["volagent.ops.doctor", "volagent.ops.gc"],
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


def covers(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def place(name: str) -> int:
    """The layer of a module: the longest matching prefix decides."""
    best: tuple[int, int] | None = None
    for li, layer in enumerate(LAYERS):
        for prefix in layer:
            if covers(prefix, name) and (best is None or len(prefix) > best[1]):
                best = (li, len(prefix))
    assert best is not None, f"{name} is on no layer: add it to LAYERS and to the README's map"
    return best[0]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def test_every_module_is_on_a_layer() -> None:
    for name in modules():
        place(name)


def test_no_module_imports_upward() -> None:
    wrong = []
    for name, imported in graph().items():
        for other in sorted(imported):
            if other == "volagent" or name.startswith(other + "."):
                continue  # the package's face, or a package's own __init__
            if place(other) > place(name):
                wrong.append(f"{name} -> {other}")
    assert wrong == []


def test_independent_packages_stay_apart() -> None:
    deps = graph()

    def reach(name: str) -> set[str]:
        """Every module `name` imports, directly or through others."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            for other in deps[todo.pop()] - seen:
                seen.add(other)
                todo.append(other)
        return seen

    wrong = []
    for contract in INDEPENDENT:
        for prefix in contract:
            assert any(covers(prefix, name) for name in deps), f"{prefix} names no module"
        for a in contract:
            for b in contract:
                if a == b:
                    continue
                for name in sorted(n for n in deps if covers(a, n)):
                    met = sorted(o for o in reach(name) if covers(b, o))
                    wrong += [f"{name} -> {o} ({a} and {b} are independent)" for o in met]
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
