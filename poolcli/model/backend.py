"""Which backend runs the model body, decided once per run from the request, the device, the dtype, the
architecture and this CPU's flags (`poolcli.model.cpu`).

`auto` picks OpenVINO on CPU when it is installed, the architecture is one whose conversion the test-suite checks
against torch, the dtype is one OpenVINO computes here and its cache is writable; otherwise torch, with the reason
as a note (shown under --verbose). Everything `auto` decides is decided here, before the run's identity is fixed:
a conversion that fails later stops the run (78) rather than quietly switching backends inside one output. An
explicit `--backend openvino` tries any architecture.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Literal, NamedTuple

from poolcli.errors import UsageError
from poolcli.model.cpu import native_bf16

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from poolcli.model.compiled import Precision
    from poolcli.vocab import Backend, ResolvedBackend

CONVERTIBLE = frozenset({"bert", "roberta", "xlm-roberta", "qwen2", "qwen3"})
"""model_type values whose OpenVINO conversion is checked against torch in tests/cli/test_backends.py."""

INSTALL_HINT = "pip install 'poolcli[openvino]'"

NoteLevel = Literal["info", "warn"]


class BackendChoice(NamedTuple):
    name: ResolvedBackend
    precision: Precision
    """What OpenVINO computes in (f32 for torch runs too: unused there)."""
    auto: bool
    """Chosen by `auto` (a failed conversion then suggests `--backend torch` in its error)."""
    notes: tuple[tuple[NoteLevel, str], ...] = ()


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_backend(
    requested: Backend,
    *,
    device_type: str,
    dtype: torch.dtype,
    model_type: str,
    trust_remote_code: bool,
    flags: frozenset[str],
    installed: bool,
    cache_writable: Callable[[], bool] = lambda: True,
) -> BackendChoice:
    import torch

    bf16 = dtype == torch.bfloat16
    emulated = bf16 and device_type == "cpu" and not native_bf16(flags)
    slow: tuple[NoteLevel, str] = (
        "warn",
        "--dtype bfloat16 on a CPU without native bf16 (no avx512_bf16/amx_bf16) is emulated by torch and several "
        "times slower than float32",
    )
    if requested == "torch" or (requested == "auto" and device_type != "cpu"):
        return BackendChoice("torch", "f32", requested == "auto", (slow,) if emulated else ())
    if device_type != "cpu":
        raise UsageError(f"--backend openvino computes on the CPU, not on {device_type}; use --device cpu")
    fallback: tuple[NoteLevel, str] = (
        "warn",
        "--dtype bfloat16: this CPU has no native bf16 (avx512_bf16/amx_bf16), so OpenVINO computes in float32",
    )
    if requested == "openvino":
        if not installed:
            raise UsageError(f"--backend openvino needs OpenVINO: {INSTALL_HINT}")
        if dtype == torch.float16:
            raise UsageError("--backend openvino computes in float32 or bfloat16, not float16")
        return BackendChoice("openvino", "bf16" if bf16 and not emulated else "f32", False, (fallback,) * emulated)
    why = None
    if not installed:
        why = f"OpenVINO is not installed ({INSTALL_HINT})"
    elif model_type not in CONVERTIBLE:
        why = f"its conversion of {model_type!r} models is not checked"
    elif trust_remote_code:
        why = "the model runs remote code"
    elif dtype == torch.float16:
        why = "OpenVINO does not compute float16 on CPUs"
    elif not cache_writable():
        why = "its cache directory is not writable (set POOLCLI_CACHE_DIR)"
    if why is not None:
        notes: list[tuple[NoteLevel, str]] = [("info", f"backend torch: OpenVINO not used because {why}")]
        if emulated:
            notes.append(slow)
        return BackendChoice("torch", "f32", True, tuple(notes))
    return BackendChoice("openvino", "bf16" if bf16 and not emulated else "f32", True, (fallback,) * emulated)
