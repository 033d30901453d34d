"""Self-calibrated int8: the compiled body quantized with rows of the job itself, and the run's own fidelity check.

The driver hands the engine a `Calibration` (texts it read: by default the input's first `CALIBRATION_ROWS` rows,
then the next `HOLDOUT_ROWS` held out). Once the float32 body is loaded, `quantize` computes the held-out rows'
outputs in float32, replaces the body by its int8 version (cached like any compiled body, keyed also by the
calibration texts), computes them again, and compares the task's own output vectors row by row. Below the gate
(`--min-cosine`) the run stops before anything is written; otherwise the numbers go into the output's metadata and
the summary.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import numpy as np

from poolcli.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from poolcli.engine.base import RowEngine
    from poolcli.model.load import Loader

CALIBRATION_ROWS = 300
"""Rows that calibrate the int8 ranges (NNCF's own default subset size)."""
HOLDOUT_ROWS = 100
"""Rows after them on which the run measures its fidelity against float32."""


class Calibration(NamedTuple):
    texts: list[str]
    """What calibrates the quantization ranges."""
    holdout: list[str]
    """What the fidelity is measured on (never calibrated on, unless the input has a single row)."""
    source: str
    """Where they came from: "input" or the --calibration file."""

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.texts, self.holdout]).encode()).hexdigest()


class Fidelity(msgspec.Struct, frozen=True, kw_only=True):
    """What the run measured of its int8 body, recorded in the output metadata and the summary."""

    method: str
    min_cosine: float
    mean_cosine: float
    holdout_rows: int
    calibration_rows: int
    calibration_source: str
    gate: float
    seconds: float


def split_sample(texts: list[str]) -> tuple[list[str], list[str]]:
    """The input's first rows -> (calibration, held out): 300 and the next 100; a shorter input keeps its last
    quarter (at least one row) apart; a single row serves as both."""
    if len(texts) >= CALIBRATION_ROWS + HOLDOUT_ROWS:
        return texts[:CALIBRATION_ROWS], texts[CALIBRATION_ROWS : CALIBRATION_ROWS + HOLDOUT_ROWS]
    if len(texts) <= 1:
        return texts, texts
    held = max(1, len(texts) // 4)
    return texts[:-held], texts[-held:]


def _outputs(engine: RowEngine, texts: list[str]) -> dict[int, np.ndarray]:
    """Row index -> the task's float32 output vector, for the rows that have one."""
    from poolcli.engine.ranges import float_values

    table = float_values(engine, texts)
    if table is None:
        return {}
    ids = table.column(engine.id_column).to_pylist()
    values = table.column(engine.value_column).to_pylist()
    return {int(i): np.asarray(v, dtype=np.float64) for i, v in zip(ids, values, strict=True) if v is not None}


def _samples(engine: RowEngine, texts: list[str]) -> list[list[np.ndarray]]:
    """One unpadded row per calibration sample, as the body's inputs: token ids and attention mask."""
    samples = []
    for enc in engine.prepare(texts):
        ids = np.asarray([enc.ids], dtype=np.int64)
        mask = np.asarray([enc.attention if enc.attention is not None else [1] * len(enc.ids)], dtype=np.int64)
        if ids.shape[1]:
            samples.append([ids, mask])
    return samples


def check_backend(loader: Loader) -> None:
    """--quantize int8 swaps a compiled body for its int8 version: refused before any weights are loaded when the
    loader decided for torch (`--backend auto` on a GPU, without OpenVINO, for an architecture whose conversion is
    not checked, ...), as `Loader.quantize` would refuse after loading them."""
    if loader.backend.name == "torch":
        raise UsageError("--quantize int8 needs the OpenVINO backend, and this model runs with torch")


def quantize(engine: RowEngine) -> Fidelity:
    """Quantize the engine's loaded body to int8 and check it against float32 (see the module docstring)."""
    calibration = engine.calibration
    if calibration is None:
        raise UsageError("--quantize int8 needs calibration rows")
    from poolcli.model.cpu import cpu_flags, fast_int8

    if not fast_int8(cpu_flags()):
        engine.warn("this CPU has no VNNI/AMX int8 instructions: --quantize int8 runs slower than float32 here")
    started = time.monotonic()
    reference = _outputs(engine, calibration.holdout)
    samples = _samples(engine, calibration.texts)
    if not samples or not reference:
        raise ConfigError("--quantize int8: no usable calibration rows (every one was empty or failed)")
    engine.loader.quantize(samples, calibration.digest())
    got = _outputs(engine, calibration.holdout)
    # A held-out row the int8 body cannot compute (non-finite) fails the gate instead of leaving the sample.
    cosines = [_cosine(reference[i], got[i]) if i in got else -1.0 for i in sorted(reference)]
    fidelity = Fidelity(
        method="int8",
        min_cosine=round(min(cosines), 6),
        mean_cosine=round(float(np.mean(cosines)), 6),
        holdout_rows=len(cosines),
        calibration_rows=len(samples),
        calibration_source=calibration.source,
        gate=engine.config.min_cosine,
        seconds=round(time.monotonic() - started, 3),
    )
    if fidelity.min_cosine < fidelity.gate:
        raise ConfigError(
            f"--quantize int8 is not faithful enough for this model and input: min cosine {fidelity.min_cosine:.4f} "
            f"(mean {fidelity.mean_cosine:.4f}) over {fidelity.holdout_rows} held-out rows is below --min-cosine "
            f"{fidelity.gate}; nothing was written",
            hint="run without --quantize, calibrate on more typical rows (--calibration), or lower --min-cosine",
        )
    return fidelity


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))


def describe(calibration: Calibration | None, config: Any) -> dict[str, Any]:
    """The identity of a quantized run: what decides its int8 body (a resumed run must calibrate the same; the
    gate decides no byte, so a resume may change it)."""
    from poolcli.model.compiled import nncf_version, openvino_version

    return {
        "method": config.quantize,
        "calibration_sha256": calibration.digest() if calibration is not None else None,
        "nncf": nncf_version(),
        "openvino": openvino_version(),
    }
