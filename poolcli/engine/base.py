"""The engine seam: one object per task that turns a block of input rows (or pairs) into that task's Arrow table
plus error rows and batch statistics.

An engine knows the model, the plan and the batch template; it knows nothing about files, parts, progress or exit
codes. Drivers (`poolcli.drivers`) feed it blocks and decide what happens to the results. An engine is cheap to
build (it reads the plan and the tokenizer lazily) and loads the weights only on `load()`, so a driver can find
out that an output is already complete without touching the model.

Row tasks (embed, classify, token-classify) share `RowEngine`: tokenize (`prepare`, safe to run in a reader
thread), apply `--on-too-long error`, run the task's forward through the batch template, and build the table of
the good rows. A row task supplies `_load_model`, `_forward`, its table builder and, if it needs one, `_finish`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from poolcli.config import EngineConfig
from poolcli.engine.batch import BatchStats, BatchTemplate, Collated, OnBatch, StopCheck, default_budget
from poolcli.errors import ConfigError, InternalError, UsageError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.records import Block, Encoded, ErrorRow
from poolcli.model.identity import weights_digest
from poolcli.vocab import ErrorCode, ScalarDType

if TYPE_CHECKING:
    import pyarrow as pa
    from torch import Tensor

    from poolcli.engine.plan import Plan
    from poolcli.engine.quantize import Calibration, Fidelity
    from poolcli.engine.ranges import RangeSample
    from poolcli.io.tables import EmbedTableBuilder, OutputRanges
    from poolcli.model.load import Loader
    from poolcli.model.resolve import ResolvedModel


class RowEncoder(Protocol):
    """Texts -> token ids (`poolcli.engine.tokenize`): the plan's tokenization, or a ColBERT role's."""

    pad_id: int
    prompt_tokens: int
    max_tokens: int
    """The length an input is cut to (the model's limit, or a ColBERT role's length)."""

    def encode(self, texts: Sequence[str]) -> list[Encoded]: ...


class BlockResult(NamedTuple):
    """What an engine made of one block: the good rows' table (None when there are none), the error rows, and the
    tokens, truncated rows, chunked rows and their chunks it counted."""

    table: pa.Table | None
    errors: list[ErrorRow]
    tokens: int
    truncated: int
    chunked_rows: int = 0
    chunks: int = 0


class TaskEngine(ABC):
    """What every task engine offers its drivers."""

    task: str
    """The task as recorded in the output's identity."""
    id_column = "id"
    value_column = "embedding"
    """The column whose values must be finite (the part validation reads it)."""

    def __init__(
        self,
        model: ResolvedModel,
        loader: Loader,
        config: EngineConfig,
        *,
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
        info: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.model = model
        self.loader = loader
        self.config = config
        self.faults = faults
        self.warn = warn
        self.info = info
        """Detail for --verbose (chunked rows)."""
        self.threads = 0
        self.load_seconds = 0.0
        self.calibration: Calibration | None = None
        """--quantize int8: the rows the driver read to calibrate and check the int8 body."""
        self.fidelity: Fidelity | None = None
        """--quantize int8: what the run measured of its int8 body (set by `load`)."""
        self._template: BatchTemplate | None = None
        self._stats = BatchStats()

    def identity(self) -> dict[str, Any]:
        """Everything of this engine that decides the output bytes (a resumed run must match it exactly)."""
        identity = {
            "task": self.task,
            "model": self.model.name,
            "model_weights_sha256": weights_digest(Path(self.model.root)),
            "plan": self.describe(),
            "dtype": str(self.loader.dtype).removeprefix("torch."),
        }
        if self.loader.backend.name != "torch":  # torch runs keep the identity they had before backends existed
            identity["backend"] = self.loader.backend.name
        if self.config.quantize != "none":
            from poolcli.engine.quantize import describe

            identity["quantize"] = describe(self.calibration, self.config)
        return identity

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The resolved plan and output options, as recorded in the output metadata."""

    @abstractmethod
    def empty_schema(self) -> pa.Schema:
        """The output schema when no row was written."""

    @abstractmethod
    def tokenizer_limit(self) -> int:
        """Build the tokenizers the run uses, with their refusals (a limit that leaves no room for text, a prompt
        that fills it); returns the token limit inputs are cut to. Needs no weights: `load` calls it before loading
        any, and a dry run, which loads none, calls it too."""

    def load(self) -> None:
        """Load the weights and set the threads (once); the tokenizers first, so that what they refuse is refused
        before any weights are loaded or converted."""
        if self._template is not None:
            return
        from poolcli.model.load import configure_threads

        started = time.monotonic()
        self.tokenizer_limit()
        pad_id = self._load_model()
        self.threads = configure_threads(self.config.threads, self.loader.device)
        budget = self.config.max_batch_tokens or default_budget(self.loader.device)
        self._template = BatchTemplate(
            budget=budget,
            max_rows=self.config.max_batch_size,
            device=self.loader.device.type,
            pad_id=pad_id,
            faults=self.faults,
            warn=self.warn,
        )
        self._template.stats = self._stats
        for level, text in self.loader.take_notes():
            (self.warn if level == "warn" else self.info)(text)
        if self.config.quantize != "none":
            from poolcli.engine.quantize import quantize

            assert isinstance(self, RowEngine)
            self.fidelity = quantize(self)
        if isinstance(self, RowEngine) and self.scalar_output is not None and self.output_ranges is None:
            from poolcli.engine.ranges import calibrate

            if self.range_sample is None:
                raise UsageError(f"--output-dtype {self.scalar_output} needs calibration rows")
            if self.range_sample.rows:  # none: the input has no good row, its output is empty
                self.use_ranges(calibrate(self, self.range_sample, self.scalar_output))
        for level, text in self.loader.take_notes():
            (self.warn if level == "warn" else self.info)(text)
        self.load_seconds = round(time.monotonic() - started, 3)

    @abstractmethod
    def _load_model(self) -> int:
        """Load what the forward needs; returns the pad id batches are padded with."""

    @property
    def template(self) -> BatchTemplate:
        if self._template is None:
            self.load()
        assert self._template is not None
        return self._template

    @property
    def stats(self) -> BatchStats:
        return self._stats

    @property
    def budget(self) -> int | None:
        """The padded-token budget in force (lowered after an out-of-memory error); None before loading."""
        return self._template.budget if self._template is not None else None

    def restore_budget(self, budget: int) -> None:
        """A resumed run continues with the budget an earlier run lowered to, so its batches stay the same."""
        self.template.budget = min(self.template.budget, budget)


class RowEngine(TaskEngine):
    """One text per input row -> one output row (embed, classify, token-classify)."""

    per_token: bool | tuple[bool, ...] = False
    """The forward's output is per position ([B, L, ...]); each row keeps its own positions (one flag per head
    when the forward returns several)."""
    out_dtype: type[np.floating] = np.float32
    """The precision outputs are held in between the model and the table."""

    def __init__(
        self,
        plan: Plan,
        loader: Loader,
        config: EngineConfig,
        *,
        keep_columns: tuple[str, ...] = (),
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        super().__init__(plan.model, loader, config, faults=faults, warn=warn)
        self.plan = plan
        self.keep_columns = keep_columns
        self._encoder: RowEncoder | None = None
        self.range_sample: RangeSample | None = None
        """--output-dtype int8/uint8: what the driver read to calibrate the output ranges."""
        self.output_ranges: OutputRanges | None = None
        """--output-dtype int8/uint8: the ranges in force (calibrated by `load`, or an earlier run's on resume)."""
        self.builder = self._builder()
        self.builder.chunks = plan.chunk
        from poolcli.io.tables import check_keep_columns

        check_keep_columns(keep_columns, self.builder.output_fields())

    @abstractmethod
    def _builder(self) -> EmbedTableBuilder:
        """The task's table builder."""

    @property
    def scalar_output(self) -> ScalarDType | None:
        """int8/uint8 when the output's vectors are bucketed in calibrated ranges."""
        dtype = self.builder.dtype
        return dtype if dtype in ("int8", "uint8") else None

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        if self.scalar_output is not None:
            # The sample decides the ranges; the ranges themselves are measured after the identity is fixed.
            identity["output_ranges"] = self.range_sample.describe() if self.range_sample is not None else None
        return identity

    def use_ranges(self, ranges: OutputRanges) -> None:
        """Bucket the output's vectors in `ranges` (calibrated now, or recorded by an earlier run of the output)."""
        if ranges.precision != self.scalar_output or len(ranges.min) != self.builder.dim:
            raise ConfigError(
                f"the recorded output ranges ({ranges.precision}, {len(ranges.min)} dimensions) do not fit this run "
                f"({self.scalar_output}, {self.builder.dim} dimensions)",
                hint="rerun with --overwrite",
            )
        self.output_ranges = ranges
        self.builder.ranges = ranges.array()

    @abstractmethod
    def _forward(self, batch: Collated, float32: bool) -> Tensor | tuple[Tensor, ...]:
        """Padded token ids -> the task's float32 outputs, one per row (or per position with `per_token`); a
        tuple for several heads on one forward pass."""

    def _finish(
        self, values: list[np.ndarray], encoded: Sequence[Encoded]
    ) -> tuple[list[np.ndarray], Sequence[Encoded]]:
        """Per-row post-processing of the outputs and of the tokens the table lists (e.g. STEP's tag positions,
        special tokens left out); none by default."""
        return values, encoded

    def _encoder_options(self) -> dict[str, Any]:
        return {}

    def _make_encoder(self) -> RowEncoder:
        from poolcli.engine.tokenize import TextEncoder

        return TextEncoder(self.plan, **self._encoder_options())

    @property
    def encoder(self) -> RowEncoder:
        if self._encoder is None:
            self._encoder = self._make_encoder()
        return self._encoder

    def tokenizer_limit(self) -> int:
        return self.encoder.max_tokens

    def prepare(self, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize (the Rust tokenizer releases the GIL: a reader thread runs this ahead of the model)."""
        return self.encoder.encode(texts) if texts else []

    def observe(self, block: Block) -> None:
        """A block that is not computed (a resumed run skipping committed parts) still fixes the schema of kept
        columns, so every run of the same command derives the same column types from the same first rows."""
        self.builder.observe(block)

    def empty_schema(self) -> pa.Schema:
        return self.builder.schema or self.builder.empty_schema()

    def run(
        self,
        block: Block,
        encoded: Sequence[Encoded],
        *,
        stop: StopCheck = lambda: None,
        on_batch: OnBatch = lambda rows, tokens: None,
    ) -> BlockResult:
        """The block's good rows through the model; every row ends in the table or in the error rows.

        A chunked row's chunks join the other rows' inputs in the same length-bucketed batches; its chunk outputs
        are combined afterwards (`_combine`), and a chunk that fails fails its row."""
        plan = self.plan
        bad = list(block.errors)

        def error(i: int, code: ErrorCode, message: str) -> None:
            bad.append(
                ErrorRow(
                    id=block.ids[i],
                    source=block.sources[i],
                    line=block.lines[i],
                    code=code,
                    row=block.rows[i],
                    message=message,
                )
            )

        limit = self.encoder.max_tokens
        keep: list[int] = []
        for i, enc in enumerate(encoded):
            if plan.max_embed_len is not None and enc.n_full is not None and enc.n_full > plan.max_embed_len:
                counted = "at least " if len(block.texts[i]) > (1 << 20) else ""
                message = f"text has {counted}{enc.n_full} tokens, more than max_embed_len {plan.max_embed_len}"
                error(i, "TOO_LONG", message)
            elif plan.on_too_long == "error" and enc.truncated:
                error(i, "TOO_LONG", f"text is longer than {limit} tokens (--on-too-long error)")
            else:
                keep.append(i)
        items: list[Encoded] = []
        owner: list[int] = []
        for j, i in enumerate(keep):
            enc = encoded[i]
            if enc.chunks:
                self.info(
                    f"row {block.rows[i]}: Input length {len(enc.ids)} exceeds the model maximum {plan.max_tokens}, "
                    "will use chunked processing"
                )
                self.info(
                    f"row {block.rows[i]}: Split input of {len(enc.ids)} tokens into {len(enc.chunks)} chunks "
                    f"(max_chunk_size: {plan.max_tokens})"
                )
                items += [Encoded(c, False) for c in enc.chunks]
                owner += [j] * len(enc.chunks)
            else:
                items.append(enc)
                owner.append(j)
        values, failed = self.template.run(
            items,
            [block.rows[keep[j]] for j in owner],
            self._forward,
            per_token=self.per_token,
            out_dtype=self.out_dtype,
            stop=stop,
            on_batch=on_batch,
        )
        per_row: list[list[Any]] = [[] for _ in keep]
        row_failed: dict[int, tuple[ErrorCode, str]] = {}
        for x, j in enumerate(owner):
            if x in failed:
                row_failed.setdefault(j, failed[x])
            else:
                per_row[j].append(values[x])
        for j, (code, message) in row_failed.items():
            error(keep[j], code, message)
        rows = [i for j, i in enumerate(keep) if j not in row_failed]
        outputs = [
            self._combine(per_row[j], encoded[i]) if encoded[i].chunks else per_row[j][0]
            for j, i in enumerate(keep)
            if j not in row_failed
        ]
        good, good_encoded = self._finish(outputs, [encoded[i] for i in rows])
        bad.sort(key=lambda e: e.row if e.row is not None else -1)
        n_tokens = [self._seen(encoded[i]) for i in rows]
        truncated = [encoded[i].truncated for i in rows]
        n_chunks = [len(encoded[i].chunks or ()) or 1 for i in rows]
        table = (
            self.builder.table(
                [block.ids[i] for i in rows],
                self._stack(good),
                n_tokens,
                truncated,
                {c: [block.keep[c][i] for i in rows] for c in self.keep_columns},
                encoded=good_encoded,
                texts=[block.texts[i] for i in rows],
                n_chunks=n_chunks if plan.chunk else None,
            )
            if rows
            else None
        )
        chunked = [c for c in n_chunks if c > 1]
        return BlockResult(table, bad, sum(n_tokens), sum(truncated), len(chunked), sum(chunked))

    @staticmethod
    def _seen(enc: Encoded) -> int:
        """Tokens the model saw for a row (a chunked row's chunks, their special tokens and prompts included)."""
        return sum(len(c) for c in enc.chunks) if enc.chunks else len(enc.ids)

    def _combine(self, outputs: list[Any], enc: Encoded) -> Any:
        """A chunked row's chunk outputs -> the row's output (tasks that chunk override this)."""
        raise InternalError(f"{self.task} does not combine chunks")

    def _stack(self, values: list[np.ndarray]) -> Any:
        """Fixed-width outputs become one [n, d] array; per-token (and several-head) outputs stay one per row."""
        return values if self.per_token else np.stack(values)
