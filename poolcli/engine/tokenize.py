"""Tokenization stage: prompt, lower-casing, truncation and the too-long flag, in batches off the model thread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from poolcli.errors import ConfigError

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
        batch = self._tok.encode_batch([self.prepare(t) for t in texts], add_special_tokens=True)
        return [Encoded(e.ids, bool(e.overflowing)) for e in batch]


def _pad_id(hf: object) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(hf, attr, None)
        if isinstance(value, int):
            return value
    return 0
