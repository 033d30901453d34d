"""Tokenization stage: prompt, lower-casing, truncation and the too-long flag, in batches off the model thread."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from poolcli.errors import ConfigError, UsageError
from poolcli.io.records import Encoded

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from poolcli.engine.plan import Plan, ScorePlan
    from poolcli.model.token_heads import ColbertSpec
    from poolcli.vocab import ColbertRole


_CHARS_PER_TOKEN = 16
"""First guess of the characters a token spans, to cut a huge text before tokenizing it; doubled while too small."""
_SLICE_CHARS = 1 << 20
"""Texts longer than this are tokenized in slices of about this many characters, cut before a space (whitespace
pre-tokenizers split there anyway), so a text of tens of MB never becomes one giant encoding."""


def _slices(text: str) -> Iterator[str]:
    start = 0
    while start < len(text):
        end = min(len(text), start + _SLICE_CHARS)
        if end < len(text):
            cut = text.rfind(" ", start + _SLICE_CHARS // 2, end)
            if cut > start:
                end = cut
        yield text[start:end]
        start = end


class TextEncoder:
    """Turns texts into token ids exactly as the model's fast tokenizer does with `add_special_tokens=True`.

    Works on the Rust tokenizer directly: batched, GIL-free, and it reports truncation through the overflow list,
    so finding too-long rows costs no second pass. A huge text is cut before tokenizing to a few times what can be
    used (the model maximum, or max_embed_len), so one 50 MB row costs what its usable part costs; the cut is
    widened until it provably does not change the tokens that are used.

    With chunked processing, a text over the model maximum becomes chunks of the model maximum: each chunk is the
    model's special tokens around the prompt (repeated in every chunk) and the next slice of the text's tokens.
    """

    def __init__(self, plan: Plan, *, offsets: bool = False, special: bool = False) -> None:
        from tokenizers import Tokenizer

        hf, backend = _load_tokenizer(plan.model.path)

        # A private copy: truncation and padding settings are ours, whatever the saved tokenizer had.
        self._tok: Tokenizer = Tokenizer.from_str(backend.to_str())
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=plan.max_tokens, direction=plan.truncation_side)
        self._full: Tokenizer = Tokenizer.from_str(backend.to_str())
        self._full.no_padding()
        self._full.no_truncation()
        self.max_tokens = plan.max_tokens
        self.left = plan.truncation_side == "left"
        n_special = int(hf.num_special_tokens_to_add())
        if plan.max_tokens <= n_special:
            raise UsageError(
                f"a limit of {plan.max_tokens} tokens leaves no room for text: the model adds {n_special} special "
                "tokens to every input",
                hint="--truncate-prompt-tokens sets the limit, else --max-model-len or the model maximum: raise it",
            )
        # Left truncation would cut the prompt first; keep it and cut the text after it instead.
        self._keep_prompt_left: int | None = None
        if self.left and plan.prompt:
            prompt_len = len(self._full.encode(plan.prompt, add_special_tokens=False).ids)
            if plan.max_tokens - n_special - prompt_len < 1:
                raise UsageError(
                    f"the prompt alone ({prompt_len} tokens) fills the {plan.max_tokens}-token limit",
                    hint="shorten --prompt or pick another --prompt-name, or raise the limit: "
                    "--truncate-prompt-tokens, else --max-model-len",
                )
            self._keep_prompt_left = prompt_len
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
        self.chunk = plan.chunk
        self.max_embed_len = plan.max_embed_len
        if self.chunk:
            self._prefix, self._suffix = self._special_frame()
            prompt = self.prompt.lower() if (self.prompt and self.lower) else self.prompt
            self._prompt_ids = self._full.encode(prompt, add_special_tokens=False).ids if prompt else []
            self.room = plan.max_tokens - len(self._prefix) - len(self._suffix) - len(self._prompt_ids)
            if self.room < 1:
                raise UsageError(
                    f"with the prompt and special tokens, a {plan.max_tokens}-token chunk has no room",
                    hint="shorten --prompt or pick another --prompt-name, or raise the limit: "
                    "--truncate-prompt-tokens, else --max-model-len",
                )

    @property
    def chunk_frame(self) -> tuple[int, int]:
        """Tokens every chunk repeats before its slice of the text (specials and prompt) and after it."""
        return len(self._prefix) + len(self._prompt_ids), len(self._suffix)

    def _special_frame(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP], <s> / </s>, ...)."""
        for probe in ("a", "hello", "x y"):
            inner = self._full.encode(probe, add_special_tokens=False).ids
            outer = self._full.encode(probe, add_special_tokens=True).ids
            for start in range(len(outer) - len(inner) + 1):
                if inner and outer[start : start + len(inner)] == inner:
                    return outer[:start], outer[start + len(inner) :]
        raise ConfigError("cannot tell which special tokens the tokenizer adds around a text (needed for chunking)")

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

    def _cut(self, raw: str, tokens: int) -> str:
        """The part of a row's text that can hold `tokens` tokens at the first guess: its start (its end when
        truncating on the left). The prompt is never cut."""
        budget = max(tokens, 1) * _CHARS_PER_TOKEN
        if len(raw) <= budget:
            return raw
        return raw[-budget:] if self.left else raw[:budget]

    def _widened(self, raw: str) -> tuple[Any, int]:
        """A text cut at the first guess that did not overflow: widen the cut until it overflows or the whole text
        is read, so the tokens kept are those of the whole text. Returns the encoding and the characters cut off
        the start."""
        tokens = self.max_tokens * 2
        while True:
            part = self._cut(raw, tokens)
            e = self._tok.encode(self.prepare(part), add_special_tokens=True)
            if len(part) == len(raw) or e.overflowing:
                return e, (len(raw) - len(part) if self.left else 0)
            tokens *= 2

    def _count(self, raw: str, limit: int) -> int:
        """The text's token count (specials included), or a count past `limit` once it is clear there are more
        (a huge text is counted slice by slice and the count stops there)."""
        prepared = self.prepare(raw)
        if len(prepared) > _SLICE_CHARS:
            n = len(self._prefix_suffix())
            for piece in _slices(prepared):
                n += len(self._full.encode(piece, add_special_tokens=False).ids)
                if n > limit:
                    return n
            return n
        return len(self._full.encode(prepared, add_special_tokens=True).ids)

    def _prefix_suffix(self) -> list[int]:
        prefix, suffix = self._special_frame()
        return [*prefix, *suffix]

    def _chunks(self, raw: str) -> tuple[list[int], list[list[int]]]:
        """The whole text's ids (as one input would be, prompt included) and its chunks."""
        text = raw.lower() if self.lower else raw
        body: list[int] = []
        for piece in _slices(text):
            body += self._full.encode(piece, add_special_tokens=False).ids
        frame = self._prompt_ids
        ids = [*self._prefix, *frame, *body, *self._suffix]
        chunks = [
            [*self._prefix, *frame, *body[i : i + self.room], *self._suffix] for i in range(0, len(body), self.room)
        ]
        return ids, chunks

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        parts = [self._cut(raw, self.max_tokens) for raw in texts]
        batch = self._tok.encode_batch([self.prepare(p) for p in parts], add_special_tokens=True)
        out: list[Encoded] = []
        for raw, part, e in zip(texts, parts, batch, strict=True):
            shift = len(raw) - len(part) if self.left else 0
            if len(part) < len(raw) and not e.overflowing:
                e, shift = self._widened(raw)
            overflow = bool(e.overflowing)
            if self._keep_prompt_left is not None and overflow:
                out.append(self._left_keeping_prompt(raw))
            else:
                offsets = None
                if self.offsets:
                    offsets = self._text_offsets(e.offsets, e.special_tokens_mask)
                    if shift:
                        offsets = [(s + shift, t + shift) if t else (s, t) for s, t in offsets]
                special = list(e.special_tokens_mask) if self.special else None
                out.append(Encoded(e.ids, overflow, offsets, special=special))
            if not overflow:
                if self.max_embed_len is not None and len(e.ids) > self.max_embed_len:
                    out[-1].n_full = len(e.ids)  # fits the model but not max_embed_len: a TOO_LONG row
                continue
            if self.max_embed_len is None and not self.chunk:
                continue
            if self.max_embed_len is not None:
                out[-1].n_full = self._count(raw, self.max_embed_len)
                if out[-1].n_full > self.max_embed_len:
                    continue  # a TOO_LONG row: never chunked
            if self.chunk:
                ids, chunks = self._chunks(raw)
                special = [1] * len(self._prefix) + [0] * (len(ids) - len(self._prefix) - len(self._suffix))
                special += [1] * len(self._suffix)
                out[-1] = Encoded(ids, False, chunks=chunks, n_full=len(ids), special=special if self.special else None)
        return out

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

    def _left_keeping_prompt(self, raw: str) -> Encoded:
        """Left truncation with a prompt: leading specials, the prompt, the last text tokens, trailing specials."""
        assert self._keep_prompt_left is not None
        prompt_len = self._keep_prompt_left
        tokens = self.max_tokens * 2
        while True:
            part = self._cut(raw, tokens)
            e = self._full.encode(self.prepare(part), add_special_tokens=True)
            if len(part) == len(raw) or len(e.ids) > self.max_tokens + prompt_len + 2:
                break
            tokens *= 2
        shift = len(raw) - len(part)
        ids, special = e.ids, e.special_tokens_mask
        offsets = self._text_offsets(e.offsets, special) if self.offsets else None
        if offsets is not None and shift:
            offsets = [(s + shift, t + shift) if t else (s, t) for s, t in offsets]
        mask = list(special) if self.special else None
        lead = next((i for i, m in enumerate(special) if not m), len(ids))
        trail = next((i for i, m in enumerate(reversed(special)) if not m), 0)
        n = len(ids)
        room = self.max_tokens - lead - trail - prompt_len
        # Positions kept: leading specials, the prompt, the last `room` text tokens, trailing specials.
        keep = [*range(lead + prompt_len), *range(n - trail - room, n)]
        return Encoded(
            [ids[i] for i in keep],
            True,
            [offsets[i] for i in keep] if offsets is not None else None,
            special=[special[i] for i in keep] if mask is not None else None,
        )


class ColbertEncoder:
    """A ColBERT role's tokenization, as PyLate 1.6's `ColBERT.tokenize` does it (the numbers users compare against):

    the text (stripped, with the prompt if any) tokenized with special tokens and cut to the role's length less
    one; the marker token inserted after the first token ([CLS]); queries padded with [MASK] to the query length
    (query expansion), the expansion tokens attended only when the checkpoint says so; documents keep their
    length and later lose the vectors of their skiplist tokens (`skip_ids`)."""

    def __init__(self, plan: Plan, spec: ColbertSpec, role: ColbertRole, *, special: bool = False) -> None:
        from tokenizers import Tokenizer

        if plan.chunk or plan.max_embed_len is not None:
            raise UsageError(
                f"a ColBERT {role} has a fixed length (the checkpoint's {role}_length); chunked processing and "
                "max_embed_len do not apply to it"
            )
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
        self.max_tokens = length
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
            raise UsageError(
                f"a limit of {plan.max_tokens} tokens leaves no room for a query and a document",
                hint="--truncate-prompt-tokens sets the limit, else --max-model-len or the model maximum: raise it",
            )
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
