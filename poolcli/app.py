"""The root command: mounts one module per subcommand and maps typed errors to exit codes, in one place."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback

import typer

from poolcli.commands import spellings
from poolcli.commands.classify import classify
from poolcli.commands.embed import embed
from poolcli.commands.inspect import inspect
from poolcli.commands.rerank import rerank
from poolcli.commands.score import score
from poolcli.commands.token_classify import token_classify
from poolcli.commands.token_embed import token_embed
from poolcli.console import print_error
from poolcli.errors import PoolcliError
from poolcli.version import __version__

try:  # Typer >= 0.2x carries its own copy of Click; older ones use Click itself.
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as _click_exceptions  # type: ignore[no-redef]

EX_USAGE = 64
EX_SOFTWARE = 70

app = typer.Typer(
    name="poolcli",
    help="Offline batch work with transformer pooling models: embed, classify, score, rerank, token-embed and "
    "token-classify files of text into Parquet.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("embed")(embed)
app.command("classify")(classify)
app.command("score")(score)
app.command("rerank")(rerank)
app.command("token-embed")(token_embed)
app.command("token-classify")(token_classify)
app.command("inspect")(inspect)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"poolcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Offline batch work with transformer pooling models."""


def _long_options() -> dict[str, dict[str, bool]]:
    """Each subcommand's long option names and whether each takes a value, from the command tree Typer builds
    (options are told from arguments by having `is_flag`: Typer carries its own copy of Click's classes)."""
    group = typer.main.get_command(app)
    commands = getattr(group, "commands", {})
    return {
        name: {
            o: not (p.is_flag or getattr(p, "count", False))
            for p in cmd.params
            if hasattr(p, "is_flag")
            for o in (*p.opts, *p.secondary_opts)
            if o.startswith("--")
        }
        for name, cmd in commands.items()
    }


def run(argv: list[str] | None = None) -> int:
    """The command line in-process: runs one command and returns its exit code (what `main` exits with)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug may appear anywhere on the line; it only changes how failures are reported.
    debug = "--debug" in args or os.environ.get("POOLCLI_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    if threading.current_thread() is threading.main_thread():
        # A hang-up of the controlling terminal must not kill a cron or nohup'd batch job.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if spellings.applies(args):
            args = spellings.normalize(args, _long_options())
        # Not standalone: Click's usage errors come here, to be reported on one line like every other error.
        result = app(args=args, prog_name="poolcli", standalone_mode=False)
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 2:
            code = EX_USAGE
    except _click_exceptions.ClickException as exc:
        code = _click_error(exc)
    except typer.Abort:
        print_error("interrupted")
        code = 130
    except PoolcliError as exc:
        if debug:
            traceback.print_exc()
        print_error(exc.message, exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
        code = 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print_error(f"internal error: {type(exc).__name__}: {first}", hint="rerun with --debug for the traceback")
        code = EX_SOFTWARE
    return code


def _click_error(exc: _click_exceptions.ClickException) -> int:
    """A flag Click could not parse (unknown option, missing argument, value out of range): one line naming it and
    where the help is, exit 64. `poolcli` alone prints the help (it is not an error to report)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        # Typer has printed the help already when Rich is installed; plain Click keeps it in the message.
        if exc.format_message().strip():
            typer.echo(exc.format_message())
        return EX_USAGE
    ctx = getattr(exc, "ctx", None)
    hint = f"see {ctx.command_path} --help" if ctx is not None else "see poolcli --help"
    print_error(exc.format_message().strip(), hint=hint)
    return EX_USAGE


def main(argv: list[str] | None = None) -> None:
    code = run(argv)
    if any(t.name.startswith("poolcli-") and t.is_alive() for t in threading.enumerate()):
        # A reader still blocked in a read that will not return (an idle stdin): finalizing the interpreter under
        # it can abort the process (exit 134). Everything that matters is committed or cleaned up by now.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)
