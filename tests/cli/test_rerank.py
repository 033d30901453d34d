"""`poolcli rerank`: ranking, top-n, ties, ids and indices, the three input forms, row errors, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, run_cli_process, summary_of, write_jsonl

DOCS = [
    "paris is the capital of france",
    "a quick brown fox jumps over the lazy dog",
    "hello world",
    "berlin is a city by a river",
    "paris is the capital of france",  # a duplicate of document 0: an exact tie
    "a vector is a row of numbers",
]


def _ce(model: Path, query: str, docs: list[str]) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    pairs = [(query, d) for d in docs]
    return np.asarray(CrossEncoder(str(model), device="cpu").predict(pairs), dtype=np.float64)


def _expected_order(scores: np.ndarray) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable: ties keep input order


def test_rerank_rows_rank_all_queries_with_top_n_and_ties(tiny_ce: Path, tmp_path: Path) -> None:
    rows = [
        {"id": "q1", "query": "capital of france", "documents": DOCS},
        {"id": "q2", "query": "fox", "documents": [{"id": "x", "text": DOCS[1]}, {"id": "y", "text": DOCS[3]}]},
        {"id": "q3", "query": "numbers", "documents": DOCS[::-1]},
    ]
    out = tmp_path / "r.parquet"
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    proc = run_cli("rerank", src, "-m", tiny_ce, "--top-n", "4", "--return-documents", "-o", out, "--verbose")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out).to_pylist()
    assert list(table[0]) == ["query_id", "rank", "index", "document_id", "relevance_score", "document"]
    by_query: dict[str, list[dict]] = {}
    for r in table:
        by_query.setdefault(r["query_id"], []).append(r)
    # q1: top 4 of 6, the tie between documents 0 and 4 kept in input order.
    s1 = _ce(tiny_ce, "capital of france", DOCS)
    assert s1[0] == s1[4]
    order = _expected_order(s1)[:4]
    assert [r["index"] for r in by_query["q1"]] == order
    assert [r["rank"] for r in by_query["q1"]] == [1, 2, 3, 4]
    assert [r["document_id"] for r in by_query["q1"]] == [str(i) for i in order]  # mixed ids -> strings
    assert np.abs(np.asarray([r["relevance_score"] for r in by_query["q1"]]) - s1[order]).max() < 1e-5
    assert [r["document"] for r in by_query["q1"]] == [DOCS[i] for i in order]
    if 0 in order and 4 in order:
        assert order.index(0) < order.index(4)
    # q2: documents given as {id, text}; fewer than top-n, so all of them.
    s2 = _ce(tiny_ce, "fox", [DOCS[1], DOCS[3]])
    ids2 = ["x", "y"]
    assert [r["document_id"] for r in by_query["q2"]] == [ids2[i] for i in _expected_order(s2)]
    assert len(by_query["q3"]) == 4
    # One stream for all queries: 6 + 2 + 6 pairs in few batches, not one batch list per query.
    assert summary_of(proc)["rows_in"] == 3


def test_rerank_query_flag_grouped_pairs_and_row_errors(tiny_ce: Path, tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)])
    out = tmp_path / "q.parquet"
    proc = run_cli("rerank", docs, "--query", "hello", "-m", tiny_ce, "-o", out)
    assert proc.returncode == 0, proc.stderr
    got = pq.read_table(out).to_pylist()
    s = _ce(tiny_ce, "hello", DOCS)
    assert [r["document_id"] for r in got] == [f"d{i}" for i in _expected_order(s)]
    assert {r["query_id"] for r in got} == {0}

    pairs = []
    for qid, query in (("A", "capital of france"), ("B", "fox")):
        for i, d in enumerate(DOCS[:4]):
            pairs.append({"id": f"{qid}{i}", "qid": qid, "query": query, "document": d})
    pairs.insert(2, {"id": "A-bad", "qid": "A", "query": "capital of france", "document": ""})
    grouped = tmp_path / "g.parquet"
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    proc = run_cli("rerank", src, "--group-by", "qid", "--top-n", "2", "-m", tiny_ce, "-o", grouped)
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(grouped).to_pylist()
    a = [r for r in rows if r["query_id"] == "A"]
    sa = _ce(tiny_ce, "capital of france", DOCS[:4])
    # The bad row sits at position 2 of group A's rows, so the good documents are at 0, 1, 3, 4.
    positions = [0, 1, 3, 4]
    assert [r["index"] for r in a] == [positions[i] for i in _expected_order(sa)[:2]]
    assert [r["document_id"] for r in a] == [f"A{i}" for i in _expected_order(sa)[:2]]
    errors = [json.loads(line) for line in (tmp_path / "g.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["code"] == "EMPTY_TEXT" and errors[0]["line"] == 3


def test_empty_query_costs_only_its_pairs(tiny_ce: Path, tmp_path: Path) -> None:
    rows = [
        {"id": 1, "query": "hello", "documents": DOCS[:3]},
        {"id": 2, "query": " ", "documents": DOCS[:3]},
        {"id": 3, "query": "fox", "documents": ["", DOCS[1]]},
        {"id": 4, "query": "river", "documents": "not a list"},
    ]
    out = tmp_path / "r.parquet"
    proc = run_cli("rerank", write_jsonl(tmp_path / "rows.jsonl", rows), "-m", tiny_ce, "-o", out)
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out).to_pylist()
    assert sorted({r["query_id"] for r in table}) == [1, 3]
    assert len([r for r in table if r["query_id"] == 1]) == 3
    assert [r["index"] for r in table if r["query_id"] == 3] == [1]
    errors = [json.loads(line) for line in (tmp_path / "r.errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["code"]) for e in errors] == [(2, "EMPTY_TEXT"), (3, "EMPTY_TEXT"), (4, "WRONG_TYPE")]
    assert errors[1]["message"].startswith("documents[0]: ")  # which of the query's documents


def test_bi_encoder_rerank_and_stdout(tmp_path: Path) -> None:
    rows = [{"id": "q", "query": "capital of france", "documents": DOCS}]
    proc = run_cli("rerank", write_jsonl(tmp_path / "rows.jsonl", rows), "-o", "-", "--top-n", "2")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["rank"] for r in got] == [1, 2]
    assert got[0]["index"] == 0 and got[1]["index"] == 4  # the exact duplicate ties for first, in input order
    assert got[0]["relevance_score"] == pytest.approx(got[1]["relevance_score"], abs=1e-6)


def test_rerank_resumes_after_a_crash_with_the_same_bytes(tiny_ce: Path, tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "query": f"query {i}", "documents": DOCS} for i in range(8)]
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    # part_rows 12 pairs = 2 queries of 6 documents per part: 4 parts, in dataset directories.
    assert run_cli("rerank", src, "-m", tiny_ce, "-o", f"{clean}/", "--part-rows", "12").returncode == 0
    proc = run_cli_process(
        "rerank",
        src,
        "-m",
        tiny_ce,
        "-o",
        f"{crashed}/",
        "--part-rows",
        "12",
        env={"POOLCLI_CRASHPOINT": "after_marker:2"},
    )
    assert proc.returncode != 0
    assert not (crashed / "_SUCCESS").exists()
    proc = run_cli("rerank", src, "-m", tiny_ce, "-o", f"{crashed}/", "--part-rows", "12")
    assert proc.returncode == 0, proc.stderr
    summary = summary_of(proc)
    assert summary["parts"] == 4 and summary["parts_skipped"] == 2
    for name in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "part-00003.parquet"):
        assert pq.read_table(crashed / name).equals(pq.read_table(clean / name))
    again = run_cli("rerank", src, "-m", tiny_ce, "-o", f"{crashed}/", "--part-rows", "12")
    assert summary_of(again)["status"] == "already complete"


def test_too_long_errors_name_the_side_at_fault(tiny_ce: Path, tiny_bert: Path, tmp_path: Path) -> None:
    long = " ".join(["hello world"] * 20)
    rows = [
        {"id": "q1", "query": long, "documents": ["hello", "world"]},
        {"id": "q2", "query": "fox", "documents": ["hello", long, "world"]},
    ]
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    limit = ("--truncate-prompt-tokens", "8", "--on-too-long", "error")

    def run(model: Path, name: str) -> tuple[list[dict], list[dict]]:
        out = tmp_path / f"{name}.parquet"
        proc = run_cli("rerank", src, "-m", model, "-o", out, *limit)
        assert proc.returncode == 0, proc.stderr
        errors = [json.loads(line) for line in (tmp_path / f"{name}.errors.jsonl").read_text().splitlines()]
        return pq.read_table(out).to_pylist(), errors

    # Bi-encoder: a too-long query is one error row for its ranking; a too-long document names its place.
    table, errors = run(tiny_bert, "bi")
    assert [(r["query_id"], r["index"]) for r in table if r["query_id"] == "q2"] in (
        [("q2", 0), ("q2", 2)],
        [("q2", 2), ("q2", 0)],
    )
    assert [(e["id"], e["line"], e["message"]) for e in errors] == [
        ("q1", 1, "the query is longer than 8 tokens"),
        ("q2", 2, "documents[1]: the document is longer than 8 tokens"),
    ]
    # Cross-encoder: the pair is what is too long, once per document.
    table, errors = run(tiny_ce, "ce")
    assert {r["query_id"] for r in table} == {"q2"}
    assert [(e["id"], e["message"]) for e in errors] == [
        ("q1", "documents[0]: the pair is longer than 8 tokens"),
        ("q1", "documents[1]: the pair is longer than 8 tokens"),
        ("q2", "documents[1]: the pair is longer than 8 tokens"),
    ]

    # score from two files: the error row points at the file and line of the side at fault.
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": "fox"}, {"text": long}])
    docs = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello"}, {"text": "world"}])
    out = tmp_path / "qd.parquet"
    proc = run_cli("score", queries, docs, "-m", tiny_bert, "-o", out, *limit)
    assert proc.returncode == 0, proc.stderr
    errors = [json.loads(line) for line in (tmp_path / "qd.errors.jsonl").read_text().splitlines()]
    assert [(Path(e["source"]).name, e["line"], e["message"]) for e in errors] == [
        ("q.jsonl", 2, "the query is longer than 8 tokens")
    ]


def test_top_n_minus_one_keeps_every_document(tiny_ce: Path, tmp_path: Path) -> None:
    """vLLM reads --top-n -1 as "all": the same table as 0; below -1 is a usage error."""
    src = write_jsonl(tmp_path / "rows.jsonl", [{"id": "q", "query": "capital of france", "documents": DOCS}])
    tables = []
    for n in ("0", "-1"):
        out = tmp_path / f"r{n}.parquet"
        proc = run_cli("rerank", src, "-m", tiny_ce, "--top-n", n, "-o", out)
        assert proc.returncode == 0, proc.stderr
        tables.append(pq.read_table(out).to_pylist())
    assert len(tables[1]) == len(DOCS) and tables[1] == tables[0]
    proc = run_cli("rerank", src, "-m", tiny_ce, "--top-n", "-2", "-o", tmp_path / "bad.parquet")
    assert proc.returncode == 64 and "--top-n must be 0 or -1 (all)" in proc.stderr
