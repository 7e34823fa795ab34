"""Versions side by side, proven with two real bundles of this checkout (the second one's
version one step after the first): the install puts `volagent` on PATH, an upgrade keeps the
version before it, `install.sh --rollback` goes back to it (and refuses when that version
would refuse the config), old versions are pruned to the newest few, and `--uninstall`
removes the install and the command but leaves the config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from volagent import __version__

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VOLAGENT_TEST_CACHE", "/var/cache/volagent-test"))
NEXT = f"{__version__}.post1"  # a later version than this checkout's, whatever it is
SOURCES = (
    "agent",
    "scripts",
    "packer",
    "systemd",
    "examples",
    "docs",
    "README.md",
    "pyproject.toml",
)

pytestmark = pytest.mark.root  # the wheels' cache is shared under CACHE


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    """argv's output (stdout, then stderr), once it has succeeded."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, check=False)
    assert out.returncode == 0, f"{argv}:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def build_bundle(tree: Path, out: Path) -> Path:
    printed = run(
        [str(tree / "scripts" / "build-dist"), "--python", sys.executable, "--out", str(out)],
        env={**os.environ, "VOLAGENT_DIST_CACHE": str(CACHE / "dist")},
    )
    bundle = next(out.glob("volagent-*-bundle.tar.gz"))
    assert str(bundle) in printed
    target = out / "unpacked"
    with tarfile.open(bundle) as tar:
        tar.extractall(target, filter="data")
    (unpacked,) = target.iterdir()
    return unpacked


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The unpacked bundles of this checkout's version and of the next one."""
    first = build_bundle(ROOT, tmp_path_factory.mktemp("first"))
    tree = tmp_path_factory.mktemp("next-tree")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tree / name)
    init = tree / "agent" / "volagent" / "__init__.py"
    text, count = re.subn(
        r'^__version__ = ".*"$', f'__version__ = "{NEXT}"', init.read_text(), flags=re.M
    )
    assert count == 1
    init.write_text(text)
    return first, build_bundle(tree, tmp_path_factory.mktemp("next"))


def version_on(path: str) -> str:
    """`volagent --version` as a shell with PATH=path finds it."""
    return run(["sh", "-c", "volagent --version"], env={"PATH": f"{path}:/usr/bin:/bin"}).strip()


def installed(prefix: Path) -> set[str]:
    return {p.name for p in (prefix / "versions").iterdir()}


def test_install_upgrade_rollback_prune_uninstall(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = bundles
    prefix, bin_dir = tmp_path / "opt", tmp_path / "bin"
    config = tmp_path / "volagent.toml"
    config.write_text('rack = "r1"\n')
    install = ["--prefix", str(prefix), "--link", str(bin_dir), "--no-group"]

    run([str(first / "install.sh"), *install])
    assert version_on(str(bin_dir)) == f"volagent {__version__}"
    assert os.readlink(bin_dir / "volagent") == str(prefix / "bin" / "volagent")

    run([str(second / "install.sh"), *install])
    assert version_on(str(bin_dir)) == f"volagent {NEXT}"
    assert os.readlink(prefix / "previous") == f"versions/{__version__}"

    # a config the previous version refuses: nothing is switched
    config.write_text('rack = "r1"\nno_such_key = 1\n')
    rollback = [str(prefix / "install.sh"), "--rollback", "--prefix", str(prefix)]
    refused = subprocess.run(
        [*rollback, "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1
    assert "no_such_key" in refused.stderr and str(config) in refused.stderr
    assert version_on(str(bin_dir)) == f"volagent {NEXT}"

    config.write_text('rack = "r1"\n')
    said = run([*rollback, "--config", str(config)])
    assert f"rolled back from {NEXT} to volagent {__version__}" in said
    assert version_on(str(bin_dir)) == f"volagent {__version__}"
    assert os.readlink(prefix / "previous") == f"versions/{NEXT}"

    # versions an earlier install left beyond the newest --keep are pruned, never the
    # current or the previous one
    for n, old in enumerate(("0.0.1", "0.0.2")):
        (prefix / "versions" / old).mkdir()
        os.utime(prefix / "versions" / old, (1_000_000 + n, 1_000_000 + n))
    run([str(second / "install.sh"), *install, "--keep", "3"])
    assert installed(prefix) == {__version__, NEXT, "0.0.2"}
    run([str(second / "install.sh"), *install, "--keep", "2"])
    assert installed(prefix) == {__version__, NEXT}

    run(
        [str(prefix / "install.sh"), "--uninstall", "--prefix", str(prefix), "--link", str(bin_dir)]
    )
    assert not prefix.exists()
    assert not (bin_dir / "volagent").exists()
    assert config.read_text() == 'rack = "r1"\n'


def test_install_never_replaces_a_volagent_on_path_that_is_not_its_own(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    first, _ = bundles
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "volagent").write_text("#!/bin/sh\necho mine\n")
    out = subprocess.run(
        [
            str(first / "install.sh"),
            "--prefix",
            str(tmp_path / "opt"),
            "--link",
            str(bin_dir),
            "--no-group",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert f"{bin_dir}/volagent exists and is not a link" in out.stderr
    assert not (tmp_path / "opt" / "current").exists()
    assert (bin_dir / "volagent").read_text() == "#!/bin/sh\necho mine\n"
