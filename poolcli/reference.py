"""The command-line reference, docs/cli.md, generated from the command tree Typer builds (the one that parses).

    python -m poolcli.reference > docs/cli.md     # regenerate after changing a command, an option or a help text
    python -m poolcli.reference --check           # exit 1 when docs/cli.md is not what the code would write

Every command, argument and option with all its spellings, its type or choices, its default and its help text,
grouped by the panels `--help` shows. The text depends only on the code: no terminal width, no colour. It lives
beside `app.py` because it reads the whole tree from the root app; nothing imports it on the way to `--help`.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

PROG = "poolcli"
REGENERATE = "python -m poolcli.reference > docs/cli.md"
DEFAULT_PATH = Path("docs") / "cli.md"

_TYPE_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN", Path: "PATH"}


def command_tree() -> Any:
    """The root Click command of `poolcli`, built afresh (so a test may change it without touching others')."""
    import typer

    from poolcli.app import app

    return typer.main.get_command(app)


def render(root: Any = None) -> str:
    """docs/cli.md for the command tree `root` (default: poolcli's own)."""
    root = command_tree() if root is None else root
    text = _Text(rich=getattr(root, "rich_markup_mode", None) == "rich")
    help_names = list(getattr(root, "context_settings", {}).get("help_option_names", ["--help"]))
    commands = {name: cmd for name, cmd in getattr(root, "commands", {}).items() if not cmd.hidden}
    out: list[str] = [
        "# Command-line reference",
        "",
        f"<!-- Generated from the code by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every command and option of `poolcli`, as its `--help` lists them, generated from the command tree that "
        "parses the command line (the test `tests/unit/test_cli_reference.py` fails when this file is stale). "
        f"Every command also takes {_spellings(help_names)} (its help in the terminal).",
        "",
    ]
    out += [
        f"- [`{PROG} {name}`](#{_anchor(f'{PROG} {name}')}): {text.first_line(cmd.help)}"
        for name, cmd in commands.items()
    ]
    out += ["- [Other spellings](#other-spellings): vLLM's option names, accepted and rewritten before parsing", ""]
    out += ["## `poolcli`", "", f"Usage: `{PROG} [OPTIONS] COMMAND [ARGS]...`", ""]
    out += text.paragraphs(root.help)
    out += _params(root.params, text)
    out += [
        "`--debug`, anywhere on the line (or `POOLCLI_DEBUG=1` in the environment), prints the traceback of a failure.",
        "",
    ]
    if any(p.name == "show_completion" for p in root.params):
        out += [
            f"Shell completion without a terminal: `_{PROG.upper()}_COMPLETE=source_bash {PROG}` prints the bash "
            "script (`source_zsh`, `source_fish` for those shells); see [running.md](running.md#shell-completion).",
            "",
        ]
    for name, cmd in commands.items():
        out += [f"## `{PROG} {name}`", "", f"Usage: `{_usage(f'{PROG} {name}', cmd.params)}`", ""]
        out += text.paragraphs(cmd.help)
        out += _params(cmd.params, text)
    out += _other_spellings()
    return "\n".join(out).rstrip("\n") + "\n"


def stale(path: Path = DEFAULT_PATH, root: Any = None) -> str | None:
    """None when `path` holds exactly what `render(root)` writes, else what is wrong and how to fix it."""
    expected = render(root)
    try:
        actual = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} does not exist: generate it with `{REGENERATE}`"
    if actual == expected:
        return None
    diff = difflib.unified_diff(
        actual.splitlines(), expected.splitlines(), f"{path} (on disk)", f"{path} (from the code)", lineterm="", n=1
    )
    shown = list(diff)
    more = f"\n... {len(shown) - 40} more diff lines" if len(shown) > 40 else ""
    return f"{path} is stale: regenerate it with `{REGENERATE}`\n" + "\n".join(shown[:40]) + more


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--check":
        problem = stale(Path(args[1]) if len(args) > 1 else DEFAULT_PATH)
        if problem:
            print(problem, file=sys.stderr)
            return 1
        return 0
    if args:
        print(f"usage: python -m poolcli.reference [--check [PATH]]  (regenerate: {REGENERATE})", file=sys.stderr)
        return 64
    sys.stdout.buffer.write(render().encode("utf-8"))  # UTF-8 whatever the locale says
    sys.stdout.flush()
    return 0


# --- one command's parameters -------------------------------------------------------------------------------------


def _params(params: Iterable[Any], text: _Text) -> list[str]:
    shown = [p for p in params if not getattr(p, "hidden", False)]
    arguments = [p for p in shown if not _is_option(p)]
    panels: dict[str, list[Any]] = {}
    for p in shown:
        if _is_option(p):
            panel = getattr(p, "rich_help_panel", None)
            panels.setdefault(panel if isinstance(panel, str) and panel else "Options", []).append(p)
    out: list[str] = []
    if arguments:
        out += ["### Arguments", ""] + [_argument(p, text) for p in arguments] + [""]
    for panel, options in panels.items():
        out += [f"### {panel}", ""] + [_option(p, text) for p in options] + [""]
    return out


def _is_option(p: Any) -> bool:
    # Options are told from arguments by `is_flag` (Typer carries its own copy of Click's classes).
    return hasattr(p, "is_flag")


def _argument(p: Any, text: _Text) -> str:
    name = _metavar(p)
    facts = [_type(p)]
    facts.append("required" if p.required else "optional")
    line = f"- `{name}` ({', '.join(f for f in facts if f)})"
    return _with_help(line, text.inline(p.help), _default(p))


def _option(p: Any, text: _Text) -> str:
    spellings = " / ".join(_spellings(opts) for opts in (p.opts, p.secondary_opts) if opts)
    flag = bool(p.is_flag or getattr(p, "count", False))
    line = f"- {spellings}" if flag else f"- {spellings} {_type(p)}"
    if p.required:
        line += " (required)"
    return _with_help(line, text.inline(p.help), _default(p))


def _with_help(line: str, help_text: str, default: str | None) -> str:
    if help_text:
        line += f": {help_text}"
    # A help text that says its default itself ("Default: ...") is not followed by a second one.
    if default is not None and "Default:" not in help_text:
        line += f" Default: `{default}`." if help_text else f": default `{default}`."
    return line


def _spellings(opts: Iterable[str]) -> str:
    return ", ".join(f"`{o}`" for o in opts)


def _metavar(p: Any) -> str:
    return str(p.metavar) if p.metavar else str(p.name).upper()


def _type(p: Any) -> str:
    """The value's type in words: TEXT, INTEGER, FLOAT, PATH, choices as `a|b|c`, and a range where there is one."""
    choices, base = _choices_and_base(p)
    if choices is not None:
        return "`" + "|".join(choices) + "`"
    low, high = _range(p)
    if low is not None and high is not None:
        return f"{base} in [{low}, {high}]"
    if low is not None:
        return f"{base} >= {low}"
    if high is not None:
        return f"{base} <= {high}"
    return base


def _choices_and_base(p: Any) -> tuple[list[str] | None, str]:
    desc = getattr(p, "type_descriptor", None)
    if desc is not None:  # Typer >= 0.2x's own parameter types
        if desc.is_choice:
            return [_plain(c) for c in desc.choices or ()], "CHOICE"
        annotation = desc.annotation
        return None, _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())
    click_type = getattr(p, "type", None)  # plain Click
    choices = getattr(click_type, "choices", None)
    if choices is not None:
        return [_plain(c) for c in choices], "CHOICE"
    name = str(getattr(click_type, "name", "text"))
    return None, {"integer range": "INTEGER", "float range": "FLOAT"}.get(name, name.upper())


def _range(p: Any) -> tuple[Any, Any]:
    if hasattr(p, "type_descriptor"):
        return getattr(p, "min", None), getattr(p, "max", None)
    click_type = getattr(p, "type", None)
    return getattr(click_type, "min", None), getattr(click_type, "max", None)


def _default(p: Any) -> str | None:
    """The default as `--help` shows it, or None where it shows none (no default, or `show_default=False`)."""
    show = getattr(p, "show_default", True)
    if isinstance(show, str):
        return show
    if show is False or p.default is None or _unset(p.default) or callable(p.default):
        return None
    if getattr(p, "is_flag", False) and isinstance(p.default, bool):
        # A flag's default is the spelling that gives it; a lone flag that is off by default shows none.
        if not p.secondary_opts:
            return str(p.opts[0]) if p.default else None
        return str(p.opts[0] if p.default else p.secondary_opts[0])
    if isinstance(p.default, list | tuple):
        return ", ".join(_plain(d) for d in p.default) or None
    return _plain(p.default)


def _unset(value: Any) -> bool:
    """Click >= 8.2's "no default": an enum member (`Sentinel.UNSET`) whose value is a bare `object()`."""
    return type(value) is object or (isinstance(value, Enum) and type(value.value) is object)


def _plain(value: Any) -> str:
    return str(value.value) if isinstance(value, Enum) else str(value)


def _usage(prefix: str, params: Iterable[Any]) -> str:
    pieces = [prefix, "[OPTIONS]"]
    for p in params:
        if _is_option(p) or getattr(p, "hidden", False):
            continue
        name = _metavar(p) + ("..." if p.nargs != 1 else "")
        pieces.append(name if p.required else f"[{name}]")
    return " ".join(pieces)


class _Text:
    """Help text as a reader of `--help` sees it (Rich markup resolved where the app uses it), escaped for Markdown."""

    def __init__(self, rich: bool) -> None:
        self.rich = rich

    def paragraphs(self, help_text: str | None) -> list[str]:
        lines = [line for line in self._plain(help_text).splitlines() if line.strip() != "\b"]
        return [*(_markdown(line) for line in lines), ""] if lines else []

    def first_line(self, help_text: str | None) -> str:
        return _markdown(" ".join(self._plain(help_text).split("\n\n", 1)[0].split()))

    def inline(self, help_text: str | None) -> str:
        return _markdown(" ".join(self._plain(help_text).split()))

    def _plain(self, help_text: str | None) -> str:
        text = inspect.cleandoc(help_text or "")
        if self.rich and text:
            from rich.text import Text

            text = Text.from_markup(text).plain
        return text


def _markdown(text: str) -> str:
    """`text` with what Markdown would read as HTML or emphasis escaped, outside `code spans` (kept as code)."""
    pieces = text.split("`")
    if len(pieces) % 2 == 0:  # an unpaired backtick: no code spans
        pieces = [text]
    for i in range(0, len(pieces), 2):  # the even pieces are outside code spans
        piece = pieces[i].replace("\\", "\\\\").replace("<", "\\<").replace("*", "\\*")
        pieces[i] = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", piece)
    return "`".join(pieces)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


# --- the seeds' spellings -----------------------------------------------------------------------------------------


def _other_spellings() -> list[str]:
    from poolcli.commands import spellings

    aliases = "; ".join(f"`{old}` is `{new}`" for old, new in sorted(spellings.ALIASES.items()))
    out = [
        "## Other spellings",
        "",
        "vLLM's spellings of these options are accepted on every command, rewritten to the names above before the "
        "command line is parsed (`poolcli/commands/spellings.py`), so `--help` lists each option once:",
        "",
        "- Underscores for dashes in any multi-word long option the command has: `--hf_overrides` is "
        "`--hf-overrides`, `--pooler_config` is `--pooler-config`, `--max_model_len` is `--max-model-len`.",
        f"- Older names: {aliases}.",
        f"- `--runner {'|'.join(sorted(spellings.RUNNERS))}`: accepted and dropped; any other runner is a usage "
        "error (exit 64): poolcli runs pooling models only.",
        "- `--task TASK`: accepted and dropped where the subcommand serves `TASK` (or `TASK` is `auto`); any other "
        "task is a usage error (exit 64) that names the subcommand serving it.",
        "",
        "| subcommand | `--task` values it serves |",
        "|---|---|",
    ]
    out += [
        f"| `{command}` | {', '.join(f'`{t}`' for t in sorted(tasks))} |" for command, tasks in spellings.TASKS.items()
    ]
    return [*out, ""]


if __name__ == "__main__":
    sys.exit(main())
