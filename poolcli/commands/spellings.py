"""The seeds' spellings of poolcli's flags, rewritten to poolcli's own before the command line is parsed.

vLLM users type `--override-pooler-config`, underscore forms such as `--hf_overrides` or `--pooler_config`, and
`--task`/`--runner`. They are accepted here rather than declared on every command, so `--help` lists each option
once: an alias maps to its option, an underscore form to the dashed option the command has, and `--task`/`--runner`
are checked against the subcommand and dropped (a contradiction is a usage error).
"""

from __future__ import annotations

from collections.abc import Mapping

from poolcli.errors import UsageError

ALIASES = {"--override-pooler-config": "--pooler-config"}
"""vLLM's older names of options poolcli has under another name."""

TASKS: dict[str, frozenset[str]] = {
    "embed": frozenset({"embed", "embedding"}),
    "classify": frozenset({"classify", "classification"}),
    "score": frozenset({"score"}),
    "rerank": frozenset({"score", "rerank"}),
    "token-embed": frozenset({"token_embed", "token-embed"}),
    "token-classify": frozenset({"token_classify", "token-classify", "reward"}),
}
"""The --task values (vLLM's pooling tasks, and their older names) each subcommand serves."""

RUNNERS = frozenset({"pooling", "auto"})


def applies(args: list[str]) -> bool:
    """Whether `args` hold a spelling to rewrite (a cheap test, so a plain command line skips the rewrite)."""
    names = (a.split("=", 1)[0] for a in args if a.startswith("--"))
    return any("_" in n or n in ("--task", "--runner", *ALIASES) for n in names)


def _split(arg: str) -> tuple[str, str | None]:
    name, eq, value = arg.partition("=")
    return (name, value) if eq else (arg, None)


def normalize(args: list[str], options: Mapping[str, Mapping[str, bool]]) -> list[str]:
    """`args` with the seeds' spellings rewritten; `options` maps each subcommand to its long option names and
    whether each takes a value (whose next argument is then copied untouched, however it looks)."""
    command = next((a for a in args if not a.startswith("-")), "")
    if command not in options:
        return args
    known = options[command]
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":  # the rest are arguments, whatever they look like
            out.extend(args[i - 1 :])
            break
        if not arg.startswith("--"):
            out.append(arg)
            continue
        name, value = _split(arg)
        if name in ("--task", "--runner") and name not in known:
            if value is None:
                if i >= len(args):
                    raise UsageError(f"{name} needs a value")
                value, i = args[i], i + 1
            _check(command, name, value)
            continue
        if name not in known:
            dashed = "--" + name[2:].replace("_", "-")
            dashed = ALIASES.get(dashed, dashed)
            if dashed in known:
                name = dashed
        out.append(name if value is None else f"{name}={value}")
        if value is None and known.get(name, False) and i < len(args):
            out.append(args[i])  # the option's value: a query may well read like a flag
            i += 1
    return out


def _check(command: str, flag: str, value: str) -> None:
    if flag == "--runner":
        if value not in RUNNERS:
            raise UsageError(f"--runner {value}: poolcli runs pooling models only (--runner pooling)")
        return
    served = TASKS.get(command, frozenset())
    if value != "auto" and value not in served:
        fits = sorted(c for c, tasks in TASKS.items() if value in tasks)
        where = f"; that is `poolcli {fits[0]}`" if fits else ""
        raise UsageError(f"--task {value} contradicts the subcommand {command}{where}")
