"""--quantize int8: calibrated on the job's own rows, its fidelity measured on held-out rows and recorded, refused
below the gate before anything is written, cached and reused."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import cosine_rows, run_cli, summary_of, write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from corpus import paragraphs  # noqa: E402


def _vectors(path: Path) -> np.ndarray:
    return np.asarray(pq.read_table(path).column("embedding").to_pylist(), dtype=np.float64)


def _quantization(path: Path) -> dict[str, Any]:
    return dict(json.loads(pq.read_metadata(path).metadata[b"poolcli_quantization"]))


def test_minilm_int8_is_calibrated_checked_and_recorded(minilm_path: Path, tmp_path: Path) -> None:
    texts = paragraphs()[:120]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "int8.parquet"
    proc = run_cli("embed", src, "-m", minilm_path, "-o", out, "--quantize", "int8")
    assert proc.returncode == 0, proc.stderr
    summary = summary_of(proc)
    recorded = _quantization(out)
    assert {k: v for k, v in summary["quantization"].items() if k != "seconds"} == recorded  # timing: summary only
    # 120 rows: the first 90 calibrate, the last 30 are held out (split_sample).
    assert (recorded["calibration_rows"], recorded["holdout_rows"], recorded["calibration_source"]) == (90, 30, "input")
    # The gate, and a mean near the 0.995 the benchmark measures with the full 300 calibration rows.
    assert recorded["min_cosine"] >= 0.98 and recorded["mean_cosine"] >= 0.99
    reference = tmp_path / "fp32.parquet"
    assert run_cli("embed", src, "-m", minilm_path, "-o", reference, "--backend", "torch").returncode == 0
    cosines = cosine_rows(_vectors(out), _vectors(reference))
    # What the run recorded is what a user measures on the held-out rows of its output.
    assert abs(cosines[90:].min() - recorded["min_cosine"]) < 1e-5
    assert abs(cosines[90:].mean() - recorded["mean_cosine"]) < 1e-5
    assert not np.allclose(cosines, 1.0, atol=1e-6)  # it really is another (quantized) model
    meta = json.loads(pq.read_metadata(out).metadata[b"poolcli"])
    assert meta["quantize"]["method"] == "int8" and meta["quantize"]["nncf"] and meta["quantize"]["openvino"]


def test_gate_refuses_before_writing_and_cache_is_reused(tiny_bert: Path, tmp_path: Path) -> None:
    texts = [f"row {i} " + " ".join(paragraphs()[i].split()[:12]) for i in range(40)]
    # String ids: the calibration rows (numbered internally) must not fix the output's id type.
    rows = [{"id": f"r{i:03d}", "text": t, "lang": "en"} for i, t in enumerate(texts)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    proc = run_cli(
        "embed", src, "-m", tiny_bert, "-o", out, "--quantize", "int8", "--min-cosine", "0.5", "-v",
        "--keep-columns", "lang", env={"POOLCLI_CPU_FLAGS": "avx avx2 fma"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no VNNI/AMX int8 instructions" in proc.stderr  # the flags decide whether int8 can pay off
    first = summary_of(proc)
    assert first["convert_seconds"] > 0 and "quantized the model body to int8" in proc.stderr
    measured = first["quantization"]["min_cosine"]
    assert 0.5 <= measured < 1.0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"r{i:03d}" for i in range(40)]
    assert table.column("lang").to_pylist() == ["en"] * 40 and table.schema.field("lang").type == "string"

    again = tmp_path / "again.parquet"
    proc = run_cli(
        "embed", src, "-m", tiny_bert, "-o", again, "--quantize", "int8", "--min-cosine", "0.5",
        env={"POOLCLI_CPU_FLAGS": "avx2 avx512f avx512_vnni"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "VNNI" not in proc.stderr
    assert "convert_seconds" not in summary_of(proc)  # the int8 body came from the cache
    np.testing.assert_array_equal(_vectors(again), _vectors(out))

    refused = tmp_path / "refused.parquet"
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", refused, "--quantize", "int8", "--min-cosine", "1.0")
    assert proc.returncode == 78
    assert f"min cosine {measured:.4f}" in proc.stderr and "below --min-cosine 1.0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not refused.exists() and not list(tmp_path.glob("refused*"))


def test_a_calibration_file(tiny_bert: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": f"query {i}: " + paragraphs()[i][:80]} for i in range(12)])
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(p[:100] for p in paragraphs()[100:130]) + "\n")
    out = tmp_path / "out.parquet"
    proc = run_cli(
        "embed", src, "-m", tiny_bert, "-o", out, "--quantize", "int8", "--calibration", calib, "--min-cosine", "0.5"
    )
    assert proc.returncode == 0, proc.stderr
    recorded = _quantization(out)
    assert recorded["calibration_source"] == str(calib)
    assert (recorded["calibration_rows"], recorded["holdout_rows"]) == (30, 12)  # every input row held out
    default = tmp_path / "default.parquet"
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", default, "--quantize", "int8", "--min-cosine", "0.5")
    assert proc.returncode == 0, proc.stderr
    ours, theirs = (json.loads(pq.read_metadata(p).metadata[b"poolcli"])["quantize"] for p in (out, default))
    assert ours["calibration_sha256"] != theirs["calibration_sha256"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-cosine", "0.9"], "applies to --quantize int8"),
        (["--calibration", "x.txt"], "applies to --quantize int8 and --output-dtype int8/uint8"),
        (["--quantize", "int8", "--backend", "torch"], "use --backend openvino"),
        (["--quantize", "int8", "--min-cosine", "1.5"], "--min-cosine must be in (0, 1]"),
        (["--quantize", "int8", "--engine", "ray"], "local engine only"),
        (["--quantize", "int8", "--dtype", "bfloat16"], "starts from the float32 body"),
    ],
)
def test_usage_errors(args: list[str], message: str, tiny_bert: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "o.parquet", *args)
    assert proc.returncode == 64 and message in proc.stderr, proc.stderr


def test_stdin_needs_a_calibration_file(tiny_bert: Path) -> None:
    proc = run_cli("embed", "-", "-m", tiny_bert, "-o", "-", "--quantize", "int8", stdin=b'{"text": "x"}\n')
    assert proc.returncode == 64 and "needs --calibration FILE" in proc.stderr


def test_stdin_with_a_calibration_file_keeps_every_row(tiny_bert: Path, tmp_path: Path) -> None:
    """Standard input is read once, by the run: calibration and held-out rows both come from the file."""
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(p[:100] for p in paragraphs()[200:240]) + "\n")
    rows = "".join(json.dumps({"id": i, "text": paragraphs()[i][:60]}) + "\n" for i in range(110))
    out = tmp_path / "out.parquet"
    proc = run_cli(
        "embed", "-", "-m", tiny_bert, "-o", out, "--quantize", "int8", "--calibration", calib, "--min-cosine", "0.5",
        stdin=rows.encode(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).column("id").to_pylist() == list(range(110))
    recorded = _quantization(out)
    assert (recorded["calibration_rows"], recorded["holdout_rows"]) == (30, 10)
