"""What this machine's CPU can do, read once from its flags: decisions that depend on it (native bf16, the default
backend) are made at run time, never at install time, because machines of one kind differ (AVX2-only hosts beside
AVX-512 hosts with bf16 and VNNI)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

FLAGS_ENV = "POOLCLI_CPU_FLAGS"
"""Space-separated flags that replace /proc/cpuinfo's (tests take both branches of every decision with it)."""


@cache
def _proc_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, every decision takes its conservative branch
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_flags() -> frozenset[str]:
    override = os.environ.get(FLAGS_ENV)
    if override is not None:
        return frozenset(override.split())
    return _proc_flags()


def native_bf16(flags: frozenset[str]) -> bool:
    """bf16 arithmetic in hardware (AVX-512 BF16 or AMX); elsewhere torch emulates it, several times slower than
    float32."""
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def fast_int8(flags: frozenset[str]) -> bool:
    """int8 dot products in one instruction (VNNI or AMX); without them int8 kernels emulate them with several
    AVX2 instructions and lose to float32 (measured 0.75x on all-MiniLM-L6-v2, docs/performance.md)."""
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def describe(flags: frozenset[str]) -> str:
    """The flags that decide speed, for summaries and benchmark reports."""
    return " ".join(sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))) or "unknown"
