"""The exit codes: docs/exit-codes.md against the code's own mapping, the tests it names for each code, and each
code produced through the command line with a one-line message that names what to fix."""

from __future__ import annotations

import ast
import fcntl
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, write_jsonl

DOC = ROOT / "docs" / "exit-codes.md"


def _documented() -> dict[int, str]:
    """The table's codes and their names (`EX_USAGE`, or the signal for 130 / 143 and 137)."""
    rows: dict[int, str] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(\d+(?:\s*/\s*\d+)*)\s*\|([^|]*)\|", line)
        if m:
            codes = [int(c) for c in re.findall(r"\d+", m[1])]
            names = re.findall(r"`(\w+)`", m[2])
            assert len(codes) == len(names), line
            rows.update(zip(codes, names, strict=True))
    return rows


def _in_the_code() -> dict[int, str]:
    """Every code poolcli can end with, named as sysexits(3) names it, or by the signal that ended the run."""
    from poolcli import app, errors
    from poolcli.drivers.signals import STOP_SIGNALS

    sysexits = {getattr(os, n): n for n in dir(os) if n.startswith("EX_")}
    # Click's usage errors and any exception poolcli did not expect are mapped in the app.
    codes = {0: "EX_OK", app.EX_USAGE: sysexits[app.EX_USAGE], app.EX_SOFTWARE: sysexits[app.EX_SOFTWARE]}
    classes: list[type[errors.PoolcliError]] = [errors.PoolcliError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
        if cls is errors.Interrupted:
            continue  # its code is the signal's, set per instance
        named = re.search(r"\((EX_\w+)\)", cls.__doc__ or "")
        if named:  # the docstring's sysexits name is the code's
            assert getattr(os, named[1]) == cls.exit_code, cls
        codes[cls.exit_code] = sysexits[cls.exit_code]
    for sig in STOP_SIGNALS:
        codes[errors.Interrupted(sig).exit_code] = signal.Signals(sig).name
    # Not poolcli's own: what the shell reports for a process killed from outside (the crash points emulate it).
    codes[128 + signal.SIGKILL] = "SIGKILL"
    return codes


def test_the_table_is_the_codes_mapping() -> None:
    assert _documented() == _in_the_code()


def test_every_code_names_tests_that_exist() -> None:
    """Each code's section says which tests produce it; every test named exists."""
    sections = re.split(r"^### ", DOC.read_text(encoding="utf-8"), flags=re.M)[1:]
    covered: set[int] = set()
    for section in sections:
        head, _, body = section.partition("\n")
        codes = {int(c) for c in re.findall(r"\d+", head.split(":")[0])}
        tested = body.partition("Tested by:")[2]
        refs = re.findall(r"(tests/[\w/]+\.py)::(\w+)", tested)
        assert refs, f"no test named for {head}"
        for path, name in refs:
            tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in names, f"{path}::{name} (named for {head}) does not exist"
        covered |= codes
    assert covered == set(_documented())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    (d / "empty-model").mkdir()
    return {
        "good": write_jsonl(d / "good.jsonl", [{"text": "hello world"}, {"text": "the quick brown fox"}]),
        "bad": write_jsonl(d / "bad.jsonl", [{"text": "hello world"}, {"text": ""}]),
        "empty-model": d / "empty-model",
    }


def _hold_lock(out: Path) -> Callable[[], None]:
    """Take the output's lock as another run would (flock locks of two opens conflict within one process too)."""
    from poolcli.io.parts import Layout

    lock = Layout.for_output(str(out), "file").lock
    fh = open(lock, "wb")  # noqa: SIM115 (held until the release it returns)
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release() -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()

    return release


# id: (exit code, input, extra arguments, environment, what the one line must name; OUT, ERRORS and DIR stand for
# the output, its default error file and their directory, MODEL for a directory without config.json)
CASES: dict[str, tuple[int, str, list[str], dict[str, str], list[str]]] = {
    "click-usage": (64, "good", ["--window-rows", "0"], {}, ["'--window-rows'", "see poolcli embed --help"]),
    "pooler-flag": (64, "good", ["--dimensions", "0"], {}, ["--dimensions: ", "greater than 0"]),
    "device": (64, "good", ["--device", "tpu"], {}, ["--device tpu", "cpu, cuda"]),
    "prompt-name": (64, "good", ["--prompt-name", "query"], {}, ["--prompt-name query", "(none)"]),
    "strict": (65, "bad", ["--strict"], {}, ["--strict", "ERRORS", "rerun resumes"]),
    "model-without-config": (66, "good", ["-m", "MODEL"], {}, ["MODEL", "config.json"]),
    "model-exception": (70, "good", [], {"POOLCLI_FAIL_AT_ROW": "0"}, ["internal error: RuntimeError", "--debug"]),
    "disk-full": (74, "good", [], {"POOLCLI_IO_FAULT": "write:1:ENOSPC"}, ["DIR", "No space left on device"]),
    "busy": (75, "good", [], {}, ["another poolcli run is writing OUT", "retry"]),
    "missing-preset-file": (78, "good", ["--config", "nope.toml"], {}, ["--config nope.toml: no such file", "e5"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exit_code_and_message(case: str, files: dict[str, Path], tiny_bert: Path, tmp_path: Path) -> None:
    """Each code through the real command line on real files: one error line (after the summary, for a run that
    had started), no traceback, naming the flag or file to fix."""
    code, src, extra, env, wanted = CASES[case]
    out = tmp_path / "out.parquet"
    names = {
        "OUT": str(out),
        "ERRORS": str(tmp_path / "out.errors.jsonl"),
        "MODEL": str(files["empty-model"]),
        "DIR": str(tmp_path),
    }
    args = [names.get(a, a) for a in extra]
    # torch: no OpenVINO conversion to wait for (the codes and messages do not depend on the backend).
    model = ["--backend", "torch"] + ([] if "-m" in args else ["-m", str(tiny_bert)])
    release = _hold_lock(out) if case == "busy" else None
    try:
        proc = run_cli("embed", files[src], *model, "-o", out, *args, cwd=tmp_path, env=env)
    finally:
        if release is not None:
            release()
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("poolcli: error: "), proc.stderr
    for want in wanted:
        for placeholder, value in names.items():
            want = want.replace(placeholder, value)
        assert want in lines[0], (want, lines[0])
    assert not out.exists()
