"""The Makefile's downstream step: each document's K nearest other documents by cosine similarity, with DuckDB.

    python neighbours.py out/docs/ out/neighbours.parquet -k 5

Reads the part files of a finished poolcli dataset directory (make runs this only once `out/docs/_SUCCESS` exists;
run by hand, it refuses a directory without it) and writes one row per (id, rank, neighbour, similarity), rank 1
the nearest, ties broken by the neighbour's id. The result is written under a hidden name, fsynced and renamed into
place, so a run killed half-way never leaves a file that make would take for finished.

Parquet has no fixed-size list, so DuckDB reads poolcli's `fixed_size_list<float32>[d]` column as `FLOAT[]`;
`array_cosine_similarity` wants `FLOAT[d]`, hence the cast. (`list_cosine_similarity` takes `FLOAT[]` as it is.)
The self-join compares every pair of documents: fine for thousands of rows; for millions, use a vector index
(LanceDB in read_outputs.py, or DuckDB's `vss` extension).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import duckdb


def neighbours(dataset: Path, target: Path, k: int) -> int:
    """Write the K nearest neighbours of every row of `dataset` to `target`; returns the number of rows written."""
    if not (dataset / "_SUCCESS").is_file():
        raise SystemExit(f"{dataset} has no _SUCCESS: the poolcli run that writes it has not finished")
    parts = str(dataset / "part-*.parquet")
    con = duckdb.connect()
    (dim,) = con.execute("SELECT max(len(embedding)) FROM read_parquet(?)", [parts]).fetchone() or (None,)
    if dim is None:
        raise SystemExit(f"{dataset} has no rows")
    tmp = target.with_name(f".{target.name}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    con.execute(
        f"""
        COPY (
            WITH docs AS (SELECT id, embedding::FLOAT[{int(dim)}] AS v FROM read_parquet(?))
            SELECT a.id,
                   row_number() OVER (PARTITION BY a.id ORDER BY array_cosine_similarity(a.v, b.v) DESC, b.id) AS rank,
                   b.id AS neighbour,
                   array_cosine_similarity(a.v, b.v) AS similarity
            FROM docs a JOIN docs b ON a.id <> b.id
            QUALIFY rank <= ?
            ORDER BY a.id, rank
        ) TO ? (FORMAT parquet)
        """,
        [parts, k, str(tmp)],
    )
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    (rows,) = con.execute("SELECT count(*) FROM read_parquet(?)", [str(target)]).fetchone() or (0,)
    return int(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a poolcli dataset directory (embed -o DIR/)")
    parser.add_argument("target", type=Path, help="the Parquet file to write")
    parser.add_argument("-k", type=int, default=5, help="neighbours per row (default 5)")
    args = parser.parse_args(argv)
    rows = neighbours(args.dataset, args.target, args.k)
    print(f"{args.target}: {rows} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
