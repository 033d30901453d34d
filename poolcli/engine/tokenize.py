"""Tokenization stage: prompt, lower-casing, truncation and the too-long flag, in batches off the model thread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from poolcli.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from poolcli.engine.plan import Plan


class Encoded(msgspec.Struct):
    """One row's token ids after truncation."""

    ids: list[int]
    truncated: bool


class TextEncoder:
    """Turns texts into token ids exactly as the model's fast tokenizer does with `add_special_tokens=True`.

    Works on the Rust tokenizer directly: batched, GIL-free, and it reports truncation through the overflow list,
    so finding too-long rows costs no second pass.
    """

    def __init__(self, plan: Plan) -> None:
        from poolcli.engine.runner import quiet_transformers

        quiet_transformers()
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(plan.model.path, trust_remote_code=False)
        except Exception as exc:  # transformers raises many types for a broken tokenizer
            raise ConfigError(f"cannot load the tokenizer from {plan.model.path}: {exc}") from None
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"{plan.model.path}: poolcli needs a fast (Rust) tokenizer")
        from tokenizers import Tokenizer

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
        self.prompt = plan.prompt
        self.lower = plan.lower_case
        self.prompt_tokens = self._prompt_length() if (plan.prompt and not plan.pooling.include_prompt) else 0

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
        return [Encoded(e.ids, bool(e.overflowing)) for e in batch]

    def _encode_left_keeping_prompt(self, texts: Sequence[str], full: Tokenizer, prompt_len: int) -> list[Encoded]:
        out: list[Encoded] = []
        for e in full.encode_batch([self.prepare(t) for t in texts], add_special_tokens=True):
            ids, special = e.ids, e.special_tokens_mask
            if len(ids) <= self.max_tokens:
                out.append(Encoded(ids, False))
                continue
            lead = next((i for i, m in enumerate(special) if not m), len(ids))
            trail = next((i for i, m in enumerate(reversed(special)) if not m), 0)
            body = ids[lead : len(ids) - trail]
            room = self.max_tokens - lead - trail - prompt_len
            kept = ids[:lead] + body[:prompt_len] + body[len(body) - room :] + ids[len(ids) - trail :]
            out.append(Encoded(kept, True))
        return out


def _pad_id(hf: object) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(hf, attr, None)
        if isinstance(value, int):
            return value
    return 0
