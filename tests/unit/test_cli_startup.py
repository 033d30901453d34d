"""`poolcli --help` must not import the heavy stack: that is what keeps it instant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "pyarrow", "numpy", "tokenizers", "sentence_transformers")

PROBE = """
import sys
from poolcli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True)


def test_help_imports_no_heavy_module() -> None:
    for args in (["--help"], ["embed", "--help"], ["inspect", "--help"], ["--version"]):
        proc = _probe(*args)
        assert proc.returncode == 0, proc.stderr
        assert "HEAVY=\n" in proc.stderr, (args, proc.stderr)


def test_inspect_needs_no_torch() -> None:
    proc = _probe("inspect", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stderr, proc.stderr
    assert '"architecture": "BertModel"' in proc.stdout


def test_no_arguments_shows_help_with_usage_code() -> None:
    proc = subprocess.run([sys.executable, "-m", "poolcli"], capture_output=True, text=True)
    assert proc.returncode == 64
    assert "embed" in proc.stdout + proc.stderr


REFUSAL_PROBE = """
import json, sys
from poolcli.app import run
seen = []
for argv in json.loads(sys.argv[1]):
    code = run(argv)
    seen.append([code, [m for m in {heavy!r} if m in sys.modules]])
print(json.dumps(seen))
"""


def test_cheap_refusals_import_no_torch(tmp_path: Path) -> None:
    """What needs no model is refused before torch and transformers are imported (cron and Makefiles rerun
    poolcli often): a missing input or calibration file, options that contradict each other, an output that is
    an input. One fresh process (this one has torch loaded already) runs each refused command in turn."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n')
    out = str(tmp_path / "o.parquet")
    cases = [
        (["embed", str(tmp_path / "missing.jsonl"), "-o", out], 66),
        (["score", str(tmp_path / "missing.jsonl"), "-o", out], 66),
        (["embed", str(src), "-o", out, "--part-rows", "7", "--window-rows", "5"], 64),
        (["embed", str(src), "-o", out, "--quantize", "int8", "--calibration", str(tmp_path / "none.jsonl")], 66),
        (["embed", str(src), "-o", str(src)], 64),
    ]
    heavy = ("torch", "transformers", "tokenizers", "openvino")
    proc = subprocess.run(
        [sys.executable, "-c", REFUSAL_PROBE.format(heavy=heavy), json.dumps([argv for argv, _ in cases])],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [code for code, _ in seen] == [code for _, code in cases], proc.stderr
    assert all(modules == [] for _, modules in seen), (seen, proc.stderr)
