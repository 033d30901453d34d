"""docs/cli.md is generated from the command tree: stale, it fails here (and the check is shown to fail); shell
completion works through the real entry point without a terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from poolcli import reference
from poolcli.app import _long_options

CLI_MD = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    problem = reference.stale(CLI_MD)
    if problem:
        pytest.fail(problem, pytrace=False)


def test_stale_reference_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = reference.command_tree()
    option = next(p for p in tree.commands["embed"].params if p.name == "text_field")
    monkeypatch.setattr(option, "help", "Where the text is (changed by the test).")
    problem = reference.stale(CLI_MD, tree)
    assert problem is not None
    assert "python -m poolcli.reference > docs/cli.md" in problem  # says how to fix it
    assert "+- `--text-field` TEXT: Where the text is (changed by the test). Default: `text`." in problem
    # The tree is built afresh for each caller: the change reached no one else's.
    assert reference.render() != reference.render(tree)
    assert "changed by the test" not in reference.render()


def test_reference_lists_every_option_of_every_command() -> None:
    text = reference.render()
    sections = text.split("\n## `poolcli ")
    by_command = {s.split("`", 1)[0]: s for s in sections[1:]}
    for command, options in _long_options().items():
        missing = [o for o in options if f"`{o}`" not in by_command[command]]
        assert not missing, (command, missing)
    assert "`--override-pooler-config` is `--pooler-config`" in text  # the seeds' spellings, once
    assert "\x1b[" not in text  # no terminal colours


def test_shell_completion_without_a_terminal() -> None:
    entry = shutil.which("poolcli", path=str(Path(sys.executable).parent))
    command = [entry] if entry else [sys.executable, "-m", "poolcli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_POOLCLI", "COMP_"))}

    def complete(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env={**env, **extra}, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )

    script = complete(_POOLCLI_COMPLETE="source_bash")
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _poolcli_completion poolcli" in script.stdout
    # What that script asks for when <TAB> follows `poolcli embed --backend `: the option's choices.
    choices = complete(_POOLCLI_COMPLETE="complete_bash", COMP_WORDS="poolcli embed --backend ", COMP_CWORD="3")
    assert choices.returncode == 0, choices.stderr
    assert choices.stdout.split() == ["auto", "torch", "openvino"]
