"""The man page and bash completion that scripts/cli-docs generates from the argument parser
(the bundle ships them): the page renders without a warning and documents every command and
option; the completion completes commands, each command's options, and paths after
--config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from volagent import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("share")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli-docs"), str(out)], check=True, timeout=60
    )
    return out


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def test_the_man_page_renders_cleanly_and_documents_every_command_and_option(docs: Path) -> None:
    page = docs / "man" / "man1" / "volagent.1"
    checked = subprocess.run(
        [tool("groff"), "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (checked.returncode, checked.stderr) == (0, "")
    shown = subprocess.run(
        [tool("groff"), "-man", "-Tascii", "-P-cbou", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    text = " ".join(shown.split())
    parser = cli.build_parser()
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                assert f"volagent {name}" in text, name
                for option in sub._actions:
                    for flag in option.option_strings:
                        assert flag in text, f"{name} {flag}"
                for example in cli.DESCRIPTIONS[name][1]:
                    assert " ".join(example.split()) in text, example
    assert f"{cli.EXIT_USAGE} (EX_USAGE)" in text


def complete(docs: Path, line: str, cwd: Path) -> list[str]:
    """What the completion offers for `line` (the word under the cursor last)."""
    script = (
        f"source {docs / 'bash-completion' / 'completions' / 'volagent'}\n"
        f"COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
        '[[ "$LINE" == *" " ]] && COMP_WORDS+=("") && COMP_CWORD=${#COMP_WORDS[@]}-1\n'
        "_volagent\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(
        [tool("bash"), "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"LINE": line, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return sorted(w for w in out.stdout.splitlines() if w)


def test_the_completion_completes_commands_options_and_paths(docs: Path, tmp_path: Path) -> None:
    assert complete(docs, "volagent st", tmp_path) == ["status"]
    assert complete(docs, "volagent c", tmp_path) == ["check-config"]
    assert complete(docs, "volagent status --j", tmp_path) == ["--json"]
    assert complete(docs, "volagent doctor --", tmp_path) == ["--config", "--help", "--json"]
    (tmp_path / "rack.toml").write_text("")
    assert complete(docs, "volagent --config ra", tmp_path) == ["rack.toml"]
    assert complete(docs, "volagent paths --app ", tmp_path) == []
