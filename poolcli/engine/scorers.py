"""The three ways a pair becomes a score, each a forward through the shared batch template:

- cross-encoder: the pair through the classifier (text-pair or templated encoding), then calibration and the final
  activation;
- bi-encoder: the cosine of the two texts' embeddings (the full embed head), each distinct text embedded once;
- late interaction: MaxSim over per-token vectors, each distinct text encoded once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from poolcli.engine.batch import Failed, OnBatch, StopCheck
from poolcli.vocab import ErrorCode

if TYPE_CHECKING:
    from torch import Tensor

    from poolcli.config import EngineConfig
    from poolcli.engine.base import RowEncoder
    from poolcli.engine.batch import BatchTemplate, Collated
    from poolcli.engine.plan import ScorePlan
    from poolcli.engine.tokenize import PairEncoder
    from poolcli.io.records import Encoded
    from poolcli.model.load import Loader


class Scores(NamedTuple):
    scores: np.ndarray
    failed: Failed
    """Pairs that have no score: {pair: (code, message)}."""
    n_tokens: list[int]
    truncated: list[bool]
    query_failed: frozenset[int] = frozenset()
    """Failed pairs whose query is at fault (the others: the document, or the pair as a whole)."""


class Context(Protocol):
    """What a scorer uses of the engine that owns it (`poolcli.engine.score.ScoreEngine`)."""

    @property
    def plan(self) -> ScorePlan: ...

    @property
    def loader(self) -> Loader: ...

    @property
    def config(self) -> EngineConfig: ...

    @property
    def template(self) -> BatchTemplate: ...


class Scorer(Protocol):
    """Built with its tokenizers only (what they refuse is refused before any weights); `load` loads the weights."""

    pad_id: int
    max_tokens: int
    """The token limit inputs are cut to (a dry run reports it)."""

    def load(self) -> None: ...

    def score(self, pairs: list[tuple[str, str]], stop: StopCheck, on_batch: OnBatch) -> Scores: ...


class CrossEncoderScorer:
    """Each pair through the classifier: text-pair (or templated) encoding, the model's head, calibration and the
    final activation."""

    def __init__(self, engine: Context) -> None:
        from poolcli.engine.tokenize import PairEncoder

        self.engine = engine
        self.encoder: PairEncoder = PairEncoder(engine.plan)
        self.pad_id = self.encoder.pad_id
        self.max_tokens = self.encoder.max_tokens

    def load(self) -> None:
        from poolcli.pooler.dispatch import pooler_for

        plan = self.engine.plan
        self.model = self.engine.loader.logits_model(pad_id=self.pad_id)
        self.pooler = pooler_for(
            "classify",
            activation=plan.activation,
            use_activation=plan.use_activation,
            logit_mean=plan.logit_mean,
            logit_sigma=plan.logit_sigma,
        )

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        model = self.engine.loader.logits_model(pad_id=self.pad_id, float32=True) if float32 else self.model
        return self.pooler(model.logits(batch.ids, batch.mask, batch.types), batch.mask)[:, 0]

    def score(self, pairs: list[tuple[str, str]], stop: StopCheck, on_batch: OnBatch) -> Scores:
        n = len(pairs)
        scores = np.zeros(n, dtype=np.float32)
        n_tokens = [0] * n
        truncated = [False] * n
        failed: Failed = {}
        step = self.engine.config.window_rows
        refuse = self.engine.plan.on_too_long == "error"
        for w in range(0, n, step):
            enc = self.encoder.encode(pairs[w : w + step])
            run = [j for j, e in enumerate(enc) if not (refuse and e.truncated)]
            values, run_failed = self.engine.template.run(
                [enc[j] for j in run], [w + j for j in run], self._forward, stop=stop, on_batch=on_batch
            )
            results = dict(zip(run, values, strict=True))
            window_failed = {run[k]: f for k, f in run_failed.items()}
            for j, e in enumerate(enc):
                n_tokens[w + j] = len(e.ids)
                truncated[w + j] = e.truncated
                if refuse and e.truncated:
                    failed[w + j] = ("TOO_LONG", f"the pair is longer than {self.encoder.max_tokens} tokens")
                elif j in window_failed:
                    failed[w + j] = window_failed[j]
                else:
                    value = results[j]
                    assert value is not None
                    scores[w + j] = float(value)
        return Scores(scores, failed, n_tokens, truncated)


class _TextCache:
    """Distinct texts -> their representation, computed once per run (both sides share it)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.failed: dict[str, tuple[ErrorCode, str]] = {}
        self.tokens: dict[str, tuple[int, bool]] = {}

    def fill(
        self,
        texts: list[str],
        window: int,
        encode: Callable[[list[str]], list[Encoded]],
        compute: Callable[[list[Encoded]], tuple[list[np.ndarray | None], Failed]],
    ) -> None:
        """Compute the texts not seen yet, a window at a time."""
        todo = [t for t in dict.fromkeys(texts) if t not in self.values and t not in self.failed]
        for w in range(0, len(todo), window):
            chunk = todo[w : w + window]
            enc = encode(chunk)
            values, failed = compute(enc)
            for j, text in enumerate(chunk):
                self.tokens[text] = (len(enc[j].ids), enc[j].truncated)
                if j in failed:
                    self.failed[text] = failed[j]
                else:
                    self.values[text] = values[j]


def _combine(
    pairs: list[tuple[str, str]],
    queries: _TextCache,
    docs: _TextCache,
    sim: Callable[[Any, Any], float],
    *,
    refuse_truncated: tuple[int, int] | None = None,
) -> Scores:
    """Scores of the pairs from the cached representations; with `refuse_truncated` (the query's and the
    document's token limits), a pair with a side over its limit is a TOO_LONG failure."""
    scores = np.zeros(len(pairs), dtype=np.float32)
    failed: Failed = {}
    query_failed: set[int] = set()
    n_tokens: list[int] = []
    truncated: list[bool] = []
    for i, (q, d) in enumerate(pairs):
        tq, td = queries.tokens[q], docs.tokens[d]
        n_tokens.append(tq[0] + td[0])
        truncated.append(tq[1] or td[1])
        bad = queries.failed.get(q)
        if bad is not None or (refuse_truncated is not None and tq[1]):
            query_failed.add(i)
        if bad is None:
            bad = docs.failed.get(d)
        if bad is None and refuse_truncated is not None and (tq[1] or td[1]):
            side, limit = ("query", refuse_truncated[0]) if tq[1] else ("document", refuse_truncated[1])
            bad = ("TOO_LONG", f"the {side} is longer than {limit} tokens")
        if bad is not None:
            failed[i] = bad
            continue
        scores[i] = sim(queries.values[q], docs.values[d])
    return Scores(scores, failed, n_tokens, truncated, frozenset(query_failed))


class _TextScorer:
    """What the bi-encoder and late interaction share: the embedding plan's text encoder, the model body, and a
    cache of each distinct text's representation (one cache for both sides, unless the sides are encoded
    differently, as a ColBERT checkpoint's queries and documents are)."""

    per_token = False

    def __init__(self, engine: Context) -> None:
        from poolcli.engine.tokenize import TextEncoder

        assert engine.plan.embed is not None
        self.engine = engine
        self.plan = engine.plan.embed
        self.query_encoder: RowEncoder = TextEncoder(self.plan)
        self.doc_encoder: RowEncoder = self.query_encoder
        self.pad_id = self.query_encoder.pad_id
        self.max_tokens = self.query_encoder.max_tokens
        self.queries = _TextCache()
        self.docs = self.queries

    def load(self) -> None:
        self.body = self.engine.loader.hidden_state_model()

    def _hidden(self, batch: Collated, float32: bool) -> Tensor:
        body = self.engine.loader.hidden_state_model(float32=True) if float32 else self.body
        return body.hidden_states(batch.ids, batch.mask)

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        raise NotImplementedError

    def _sim(self, a: Any, b: Any) -> float:
        raise NotImplementedError

    def _keep(self, enc: list[Encoded], values: list[np.ndarray | None], *, document: bool) -> list[np.ndarray | None]:
        """Per-text post-processing of the computed representations (none here)."""
        return values

    def score(self, pairs: list[tuple[str, str]], stop: StopCheck, on_batch: OnBatch) -> Scores:
        def computer(document: bool) -> Callable[[list[Encoded]], tuple[list[np.ndarray | None], Failed]]:
            def compute(enc: list[Encoded]) -> tuple[list[np.ndarray | None], Failed]:
                values, failed = self.engine.template.run(
                    enc, list(range(len(enc))), self._forward, per_token=self.per_token, stop=stop, on_batch=on_batch
                )
                return self._keep(enc, values, document=document), failed

            return compute

        window = self.engine.config.window_rows
        if self.docs is self.queries:
            self.queries.fill([t for pair in pairs for t in pair], window, self.query_encoder.encode, computer(False))
        else:
            self.queries.fill([q for q, _ in pairs], window, self.query_encoder.encode, computer(False))
            self.docs.fill([d for _, d in pairs], window, self.doc_encoder.encode, computer(True))
        limits = None
        if self.engine.plan.on_too_long == "error":
            limits = (self.query_encoder.max_tokens, self.doc_encoder.max_tokens)
        return _combine(pairs, self.queries, self.docs, self._sim, refuse_truncated=limits)


class BiEncoderScorer(_TextScorer):
    """Cosine of the two texts' embeddings (the full embed head: prompt, pooling, projector, normalize), in fp32
    inputs with a float64 dot product."""

    def load(self) -> None:
        from poolcli.pooler.dispatch import pooler_for

        super().load()
        params = self.plan.params
        self.pooler = pooler_for(
            "embed",
            modes=self.plan.pooling.modes,
            projector=self.engine.loader.projector(),
            dimensions=params.dimensions,
            normalize=params.normalize,
            skip_prompt_tokens=self.query_encoder.prompt_tokens,
        )

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        hidden = self._hidden(batch, float32)
        return self.pooler(hidden, batch.mask.to(hidden.device)).float()

    def _sim(self, a: Any, b: Any) -> float:
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        denom = float(np.linalg.norm(a64) * np.linalg.norm(b64))
        return float(a64 @ b64) / denom if denom > 0 else 0.0


class LateInteractionScorer(_TextScorer):
    """MaxSim over token vectors: every token's final hidden state through the token projector (a ColBERT
    checkpoint's `linear`, BGE-M3's `colbert_linear`, or the Sentence-Transformers Dense stack), L2-normalized per
    token, summed over query tokens of the best document match (divided by the query's token count with
    --maxsim-normalize).

    A ColBERT checkpoint encodes queries as queries and documents as documents (markers, [MASK] expansion, the
    document skiplist, as PyLate does); BGE-M3 drops each side's first token (FlagEmbedding's colbert vectors)."""

    per_token = True

    def __init__(self, engine: Context) -> None:
        super().__init__(engine)
        model = self.plan.model
        if model.colbert is not None:
            from poolcli.engine.tokenize import ColbertEncoder

            self.query_encoder = ColbertEncoder(self.plan, model.colbert, "query")
            doc_encoder = ColbertEncoder(self.plan, model.colbert, "document")
            self.doc_encoder = doc_encoder
            self.skip_ids = doc_encoder.skip_ids
            self.docs = _TextCache()
        else:
            self.skip_ids = frozenset()
        self.drop_first = model.bge_m3 is not None
        self.by_length = engine.plan.maxsim_normalize

    def load(self) -> None:
        from poolcli.pooler.dispatch import pooler_for

        super().load()
        self.pooler = pooler_for(
            "token_embed", projector=self.engine.loader.token_projector(), normalize=self.plan.params.normalize
        )

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        hidden = self._hidden(batch, float32)
        return self.pooler(hidden, batch.mask.to(hidden.device))

    def _keep(self, enc: list[Encoded], values: list[np.ndarray | None], *, document: bool) -> list[np.ndarray | None]:
        skip = self.skip_ids if document else frozenset()
        if not (skip or self.drop_first):
            return values
        out: list[np.ndarray | None] = []
        for e, v in zip(enc, values, strict=True):
            if v is None:
                out.append(None)
                continue
            keep = np.ones(len(e.ids), dtype=bool)
            if self.drop_first:
                keep[:1] = False
            if skip:
                keep &= ~np.isin(np.asarray(e.ids), list(skip))
            out.append(v[keep])
        return out

    def _sim(self, a: Any, b: Any) -> float:
        import torch

        from poolcli.pooler.heads import maxsim

        return maxsim(torch.from_numpy(a), torch.from_numpy(b), normalize_by_length=self.by_length)


def make_scorer(engine: Context) -> Scorer:
    """The plan's scorer with its tokenizers built and no weights loaded (`Scorer.load`)."""
    kind = engine.plan.score_type
    if kind == "cross-encoder":
        return CrossEncoderScorer(engine)
    if kind == "bi-encoder":
        return BiEncoderScorer(engine)
    return LateInteractionScorer(engine)
