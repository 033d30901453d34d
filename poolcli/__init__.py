"""poolcli: offline batch work with transformer pooling models, from the command line or from Python.

    import poolcli

    vectors = poolcli.embed(["a text", "another"])         # float32 numpy [n, d], the bundled all-MiniLM-L6-v2
    m = poolcli.load("./my-model", device="cpu")          # load once, call many times
    m.embed(texts, dimensions=256), m.classify(texts), m.score(pairs), m.rerank(query, documents)
    poolcli.run_file("embed", "in.jsonl", "out.parquet")  # what `poolcli embed` runs: parts, resume, error file
    poolcli.plan_file("embed", "in.jsonl", "out.parquet") # its --dry-run: plan, rows, schema; nothing loaded
    ds = poolcli.map_dataset(ds, "embed", num_workers=4)  # a stage of your own Ray Data pipeline

Heavy libraries (torch, transformers, pyarrow) are imported on first use, so importing poolcli is instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poolcli.version import __version__

__all__ = [
    "Model",
    "Result",
    "__version__",
    "classify",
    "embed",
    "load",
    "map_dataset",
    "plan_file",
    "rerank",
    "run_file",
    "score",
    "token_classify",
    "token_embed",
]

if TYPE_CHECKING:
    from poolcli.drivers.api import (
        Model,
        Result,
        classify,
        embed,
        load,
        plan_file,
        rerank,
        run_file,
        score,
        token_classify,
        token_embed,
    )
    from poolcli.drivers.ray_stage import map_dataset


def __getattr__(name: str) -> Any:
    if name == "map_dataset":
        from poolcli.drivers.ray_stage import map_dataset

        return map_dataset
    if name in __all__ and name != "__version__":
        from poolcli.drivers import api

        return getattr(api, name)
    raise AttributeError(f"module 'poolcli' has no attribute {name!r}")
