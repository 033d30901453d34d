"""`poolcli --help` must not import the heavy stack: that is what keeps it instant."""

from __future__ import annotations

import subprocess
import sys

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
