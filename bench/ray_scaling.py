"""`--engine ray` against the local driver on one machine: the same corpus, whole command lines timed end to end.

    python bench/ray_scaling.py --rows 6000            # the bundled all-MiniLM-L6-v2 on stdlib docstrings

Runs, each as its own process (as a user runs them), each into a fresh output:
  local                      poolcli embed (all cores, one model)
  ray 1 worker x N cpus      --engine ray --num-workers 1 --cpus-per-worker N
  ray N workers x 1 cpu      --engine ray --num-workers N --cpus-per-worker 1
  ray start-up               a 16-row job: Ray's cluster start, actor start and model load, almost no compute
and prints wall seconds, rows/s, and the largest difference of any vector from the local run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import write_corpus  # noqa: E402


def _run(args: list[str]) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "poolcli", *args, "--no-progress"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"poolcli {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    summary = next(
        json.loads(line) for line in reversed(proc.stderr.splitlines()) if line.startswith('{"poolcli": "summary"')
    )
    return wall, summary


def _vectors(path: Path) -> Any:
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(path).sort_by("id")
    column = table.column("embedding").combine_chunks()
    return np.asarray(column.values.to_numpy(zero_copy_only=False)).reshape(len(column), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--model", help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--batch-rows", type=int, default=1024, help="rows per Ray task (and part)")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    model = ["-m", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = write_corpus(root / "corpus.jsonl", args.rows)
        tiny = write_corpus(root / "tiny.jsonl", 16)
        common = ["--window-rows", str(min(args.batch_rows, 4096)), *model]
        ray = ["--engine", "ray", "--batch-rows", str(args.batch_rows)]
        runs = [
            ("local", ["embed", str(corpus), "-o", str(root / "local.parquet"), *common], args.rows),
            (
                f"ray 1 worker x {cpus} cpus",
                ["embed", str(corpus), "-o", str(root / "r1.parquet"), *common, *ray, "--num-workers", "1"]
                + ["--cpus-per-worker", str(cpus)],
                args.rows,
            ),
            (
                f"ray {cpus} workers x 1 cpu",
                ["embed", str(corpus), "-o", str(root / "rn.parquet"), *common, *ray, "--num-workers", str(cpus)]
                + ["--cpus-per-worker", "1"],
                args.rows,
            ),
            (
                "ray start-up (16 rows)",
                ["embed", str(tiny), "-o", str(root / "tiny.parquet"), *common, *ray, "--num-workers", "1"]
                + ["--cpus-per-worker", str(cpus)],
                16,
            ),
        ]
        reference = None
        print(f"{args.rows} rows, {cpus} cpus, batch-rows {args.batch_rows}")
        print(f"{'run':<28} {'wall s':>8} {'rows/s':>8} {'max |diff| vs local':>20}")
        for name, cmd, rows in runs:
            wall, _ = _run(cmd)
            out = Path(cmd[cmd.index("-o") + 1])
            vectors = _vectors(out)
            if reference is None:
                reference = vectors
            diff = float(abs(vectors - reference[: len(vectors)]).max()) if rows == args.rows else float("nan")
            print(f"{name:<28} {wall:>8.1f} {rows / wall:>8.1f} {diff:>20.2e}")


if __name__ == "__main__":
    main()
