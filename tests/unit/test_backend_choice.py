"""The backend decision down every branch (CPU flags injected), and the compiled-model cache's publication under
concurrency and damage, without a model."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from poolcli.errors import UsageError
from poolcli.model import cpu
from poolcli.model.backend import choose_backend
from poolcli.model.compiled import CacheEntry

AVX2 = frozenset({"avx", "avx2", "fma"})
BF16 = AVX2 | {"avx512f", "avx512_bf16", "avx512_vnni"}


def choose(requested: str = "auto", **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {"device_type": "cpu", "dtype": torch.float32, "model_type": "bert"}
    args.update(trust_remote_code=False, flags=AVX2, installed=True)
    args.update(kw)
    return choose_backend(requested, **args)  # type: ignore[arg-type]


def test_auto_on_cpu() -> None:
    assert choose()[:3] == ("openvino", "f32", True)
    assert choose(dtype=torch.bfloat16, flags=BF16)[:2] == ("openvino", "bf16")
    emulated = choose(dtype=torch.bfloat16, flags=AVX2)
    assert emulated[:2] == ("openvino", "f32") and "no native bf16" in emulated.notes[0][1]
    for kw, why in [
        ({"installed": False}, "not installed"),
        ({"model_type": "distilbert"}, "'distilbert' models is not checked"),
        ({"trust_remote_code": True}, "remote code"),
        ({"dtype": torch.float16}, "float16"),
    ]:
        choice = choose(**kw)
        assert choice.name == "torch" and why in choice.notes[0][1], kw
    slow = choose(installed=False, dtype=torch.bfloat16, flags=AVX2)
    assert slow.name == "torch" and any("emulated" in text for _, text in slow.notes)
    assert not any("emulated" in t for _, t in choose(installed=False, dtype=torch.bfloat16, flags=BF16).notes)


def test_gpu_and_explicit_choices() -> None:
    assert choose(device_type="cuda").name == "torch"
    assert choose("torch").name == "torch" and choose("torch").notes == ()
    assert "emulated" in choose("torch", dtype=torch.bfloat16).notes[0][1]
    assert choose("openvino", model_type="distilbert")[:3] == ("openvino", "f32", False)
    with pytest.raises(UsageError, match="--device cpu"):
        choose("openvino", device_type="cuda")
    with pytest.raises(UsageError, match=r"pip install 'poolcli\[openvino\]'"):
        choose("openvino", installed=False)
    with pytest.raises(UsageError, match="not float16"):
        choose("openvino", dtype=torch.float16)


def test_cpu_flags_can_be_injected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.FLAGS_ENV, "avx2 amx_bf16")
    assert cpu.native_bf16(cpu.cpu_flags())
    monkeypatch.setenv(cpu.FLAGS_ENV, "avx2")
    assert not cpu.native_bf16(cpu.cpu_flags())
    monkeypatch.delenv(cpu.FLAGS_ENV)
    assert cpu.cpu_flags() == cpu._proc_flags()


def _publish(root: str, payload: bytes, barrier: multiprocessing.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    os.environ["POOLCLI_CACHE_DIR"] = root
    entry = CacheEntry({"model": "same"})

    def save(folder: Path) -> None:
        barrier.wait()  # every process is inside its own private directory at once
        (folder / "model.bin").write_bytes(payload)
        (folder / "model.xml").write_text("<net/>")

    entry.publish(save)


def test_concurrent_builders_leave_one_valid_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLCLI_CACHE_DIR", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_publish, args=(str(tmp_path), bytes([i]) * 500_000, barrier)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    entry = CacheEntry({"model": "same"})
    assert entry.ready(lambda text: None)
    assert [p.name for p in (tmp_path / "openvino").iterdir()] == [entry.key]  # no private directories left
    assert len(set((entry.path / "model.bin").read_bytes())) == 1  # one builder's file, whole


def test_damaged_entries_are_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLCLI_CACHE_DIR", str(tmp_path))
    entry = CacheEntry({"model": "x"})
    entry.publish(lambda folder: (folder / "model.bin").write_bytes(b"weights" * 1000))
    notes: list[str] = []
    assert entry.ready(notes.append) and not notes
    (entry.path / "model.bin").write_bytes(b"weightz" * 1000)  # same size, other bytes
    assert not entry.ready(notes.append) and "damaged or incomplete" in notes[0]
    assert not entry.path.exists()
    entry.publish(lambda folder: (folder / "model.bin").write_bytes(b"weights" * 1000))
    (entry.path / "entry.json").write_text("{")  # a record cut short
    assert not entry.ready(notes.append)
    entry.publish(lambda folder: (folder / "model.bin").write_bytes(b"weights" * 1000))
    (entry.path / "model.bin").unlink()  # a partial copy
    assert not entry.ready(notes.append) and not entry.path.exists()
    other = CacheEntry({"model": "x", "quantize": "int8"})
    assert other.key != entry.key  # what decides the graph decides the key


def test_stale_private_directories_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a build killed half-way left behind goes once it is a day old; a live build's directory stays."""
    import time

    monkeypatch.setenv("POOLCLI_CACHE_DIR", str(tmp_path))
    stale, live = tmp_path / "openvino" / ".tmp-0123-99-dead", tmp_path / "openvino" / ".tmp-4567-98-live"
    stale.mkdir(parents=True)
    live.mkdir()
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    CacheEntry({"model": "y"}).publish(lambda folder: (folder / "model.bin").write_bytes(b"w"))
    assert not stale.exists() and live.exists()
