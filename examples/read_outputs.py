"""Reading poolcli's Parquet outputs: pyarrow, pandas, DuckDB, and LanceDB as a vector store.

    poolcli embed ../samples/sample.jsonl -o out/sample/
    python read_outputs.py out/sample/ "how do vectors capture meaning" -k 5

Each function below is a self-contained recipe; `main` runs them all on one output and prints the same top-k from
numpy (brute force), DuckDB and LanceDB.

- A dataset directory (`-o out/`) is finished when `out/_SUCCESS` exists. Read its part files (`part-*.parquet`);
  pyarrow.dataset and pandas skip `_SUCCESS`, `_MANIFEST.json`, `_errors.jsonl` and the hidden `.poolcli/` state by
  themselves (names starting with `_` or `.`). A single file (`-o x.parquet`) appears only when complete and reads
  the same way.
- `embedding` is `fixed_size_list<float32>[d]`, L2-normalised by default (so cosine = dot product). Parquet has no
  fixed-size list: pyarrow restores it from the file's Arrow schema, DuckDB reads `FLOAT[]` and needs a cast to
  `FLOAT[d]` for the `array_*` functions.
- The key-value metadata `poolcli` (JSON) says which model, pooling plan and options made the vectors. A query must
  be embedded the same way: same model, same `--dimensions`, and the query-side prompt for models that have one
  (`--prompt-name query` for E5-style models whose documents got `passage`).

Tested (tests/cli/test_examples.py) with pyarrow 26, pandas 3, duckdb 2.0 and lancedb 0.40 (`pip install -e
'.[test]'` has them all).
"""

# poolcli's own modules import numpy and pyarrow lazily (start-up time); a script that needs them anyway need not.
# ruff: noqa: TID253

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd


def parquet_files(out: Path) -> list[Path]:
    """The files that hold an output's rows: the part files of a finished dataset directory, or the file itself."""
    if out.is_dir():
        if not (out / "_SUCCESS").is_file():
            raise SystemExit(f"{out} has no _SUCCESS: the run that writes it has not finished (rerun it to resume)")
        return sorted(out.glob("part-*.parquet"))
    return [out]


def poolcli_metadata(out: Path) -> dict[str, Any]:
    """What made the vectors: poolcli version, task, model and weights sha256, pooling plan, dtype, input listing."""
    meta = pq.read_schema(parquet_files(out)[0]).metadata or {}
    return dict(json.loads(meta[b"poolcli"]))


def read_with_pyarrow(out: Path) -> tuple[list[Any], np.ndarray]:
    """ids and an [n, d] float32 matrix; the fixed-size list flattens without a copy per row."""
    table = ds.dataset(out, format="parquet").to_table(columns=["id", "embedding"])
    emb = table.column("embedding").combine_chunks()
    assert isinstance(emb, pa.FixedSizeListArray)
    vectors = emb.flatten().to_numpy().reshape(len(emb), emb.type.list_size)
    return table.column("id").to_pylist(), vectors


def read_with_pandas(out: Path) -> pd.DataFrame:
    """A DataFrame with one numpy array per row in `embedding`; `np.stack(df["embedding"])` makes the matrix."""
    import pandas as pd

    parquet_files(out)  # refuse an unfinished directory
    return pd.read_parquet(out)


def top_k_numpy(ids: list[Any], vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[Any, float]]:
    """Brute force cosine similarity in float64: the reference the others are checked against."""
    v = vectors.astype(np.float64)
    q = query.astype(np.float64)
    sims = (v @ q) / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
    order = np.argsort(-sims, kind="stable")[:k]
    return [(ids[i], float(sims[i])) for i in order]


def top_k_duckdb(out: Path, query: np.ndarray, k: int) -> list[tuple[Any, float]]:
    """`read_parquet` + `array_cosine_similarity`, straight over the part files (nothing is loaded first)."""
    import duckdb

    files = [str(p) for p in parquet_files(out)]
    dim = int(query.shape[0])
    sql = f"""
        SELECT id, array_cosine_similarity(embedding::FLOAT[{dim}], ?::FLOAT[{dim}]) AS similarity
        FROM read_parquet(?)
        ORDER BY similarity DESC, id
        LIMIT ?
    """
    rows = duckdb.connect().execute(sql, [query.astype(np.float32).tolist(), files, k]).fetchall()
    return [(i, float(s)) for i, s in rows]


def lancedb_table(out: Path, db_dir: Path, name: str = "docs") -> Any:
    """A LanceDB table made from poolcli's Parquet, streamed batch by batch (the column types carry over: LanceDB
    takes the `fixed_size_list<float32>[d]` column as a vector column as it is)."""
    import lancedb

    dataset = ds.dataset([str(p) for p in parquet_files(out)], format="parquet")
    db = lancedb.connect(str(db_dir))
    return db.create_table(name, data=dataset.scanner().to_reader(), mode="overwrite")


def top_k_lancedb(table: Any, query: np.ndarray, k: int) -> list[tuple[Any, float]]:
    """A nearest-neighbour query, cosine distance. Without an index this is an exact (flat) search; for millions
    of rows add one first: `table.create_index(metric="cosine", vector_column_name="embedding")`."""
    result = (
        table.search(query.astype(np.float32), vector_column_name="embedding")
        .distance_type("cosine")
        .select(["id", "_distance"])
        .limit(k)
        .to_arrow()
    )
    return [(i, 1.0 - float(d)) for i, d in zip(result["id"].to_pylist(), result["_distance"].to_pylist(), strict=True)]


def embed_query(text: str, out: Path, model: str | None, **options: Any) -> np.ndarray:
    """The query's vector with poolcli's Python API (the same engine as the command line: same numbers); `options`
    are the command line's, by name (`backend="torch"`, `prompt_name="query"`, ...)."""
    import poolcli

    plan = poolcli_metadata(out)["plan"]
    if plan.get("dimensions"):
        options.setdefault("dimensions", plan["dimensions"])
    vectors = poolcli.embed([text], model=model, **options)
    return np.asarray(vectors[0], dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="a poolcli embed output: a dataset directory or a Parquet file")
    parser.add_argument("query", nargs="?", help="a text to search for (default: the first row's own vector)")
    parser.add_argument("-k", type=int, default=5, help="how many neighbours (default 5)")
    parser.add_argument("--model", help="the model to embed the query with (default: poolcli's default model)")
    parser.add_argument("--backend", default="auto", help="poolcli's --backend for the query (default auto)")
    parser.add_argument("--lancedb", type=Path, help="where to create the LanceDB database (default: a temp dir)")
    args = parser.parse_args(argv)

    meta = poolcli_metadata(args.output)
    ids, vectors = read_with_pyarrow(args.output)
    print(f"pyarrow: {len(ids)} rows, {vectors.shape[1]} dimensions, model {meta['model']}, task {meta['task']}")
    df = read_with_pandas(args.output)
    print(f"pandas:  {len(df)} rows, columns {list(df.columns)}, first id {df['id'].iloc[0]!r}")

    if args.query is None:
        query, label = vectors[0], f"the vector of row {ids[0]!r}"
    else:
        query, label = embed_query(args.query, args.output, args.model, backend=args.backend), repr(args.query)
    print(f"top {args.k} by cosine similarity to {label}:")
    with tempfile.TemporaryDirectory() as tmp:
        table = lancedb_table(args.output, args.lancedb or Path(tmp))
        results = {
            "numpy": top_k_numpy(ids, vectors, query, args.k),
            "duckdb": top_k_duckdb(args.output, query, args.k),
            "lancedb": top_k_lancedb(table, query, args.k),
        }
    for name, hits in results.items():
        print(f"  {name:8} " + "  ".join(f"{i}:{s:.4f}" for i, s in hits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
