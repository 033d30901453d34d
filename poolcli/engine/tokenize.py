"""Tokenization stage: prompt, lower-casing, truncation and the too-long flag, in batches off the model thread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from poolcli.errors import ConfigError, UsageError
from poolcli.io.records import Encoded

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from poolcli.engine.plan import Plan, ScorePlan
    from poolcli.model.token_heads import ColbertSpec
    from poolcli.vocab import ColbertRole


class TextEncoder:
    """Turns texts into token ids exactly as the model's fast tokenizer does with `add_special_tokens=True`.

    Works on the Rust tokenizer directly: batched, GIL-free, and it reports truncation through the overflow list,
    so finding too-long rows costs no second pass.
    """

    def __init__(self, plan: Plan, *, offsets: bool = False, special: bool = False) -> None:
        from tokenizers import Tokenizer

        hf, backend = _load_tokenizer(plan.model.path)

        # A private copy: truncation and padding settings are ours, whatever the saved tokenizer had.
        self._tok: Tokenizer = Tokenizer.from_str(backend.to_str())
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=plan.max_tokens, direction=plan.truncation_side)
        self.max_tokens = plan.max_tokens
        n_special = int(hf.num_special_tokens_to_add())
        if plan.max_tokens <= n_special:
            raise UsageError(
                f"a limit of {plan.max_tokens} tokens leaves no room for text: the model adds {n_special} special "
                "tokens to every input"
            )
        # Left truncation would cut the prompt first; keep it and cut the text after it instead.
        self._keep_prompt_left: tuple[Tokenizer, int] | None = None
        if plan.truncation_side == "left" and plan.prompt:
            full = Tokenizer.from_str(backend.to_str())
            full.no_padding()
            full.no_truncation()
            prompt_len = len(full.encode(plan.prompt, add_special_tokens=False).ids)
            if plan.max_tokens - n_special - prompt_len < 1:
                raise UsageError(f"the prompt alone ({prompt_len} tokens) fills the {plan.max_tokens}-token limit")
            self._keep_prompt_left = (full, prompt_len)
        self.pad_id = _pad_id(hf)
        self.special_ids = {int(i) for i in hf.all_special_ids}
        # The ids BGE-M3's lexical weights leave out (FlagEmbedding: cls, eos, pad and unk).
        self.lexical_unused = frozenset(
            int(i) for i in (hf.cls_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) if isinstance(i, int)
        )
        self.prompt = plan.prompt
        self.lower = plan.lower_case
        self.prompt_tokens = self._prompt_length() if (plan.prompt and not plan.pooling.include_prompt) else 0
        self.offsets = offsets
        self.special = special

    def _prompt_length(self) -> int:
        """Tokens of the prompt, less a trailing special token (how Sentence-Transformers counts it)."""
        assert self.prompt is not None
        ids = self._tok.encode(self.prompt, add_special_tokens=True).ids
        n = len(ids)
        if ids and ids[-1] in self.special_ids:
            n -= 1
        return n

    def prepare(self, text: str) -> str:
        if self.prompt:
            text = self.prompt + text
        return text.lower() if self.lower else text

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        if self._keep_prompt_left is not None:
            return self._encode_left_keeping_prompt(texts, *self._keep_prompt_left)
        batch = self._tok.encode_batch([self.prepare(t) for t in texts], add_special_tokens=True)
        return [
            Encoded(
                e.ids,
                bool(e.overflowing),
                self._text_offsets(e.offsets, e.special_tokens_mask) if self.offsets else None,
                special=list(e.special_tokens_mask) if self.special else None,
            )
            for e in batch
        ]

    def _text_offsets(self, offsets: Sequence[tuple[int, int]], special: Sequence[int]) -> list[tuple[int, int]]:
        """Offsets in the prepared text (prompt + text) -> offsets in the row's own text."""
        shift = len(self.prompt) if self.prompt else 0
        out: list[tuple[int, int]] = []
        for (start, end), is_special in zip(offsets, special, strict=True):
            if is_special or end <= shift:
                out.append((0, 0))
            else:
                out.append((max(start - shift, 0), end - shift))
        return out

    def _encode_left_keeping_prompt(self, texts: Sequence[str], full: Tokenizer, prompt_len: int) -> list[Encoded]:
        out: list[Encoded] = []
        for e in full.encode_batch([self.prepare(t) for t in texts], add_special_tokens=True):
            ids, special = e.ids, e.special_tokens_mask
            offsets = self._text_offsets(e.offsets, special) if self.offsets else None
            mask = list(special) if self.special else None
            if len(ids) <= self.max_tokens:
                out.append(Encoded(ids, False, offsets, special=mask))
                continue
            lead = next((i for i, m in enumerate(special) if not m), len(ids))
            trail = next((i for i, m in enumerate(reversed(special)) if not m), 0)
            n = len(ids)
            room = self.max_tokens - lead - trail - prompt_len
            # Positions kept: leading specials, the prompt, the last `room` text tokens, trailing specials.
            keep = [*range(lead + prompt_len), *range(n - trail - room, n)]
            out.append(
                Encoded(
                    [ids[i] for i in keep],
                    True,
                    [offsets[i] for i in keep] if offsets is not None else None,
                    special=[special[i] for i in keep] if mask is not None else None,
                )
            )
        return out


class ColbertEncoder:
    """A ColBERT role's tokenization, as PyLate 1.6's `ColBERT.tokenize` does it (the numbers users compare against):

    the text (stripped, with the prompt if any) tokenized with special tokens and cut to the role's length less
    one; the marker token inserted after the first token ([CLS]); queries padded with [MASK] to the query length
    (query expansion), the expansion tokens attended only when the checkpoint says so; documents keep their
    length and later lose the vectors of their skiplist tokens (`skip_ids`)."""

    def __init__(self, plan: Plan, spec: ColbertSpec, role: ColbertRole, *, special: bool = False) -> None:
        from tokenizers import Tokenizer

        hf, backend = _load_tokenizer(plan.model.path)
        query = role == "query"
        length = min(spec.query_length if query else spec.document_length, plan.max_tokens)
        prefix = spec.query_prefix if query else spec.document_prefix
        self.prefix_id: int | None = None
        if prefix:
            pid = hf.convert_tokens_to_ids(prefix)
            if not isinstance(pid, int) or pid == hf.unk_token_id:
                raise ConfigError(f"{plan.model.name}: the tokenizer has no ColBERT marker token {prefix!r}")
            self.prefix_id = pid
        room = length - (1 if self.prefix_id is not None else 0)
        n_special = int(hf.num_special_tokens_to_add())
        if room <= n_special:
            raise UsageError(f"a ColBERT {role} length of {length} tokens leaves no room for text")
        self._tok: Tokenizer = Tokenizer.from_str(backend.to_str())
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=room, direction=plan.truncation_side)
        self.length = length
        self.expand = query and spec.do_query_expansion
        self.attend_expansion = spec.attend_to_expansion_tokens
        mask_id = hf.mask_token_id if hf.mask_token_id is not None else hf.eos_token_id
        if self.expand and mask_id is None:
            raise ConfigError(f"{plan.model.name}: query expansion needs a [MASK] (or end-of-sequence) token")
        self.mask_id: int = int(mask_id) if mask_id is not None else 0
        self.skip_ids: frozenset[int] = (
            frozenset(int(hf.convert_tokens_to_ids(w)) for w in spec.skiplist_words) if not query else frozenset()
        )
        self.pad_id = _pad_id(hf)
        self.prompt = plan.prompt
        self.lower = plan.lower_case
        self.special = special
        self.prompt_tokens = 0

    def prepare(self, text: str) -> str:
        if self.prompt:
            text = self.prompt + text
        text = text.strip()  # PyLate's tokenizer (Sentence-Transformers' Transformer) strips every text
        return text.lower() if self.lower else text

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        out: list[Encoded] = []
        for e in self._tok.encode_batch([self.prepare(t) for t in texts], add_special_tokens=True):
            ids = list(e.ids)
            special = list(e.special_tokens_mask)
            if self.prefix_id is not None:
                ids.insert(1, self.prefix_id)
                special.insert(1, 1)
            attention: list[int] | None = None
            if self.expand and len(ids) < self.length:
                extra = self.length - len(ids)
                attention = [1] * len(ids) + [1 if self.attend_expansion else 0] * extra
                if self.attend_expansion:
                    attention = None
                ids += [self.mask_id] * extra
                special += [1] * extra
            out.append(
                Encoded(ids, bool(e.overflowing), attention=attention, special=special if self.special else None)
            )
        return out


def _load_tokenizer(path: str) -> tuple[Any, Any]:
    """The model's Hugging Face tokenizer and its Rust backend (poolcli works on copies of the backend)."""
    from poolcli.model.load import quiet_transformers

    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise ConfigError(f"cannot load the tokenizer from {path}: {exc}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{path}: poolcli needs a fast (Rust) tokenizer")
    return hf, backend


class PairEncoder:
    """(query, document) pairs -> one token sequence each, for cross-encoders and LLM rerankers.

    A classic cross-encoder gets the tokenizer's own text-pair encoding (`[CLS] q [SEP] d [SEP]` with token types).
    Too-long pairs lose document tokens first; only a query that alone overflows the limit is cut too (the
    tokenizer's longest-first rule). LLM rerankers (no separator) get the query and document templates rendered
    and concatenated; a too-long prompt loses the end of the document, never the template's suffix.
    """

    def __init__(self, plan: ScorePlan) -> None:
        from tokenizers import Tokenizer

        from poolcli.config import ScoreTemplate

        hf, backend = _load_tokenizer(plan.model.path)
        text = backend.to_str()
        self.max_tokens = plan.max_tokens
        self._plain: Tokenizer = Tokenizer.from_str(text)
        self._plain.no_padding()
        self._plain.no_truncation()
        self._doc_first: Tokenizer = Tokenizer.from_str(text)
        self._doc_first.no_padding()
        self._doc_first.enable_truncation(max_length=plan.max_tokens, strategy="only_second")
        self._longest: Tokenizer = Tokenizer.from_str(text)
        self._longest.no_padding()
        self._longest.enable_truncation(max_length=plan.max_tokens, strategy="longest_first")
        n_special = int(hf.num_special_tokens_to_add(pair=plan.use_sep_token))
        if plan.max_tokens <= n_special + 1:
            raise UsageError(f"a limit of {plan.max_tokens} tokens leaves no room for a query and a document")
        self.use_sep = plan.use_sep_token
        self.template = plan.template or ScoreTemplate()
        self.instruction = plan.instruction
        self.with_types = plan.model.type_vocab_size >= 2
        self.max_query = plan.max_tokens_per_query
        self.max_doc = plan.max_tokens_per_doc
        self.lower = plan.model.do_lower_case
        self.pad_id = _pad_id(hf)

    def _cut(self, texts: list[str], n: int) -> list[str]:
        """Each text cut to its first n tokens, at the character where the n-th token ends (no decode)."""
        out = []
        for text, enc in zip(texts, self._plain.encode_batch(texts, add_special_tokens=False), strict=True):
            out.append(text[: enc.offsets[n - 1][1]] if len(enc.ids) > n else text)
        return out

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        queries = [q.lower() if self.lower else q for q, _ in pairs]
        docs = [d.lower() if self.lower else d for _, d in pairs]
        if self.max_query:
            queries = self._cut(queries, self.max_query)
        if self.max_doc:
            docs = self._cut(docs, self.max_doc)
        if not self.use_sep:
            return [self._render(q, d) for q, d in zip(queries, docs, strict=True)]
        try:
            batch = self._doc_first.encode_batch(list(zip(queries, docs, strict=True)), add_special_tokens=True)
        except Exception:  # one query alone is over the limit: pair by pair, longest-first for those
            batch = []
            for q, d in zip(queries, docs, strict=True):
                try:
                    batch.append(self._doc_first.encode(q, d, add_special_tokens=True))
                except Exception:
                    batch.append(self._longest.encode(q, d, add_special_tokens=True))
        return [
            Encoded(e.ids, bool(e.overflowing), type_ids=list(e.type_ids) if self.with_types else None) for e in batch
        ]

    def _prompt(self, query: str, doc: str) -> str:
        t = self.template
        head = t.query.replace("{instruction}", self.instruction).replace("{query}", query)
        return head + t.document.replace("{instruction}", self.instruction).replace("{document}", doc)

    def _render(self, query: str, doc: str) -> Encoded:
        ids = self._plain.encode(self._prompt(query, doc), add_special_tokens=True).ids
        if len(ids) <= self.max_tokens:
            return Encoded(ids, False)
        # Cutting the text and re-tokenizing can shift a token at the cut; a few rounds settle it.
        for _ in range(4):
            enc = self._plain.encode(doc, add_special_tokens=False)
            keep = len(enc.ids) - (len(ids) - self.max_tokens)
            if keep < 1:
                break
            doc = doc[: enc.offsets[keep - 1][1]]
            ids = self._plain.encode(self._prompt(query, doc), add_special_tokens=True).ids
            if len(ids) <= self.max_tokens:
                return Encoded(ids, True)
        return Encoded(ids[: self.max_tokens], True)


def _pad_id(hf: object) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(hf, attr, None)
        if isinstance(value, int):
            return value
    return 0
