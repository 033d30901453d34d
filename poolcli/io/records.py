"""Typed rows moving from the readers through the engine to the writers."""

from __future__ import annotations

from typing import Any

import msgspec

from poolcli.vocab import ErrorCode


class ErrorRow(msgspec.Struct, omit_defaults=True):
    """One input row that produced no output, as written to the error file."""

    id: Any
    source: str
    code: ErrorCode
    message: str
    line: int | None = None
    """1-based line in a line-oriented file."""
    row: int | None = None
    """0-based row number in the input (all files, every row counted)."""


class Block(msgspec.Struct):
    """A run of consecutive input rows: the valid ones as parallel lists, the bad ones as error rows.

    Blocks are cut by input row count, so their boundaries depend only on the input.
    """

    first_row: int
    """Input row number of the block's first row."""
    n_rows: int
    """Input rows covered, valid and bad."""
    rows: list[int] = msgspec.field(default_factory=list)
    ids: list[Any] = msgspec.field(default_factory=list)
    texts: list[str] = msgspec.field(default_factory=list)
    sources: list[str] = msgspec.field(default_factory=list)
    lines: list[int | None] = msgspec.field(default_factory=list)
    keep: dict[str, list[Any]] = msgspec.field(default_factory=dict)
    errors: list[ErrorRow] = msgspec.field(default_factory=list)


class Encoded(msgspec.Struct):
    """One row's token ids after truncation."""

    ids: list[int]
    truncated: bool
    offsets: list[tuple[int, int]] | None = None
    """Per token, its [start, end) characters in the row's text (not the prompt); (0, 0) for special and prompt
    tokens. Only when the encoder was asked for offsets."""
    type_ids: list[int] | None = None
    """Segment ids (0 for the query, 1 for the document) of a text pair, for models that have token types."""
    attention: list[int] | None = None
    """Per token, whether the model attends to it; None: every token (ColBERT query expansion tokens may be 0)."""
    chunks: list[list[int]] | None = None
    """A text longer than the model maximum, cut into chunks (each wrapped in the model's special tokens, with the
    prompt) for chunked processing; `ids` is then the whole text's token sequence as one input would be."""
    n_full: int | None = None
    """The whole text's token count, when it was counted past the model maximum (max_embed_len checks)."""
    special: list[int] | None = None
    """Per token, 1 for the special tokens the tokenizer added ([CLS], [SEP], <s>, ...), else 0. Only when the
    encoder was asked for it."""
