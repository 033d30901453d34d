"""The embed pipeline: read + tokenize (producer thread) -> schedule -> model -> pool -> write.

Reading and tokenizing run in a producer thread (the Rust tokenizer releases the GIL) while the model runs in the
caller's thread; a bounded queue keeps memory flat. Each window of input rows is sorted by length, cut into
batches under the padded-token budget, and written back in input order.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from poolcli import __version__
from poolcli.config import RunConfig
from poolcli.console import Progress
from poolcli.engine.identity import fingerprint, weights_digest
from poolcli.engine.plan import Plan
from poolcli.engine.scheduler import cut_batches
from poolcli.engine.tokenize import Encoded, TextEncoder
from poolcli.errors import InternalError, PoolcliError
from poolcli.io.arrow import EmbedTableBuilder
from poolcli.io.readers import Source
from poolcli.io.records import Block, ErrorRow
from poolcli.io.writers import DatasetDirSink, ErrorFileSink, JsonlStdoutSink, ParquetFileSink

DEFAULT_CPU_BATCH_TOKENS = 8192
DEFAULT_GPU_BATCH_TOKENS = 65536
_QUEUE_DEPTH = 2


class Summary(msgspec.Struct, kw_only=True):
    task: str
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    output: str = ""
    errors_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        d["rows_per_s"] = round(self.rows_out / self.seconds, 1) if self.seconds else None
        d["padding_ratio"] = round(1 - self.tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0
        d["seconds"] = round(self.seconds, 3)
        return d


def output_kind(output: str) -> str:
    if output == "-":
        return "stdout"
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        return "dir"
    return "file"


def default_errors_path(run: RunConfig) -> Path:
    if run.errors is not None:
        return Path(run.errors)
    kind = output_kind(run.output)
    if kind == "dir":
        return Path(run.output) / "_errors.jsonl"
    if kind == "stdout":
        stem = "stdin" if run.inputs[0] == "-" else Path(run.inputs[0]).name.split(".")[0]
        return Path(f"{stem}.{run.task}.errors.jsonl")
    out = Path(run.output)
    return out.with_name(out.name.removesuffix(".parquet") + ".errors.jsonl")


class _Producer(threading.Thread):
    """Reads blocks and tokenizes them ahead of the model; errors travel through the queue."""

    def __init__(self, source: Source, encoder: TextEncoder, window_rows: int) -> None:
        super().__init__(name="poolcli-reader", daemon=True)
        self.source = source
        self.encoder = encoder
        self.window_rows = window_rows
        self.out: queue.Queue[tuple[Block, list[Encoded]] | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for block in self.source.blocks(self.window_rows):
                encoded = self.encoder.encode(block.texts) if block.texts else []
                if not self._put((block, encoded)):
                    return
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: tuple[Block, list[Encoded]] | BaseException | None) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def items(self) -> Iterator[tuple[Block, list[Encoded]]]:
        while True:
            item = self.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def run_embed(run: RunConfig, plan: Plan, source: Source, progress: Progress) -> Summary:
    import torch

    from poolcli.engine.runner import ModelRunner, collate, load_projector
    from poolcli.pooler.dispatch import EmbedPooler

    started = time.monotonic()
    model = plan.model
    runner = ModelRunner(model, device=run.device, dtype=run.dtype, trust_remote_code=run.trust_remote_code)
    encoder = TextEncoder(plan)
    projector = load_projector(Path(model.root), model.dense)
    if projector is not None:
        projector = projector.to(runner.device)
    pooler = EmbedPooler(
        plan.pooling.modes,
        projector=projector,
        dimensions=plan.params.dimensions,
        normalize=plan.params.normalize,
        skip_prompt_tokens=encoder.prompt_tokens,
    )
    dim = plan.params.dimensions or model.embedding_size
    budget = run.max_batch_tokens or (
        DEFAULT_GPU_BATCH_TOKENS if runner.device.type == "cuda" else DEFAULT_CPU_BATCH_TOKENS
    )

    identity = {
        "poolcli_version": __version__,
        "task": plan.task,
        "model": model.name,
        "model_weights_sha256": weights_digest(Path(model.root)),
        "plan": plan.describe(),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "output_dtype": run.output_dtype,
        "input": source.listing(),
    }
    run_fingerprint = fingerprint(identity)
    metadata = {b"poolcli": msgspec.json.encode({**identity, "fingerprint": run_fingerprint})}
    builder = EmbedTableBuilder(dim, run.output_dtype, run.keep_columns, metadata)

    kind = output_kind(run.output)
    sink: ParquetFileSink | DatasetDirSink | JsonlStdoutSink
    if kind == "stdout":
        sink = JsonlStdoutSink()
    elif kind == "dir":
        sink = DatasetDirSink(Path(run.output), part_rows=max(run.window_rows, 65536))
    else:
        sink = ParquetFileSink(Path(run.output))
    errors = ErrorFileSink(default_errors_path(run), always=run.errors is not None)
    summary = Summary(task=run.task, output=run.output)

    producer = _Producer(source, encoder, run.window_rows)
    producer.start()
    try:
        for block, encoded in producer.items():
            summary.rows_in += block.n_rows
            bad = list(block.errors)
            keep_idx = list(range(len(block.texts)))
            if plan.on_too_long == "error":
                keep_idx = []
                for i, enc in enumerate(encoded):
                    if enc.truncated:
                        bad.append(
                            ErrorRow(
                                id=block.ids[i],
                                source=source.spec.path,
                                code="TOO_LONG",
                                row=block.rows[i],
                                message=f"text is longer than {plan.max_tokens} tokens (--on-too-long error)",
                            )
                        )
                    else:
                        keep_idx.append(i)
            vectors = np.empty((len(keep_idx), dim), dtype=np.float32)
            lengths = [len(encoded[i].ids) for i in keep_idx]
            for batch in cut_batches(lengths, max_tokens=budget, max_rows=run.max_batch_size):
                ids, mask = collate([encoded[keep_idx[j]].ids for j in batch], encoder.pad_id)
                with torch.inference_mode():
                    hidden = runner.hidden_states(ids, mask)
                    pooled = pooler(hidden, mask.to(runner.device))
                vectors[batch] = pooled.float().cpu().numpy()
                summary.batches += 1
                summary.padded_tokens += ids.numel()
            finite = np.asarray(np.isfinite(vectors).all(axis=1), dtype=bool)
            if not finite.all():
                for j in np.flatnonzero(~finite):
                    i = keep_idx[j]
                    bad.append(
                        ErrorRow(
                            id=block.ids[i],
                            source=source.spec.path,
                            code="NONFINITE_OUTPUT",
                            row=block.rows[i],
                            message="the model produced NaN or Inf for this row",
                        )
                    )
                vectors = vectors[finite]
                keep_idx = [i for i, ok in zip(keep_idx, list(finite), strict=True) if ok]
            bad.sort(key=lambda e: e.row if e.row is not None else -1)
            errors.write(bad)
            summary.errors += len(bad)
            if keep_idx:
                n_tokens = [len(encoded[i].ids) for i in keep_idx]
                truncated = [encoded[i].truncated for i in keep_idx]
                table = builder.table(
                    [block.ids[i] for i in keep_idx],
                    vectors,
                    n_tokens,
                    truncated,
                    {c: [block.keep[c][i] for i in keep_idx] for c in run.keep_columns},
                )
                sink.write(table)
                summary.rows_out += len(keep_idx)
                summary.tokens += sum(n_tokens)
                summary.truncated += sum(truncated)
            fraction = source.done / source.total if source.total else None
            progress.update(summary.rows_in, summary.tokens, fraction)
        schema = builder.schema or _empty_schema(builder)
        if isinstance(sink, DatasetDirSink):
            sink.commit(schema, {"fingerprint": run_fingerprint, "errors": summary.errors, "rows_in": summary.rows_in})
        else:
            sink.commit(schema)
        committed = errors.commit()
        summary.errors_file = str(committed) if committed else None
    except BaseException as exc:
        producer.stop.set()
        sink.abort()
        errors.abort()
        if isinstance(exc, PoolcliError | KeyboardInterrupt | SystemExit):
            raise
        if isinstance(exc, MemoryError):
            raise InternalError("out of memory; lower --max-batch-tokens or --window-rows") from exc
        raise
    finally:
        producer.stop.set()
        progress.close()
    summary.seconds = time.monotonic() - started
    return summary


def _empty_schema(builder: EmbedTableBuilder) -> Any:
    empty = builder.table(
        [], np.empty((0, builder.dim), dtype=np.float32), [], [], {c: [] for c in builder.keep_columns}
    )
    return empty.schema
