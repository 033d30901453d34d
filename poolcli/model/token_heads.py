"""Multi-vector and lexical checkpoints: what ColBERT and BGE-M3 models declare, read from their files (no torch).

ColBERT, two layouts:
- Stanford (`HF_ColBERT`, also `ColBERT*` architectures set with --hf-overrides): the body's weights plus a
  bias-free `linear.weight` (or `colbert_linear.weight`) in the checkpoint; `artifact.metadata` declares the
  markers (`query_token_id`, `doc_token_id`), lengths (`query_maxlen`, `doc_maxlen`), `attend_to_mask_tokens`
  and `mask_punctuation`.
- PyLate / Sentence-Transformers: modules.json with a Transformer then Dense module(s);
  config_sentence_transformers.json declares `query_prefix`, `document_prefix`, `query_length`,
  `document_length`, `do_query_expansion`, `attend_to_expansion_tokens` and `skiplist_words`
  (`model_type: "ColBERT"` or `similarity_fn_name: "MaxSim"` marks the layout).
Defaults are PyLate 1.6's: markers `[unused0]`/`[unused1]` for Stanford checkpoints and `[Q] `/`[D] ` otherwise,
query length 32, document length 180, query expansion on, expansion tokens not attended, and the punctuation
skiplist (`string.punctuation`).

BGE-M3 (`BgeM3EmbeddingModel`): an encoder with `colbert_linear.pt` (Linear(H, H) with bias) and
`sparse_linear.pt` (Linear(H, 1) with bias) beside its weights, as FlagEmbedding loads them.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Literal

import msgspec

from poolcli.errors import ConfigError
from poolcli.model.checkpoint import safetensors_shapes

_PUNCTUATION = tuple(string.punctuation)
_COLBERT_WEIGHTS = ("linear.weight", "colbert_linear.weight")


class ColbertSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How a ColBERT checkpoint encodes queries and documents (PyLate's `ColBERT.encode`)."""

    layout: Literal["stanford", "pylate"]
    projection: str | None
    """The checkpoint tensor of the bias-free projection (Stanford), or None when the Sentence-Transformers Dense
    modules are the projection (PyLate)."""
    dim: int
    query_prefix: str
    """The marker token inserted after the first token of a query ("" = none)."""
    document_prefix: str
    query_length: int
    document_length: int
    do_query_expansion: bool = True
    attend_to_expansion_tokens: bool = False
    skiplist_words: tuple[str, ...] = _PUNCTUATION
    """Document tokens whose vectors are dropped (each word looked up as one token, as PyLate does)."""
    source: str = ""
    """Where the settings came from (shown by `inspect`)."""


class BgeM3Spec(msgspec.Struct, frozen=True, kw_only=True):
    """BGE-M3's extra heads, beside the encoder weights."""

    colbert_path: str
    sparse_path: str
    colbert_dim: int


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def is_colbert(arch: str, st_config: dict[str, Any]) -> bool:
    """A ColBERT checkpoint: the Stanford architecture names, or a PyLate Sentence-Transformers layout."""
    if arch == "HF_ColBERT" or arch.startswith("ColBERT"):
        return True
    return st_config.get("model_type") == "ColBERT" or st_config.get("similarity_fn_name") == "MaxSim"


def colbert_spec(
    path: Path, body: Path, config: dict[str, Any], st_config: dict[str, Any], dense_out: int | None
) -> ColbertSpec:
    """Read a ColBERT checkpoint's projection and settings; a projection poolcli cannot load is refused."""
    projection: str | None = None
    dim: int | None = None
    if dense_out is None:
        shapes = safetensors_shapes(body)
        for name in _COLBERT_WEIGHTS:
            for key in (name, f"bert.{name}", f"model.{name}"):
                if key in shapes and len(shapes[key]) == 2:
                    projection, dim = key, int(shapes[key][0])
                    break
            if projection is not None:
                break
        if projection is None:
            hint = "poolcli reads `linear.weight` from model.safetensors, or a Sentence-Transformers Dense module"
            if any(body.glob("*.bin")) and not any(body.glob("*.safetensors")):
                hint = "convert the checkpoint to safetensors (poolcli reads the projection from model.safetensors)"
            names = " or ".join(_COLBERT_WEIGHTS)
            raise ConfigError(
                f"{body}: a ColBERT checkpoint without a projection poolcli can load (no {names} in the "
                "safetensors files and no Dense module); its vectors would be wrong",
                hint=hint,
            )
    else:
        dim = dense_out
    assert dim is not None
    metadata_path = body / "artifact.metadata"
    if not metadata_path.is_file():
        metadata_path = path / "artifact.metadata"
    stanford = projection is not None
    if metadata_path.is_file():
        meta = _json(metadata_path)
        return ColbertSpec(
            layout="stanford",
            projection=projection,
            dim=dim,
            query_prefix=str(meta.get("query_token_id", "[unused0]")),
            document_prefix=str(meta.get("doc_token_id", "[unused1]")),
            query_length=int(meta.get("query_maxlen", 32)),
            document_length=int(meta.get("doc_maxlen", 180)),
            attend_to_expansion_tokens=bool(meta.get("attend_to_mask_tokens", False)),
            # Stanford ColBERT honours mask_punctuation=false; PyLate 1.6 ignores it (always the punctuation list).
            skiplist_words=_PUNCTUATION if meta.get("mask_punctuation", True) else (),
            source=str(metadata_path),
        )
    words = st_config.get("skiplist_words")
    return ColbertSpec(
        layout="stanford" if stanford else "pylate",
        projection=projection,
        dim=dim,
        query_prefix=str(st_config.get("query_prefix", "[unused0]" if stanford else "[Q] ")),
        document_prefix=str(st_config.get("document_prefix", "[unused1]" if stanford else "[D] ")),
        query_length=int(st_config.get("query_length") or 32),
        document_length=int(st_config.get("document_length") or 180),
        do_query_expansion=bool(st_config.get("do_query_expansion", True)),
        attend_to_expansion_tokens=bool(st_config.get("attend_to_expansion_tokens", False))
        and bool(st_config.get("do_query_expansion", True)),
        skiplist_words=tuple(str(w) for w in words) if isinstance(words, list) else _PUNCTUATION,
        source="config_sentence_transformers.json" if st_config else "PyLate defaults",
    )


def bge_m3_spec(path: Path, body: Path, config: dict[str, Any], hidden: int) -> BgeM3Spec:
    """BGE-M3's heads must both be there: FlagEmbedding would silently run random ones; poolcli refuses."""
    for folder in dict.fromkeys((body, path)):
        colbert, sparse = folder / "colbert_linear.pt", folder / "sparse_linear.pt"
        if colbert.is_file() and sparse.is_file():
            dim = config.get("colbert_dim")
            return BgeM3Spec(
                colbert_path=str(colbert),
                sparse_path=str(sparse),
                colbert_dim=int(dim) if isinstance(dim, int) and dim > 0 else hidden,
            )
    raise ConfigError(
        f"{body}: BgeM3EmbeddingModel needs colbert_linear.pt and sparse_linear.pt beside the weights",
        hint="without them the sparse and colbert outputs would come from random heads",
    )
