"""Hostile and unlucky inputs, through the real command line (in-process), for every reader.

The contract checked on every case: an exit code from the documented set, no traceback, every input row exactly
once in the output or the error file, each good row's vector equal to its text embedded alone under its own id,
error rows with the right row and line numbers and codes, and the input files byte-identical after the run.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CliResult, cli, cosine_rows, read_vectors

DOCUMENTED_CODES = {0, 64, 65, 66, 70, 73, 74, 75, 78}
MAX_LEN = 128  # the tiny BERT's limit


@dataclass
class Exp:
    """What one input row must become: a good row (`text`) or an error row (`code`)."""

    id: Any
    text: str | None = None
    code: str | None = None
    line: int | None = None
    keep: Any = None


class Reference:
    """The tiny BERT through plain transformers, one text at a time, MEAN pooled and normalized."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        for text in texts:
            if text not in self.cache:
                enc = self.tok(text, return_tensors="pt", truncation=True, max_length=MAX_LEN)
                with torch.inference_mode():
                    h = self.model(**enc).last_hidden_state[0].mean(0)
                self.cache[text] = torch.nn.functional.normalize(h, dim=-1).numpy()
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 32), np.float32)


@pytest.fixture(scope="module")
def reference(tiny_bert: Path) -> Reference:
    return Reference(tiny_bert)


def _snapshot(paths: list[Path]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for p in paths:
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            files[str(f)] = f.read_bytes()
    return files


def embed(
    model: Path, args: list[str | Path], *, inputs: list[Path], stdin: bytes | None = None
) -> tuple[CliResult, dict[str, bytes]]:
    before = _snapshot(inputs)
    res = cli("embed", *args, "-m", model, "--pooling-type", "MEAN", stdin=stdin)
    assert res.returncode in DOCUMENTED_CODES, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert _snapshot(inputs) == before, "an input changed"
    return res, before


def check_rows(
    res: CliResult, out: Path, errs: Path, expected: list[Exp], reference: Reference, keep: str | None = None
) -> None:
    """Every input row exactly once; good rows under their own ids with their own vectors; error rows exact."""
    assert res.returncode == 0, res.stderr
    good = [e for e in expected if e.code is None]
    if out.exists():
        ids, vectors = read_vectors(out)
        table = pq.read_table(out)
    else:
        ids, vectors, table = [], np.zeros((0, 32), np.float32), None
    assert ids == [e.id for e in good]
    if good:
        ref = reference([e.text for e in good if e.text is not None])
        assert cosine_rows(vectors, ref).min() >= 0.99999
        assert np.abs(vectors - ref).max() < 1e-4
        if keep is not None:
            assert table is not None
            assert table.column(keep).to_pylist() == [e.keep for e in good]
    rows = [json.loads(line) for line in errs.read_text().splitlines()] if errs.exists() else []
    bad = {i: e for i, e in enumerate(expected) if e.code is not None}
    assert sorted(r["row"] for r in rows) == sorted(bad), rows
    for r in rows:
        want = bad[r["row"]]
        assert (r["code"], r["id"]) == (want.code, want.id), (r, want)
        if want.line is not None:
            assert r.get("line") == want.line, (r, want)
        assert r["message"]


def _texts(exclude: str) -> st.SearchStrategy[str]:
    alphabet = st.one_of(
        st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"], exclude_characters=exclude),
        st.sampled_from([c for c in ",\"' é中🙂\x00" if c not in exclude]),
    )
    return st.text(alphabet, min_size=1, max_size=25).filter(lambda s: s.strip() != "")


SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
WINDOWS = st.integers(1, 4)


def _run_opts(window: int) -> list[str]:
    # torch: these tests are about readers; tests/cli/test_backends.py checks OpenVINO's bodies
    return ["--window-rows", str(window), "--part-rows", str(window * 2), "--backend", "torch"]


# -- CSV / TSV -------------------------------------------------------------------------------------------------

CSV_KINDS = ["good", "multiline", "bad_text", "bad_id", "bad_keep", "empty", "more", "fewer", "blank"]


def render_csv(
    kinds: list[tuple[str, str]], *, tsv: bool, with_id: bool, crlf: bool, bom: bool
) -> tuple[bytes, list[Exp]]:
    sep, eol = ("\t" if tsv else ","), ("\r\n" if crlf else "\n")
    cols = (["id"] if with_id else []) + ["text", "extra"]

    def field(value: str | bytes) -> bytes:
        raw = value if isinstance(value, bytes) else value.encode()
        if tsv:
            return raw
        return b'"' + raw.replace(b'"', b'""') + b'"'

    out = [("\ufeff" if bom else "").encode() + sep.join(cols).encode() + eol.encode()]
    expected: list[Exp] = []
    line = 2
    for kind, text in kinds:
        if kind == "blank":
            out.append(eol.encode())
            line += 1
            continue
        row = len(expected)
        rid: str | bytes = f"r{row}"
        extra: str | bytes = f"k{row}"
        value: str | bytes = text
        exp = Exp(id=rid if with_id else row, text=text, line=line, keep=extra)
        if kind == "multiline" and not tsv:
            value = text + "\n" + text
            exp.text = value
        if kind == "bad_text":
            value, exp.code, exp.text = b"ab\xff" + text.encode(), "INVALID_UTF8", None
        if kind == "bad_id" and with_id:
            rid, exp.code, exp.id, exp.text = b"\xfe1", "INVALID_UTF8", None, None
        if kind == "bad_keep":
            extra, exp.code, exp.text = b"\xc3\x28", "INVALID_UTF8", None
        if kind == "empty":
            value, exp.code, exp.text = "  ", "EMPTY_TEXT", None
        fields = ([field(rid)] if with_id else []) + [field(value), field(extra)]
        if kind == "more":
            fields.append(field("surplus"))
        if kind == "fewer":
            fields = fields[:-1]
        if kind in ("more", "fewer"):
            exp.code, exp.text = "MALFORMED_ROW", None
            if with_id:
                exp.id = None
        out.append(sep.encode().join(fields) + eol.encode())
        line += 1 + (value.count("\n") if isinstance(value, str) else 0)
        expected.append(exp)
    return b"".join(out), expected


@SETTINGS
@given(
    kinds=st.lists(st.tuples(st.sampled_from(CSV_KINDS), _texts("\r\t\n")), max_size=14),
    tsv=st.booleans(),
    with_id=st.booleans(),
    crlf=st.booleans(),
    bom=st.booleans(),
    window=WINDOWS,
)
def test_csv_and_tsv(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bert: Path,
    reference: Reference,
    kinds: list[tuple[str, str]],
    tsv: bool,
    with_id: bool,
    crlf: bool,
    bom: bool,
    window: int,
) -> None:
    d = tmp_path_factory.mktemp("csv")
    data, expected = render_csv(kinds, tsv=tsv, with_id=with_id, crlf=crlf, bom=bom)
    src = d / ("in.tsv" if tsv else "in.csv")
    src.write_bytes(data)
    out, errs = d / "out.parquet", d / "errs.jsonl"
    res, _ = embed(
        tiny_bert, [src, "-o", out, "--errors", errs, "--keep-columns", "extra", *_run_opts(window)], inputs=[src]
    )
    check_rows(res, out, errs, expected, reference, keep="extra")


# -- JSONL, JSONL.gz, stdin ------------------------------------------------------------------------------------

JSONL_KINDS = [
    "good",
    "dup_key",
    "escaped_nul",
    "bad_utf8",
    "raw_nul",
    "invalid",
    "deep",
    "not_object",
    "missing",
    "wrong_type",
    "empty",
    "bad_id",
    "blank",
]


def render_jsonl(kinds: list[tuple[str, str]], *, with_id: bool, crlf: bool, bom: bool) -> tuple[bytes, list[Exp]]:
    eol = b"\r\n" if crlf else b"\n"
    lines: list[bytes] = []
    expected: list[Exp] = []
    for kind, text in kinds:
        if kind == "blank":
            lines.append(b"   ")
            continue
        row = len(expected)
        rid: Any = f"r{row}" if with_id else row
        obj: dict[str, Any] = {"id": rid} if with_id else {}
        exp = Exp(id=rid, text=text, line=len(lines) + 1, keep=f"k{row}")
        obj |= {"text": text, "extra": f"k{row}"}
        raw = json.dumps(obj, ensure_ascii=False).encode()
        unreadable_id = None if with_id else row
        if kind == "dup_key":
            raw = raw[:-1] + b', "text": ' + json.dumps(text + " again").encode() + b"}"
            exp.text = text + " again"
        elif kind == "escaped_nul":
            exp.text = text + "\x00"
            raw = json.dumps(obj | {"text": exp.text}).encode()
        elif kind == "bad_utf8":
            raw = raw[:-1] + b', "note": "\xff"}'
            exp.code, exp.id = "INVALID_UTF8", unreadable_id
        elif kind == "raw_nul":
            raw = raw[:-2] + b'\x00"}'
            exp.code, exp.id = "INVALID_JSON", unreadable_id
        elif kind == "invalid":
            raw = raw[:-1]
            exp.code, exp.id = "INVALID_JSON", unreadable_id
        elif kind == "deep":
            raw = b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}"
            exp.code, exp.id = "INVALID_JSON", unreadable_id
        elif kind == "not_object":
            raw = b"[" + raw + b"]"
            exp.code, exp.id = "NOT_OBJECT", unreadable_id
        elif kind == "missing":
            raw = json.dumps({k: v for k, v in obj.items() if k != "text"}).encode()
            exp.code = "MISSING_FIELD"
        elif kind == "wrong_type":
            raw = json.dumps(obj | {"text": [text]}).encode()
            exp.code = "WRONG_TYPE"
        elif kind == "empty":
            raw = json.dumps(obj | {"text": " \t "}).encode()
            exp.code = "EMPTY_TEXT"
        elif kind == "bad_id" and with_id:
            raw = json.dumps(obj | {"id": True}).encode()
            exp.code, exp.id = "WRONG_TYPE", None
        if exp.code is not None:
            exp.text = None
        lines.append(raw)
        expected.append(exp)
    data = eol.join(lines) + (eol if lines else b"")
    return (b"\xef\xbb\xbf" if bom else b"") + data, expected


@SETTINGS
@given(
    kinds=st.lists(st.tuples(st.sampled_from(JSONL_KINDS), _texts("")), max_size=14),
    with_id=st.booleans(),
    crlf=st.booleans(),
    bom=st.booleans(),
    how=st.sampled_from(["file", "gz", "stdin"]),
    window=WINDOWS,
)
def test_jsonl_gz_and_stdin(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bert: Path,
    reference: Reference,
    kinds: list[tuple[str, str]],
    with_id: bool,
    crlf: bool,
    bom: bool,
    how: str,
    window: int,
) -> None:
    d = tmp_path_factory.mktemp("jsonl")
    data, expected = render_jsonl(kinds, with_id=with_id, crlf=crlf, bom=bom and how != "stdin")
    out, errs = d / "out.parquet", d / "errs.jsonl"
    opts: list[str | Path] = ["-o", out, "--errors", errs, "--keep-columns", "extra", *_run_opts(window)]
    opts += ["--id-field", "id"] if with_id else []
    if how == "stdin":
        res, _ = embed(tiny_bert, ["-", *opts], inputs=[], stdin=data)
    else:
        src = d / ("in.jsonl.gz" if how == "gz" else "in.jsonl")
        src.write_bytes(gzip.compress(data) if how == "gz" else data)
        res, _ = embed(tiny_bert, [src, *opts], inputs=[src])
    check_rows(res, out, errs, expected, reference, keep="extra")


# -- Parquet: a file, a directory, a glob -------------------------------------------------------------------------

PARQUET_KINDS = ["good", "bad_text", "bad_keep", "null_text", "empty", "null_id"]


def _strings(values: list[str | bytes | None]) -> pa.Array:
    """A string column that may hold bytes that are not UTF-8 (as a damaged file would)."""
    raw = pa.array([v.encode() if isinstance(v, str) else v for v in values], pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), null_count=raw.null_count)


def render_parquet(kinds: list[tuple[str, str]], d: Path, *, files: int, group: int) -> list[Exp]:
    ids: list[int | None] = []
    texts: list[str | bytes | None] = []
    extras: list[str | bytes | None] = []
    expected: list[Exp] = []
    for row, (kind, text) in enumerate(kinds):
        exp = Exp(id=row * 10, text=text, keep=f"k{row}")
        rid: int | None = row * 10
        value: str | bytes | None = text
        extra: str | bytes | None = f"k{row}"
        if kind == "bad_text":
            value, exp.code = b"x\xff", "INVALID_UTF8"
        elif kind == "bad_keep":
            extra, exp.code = b"\xe2\x82", "INVALID_UTF8"
        elif kind == "null_text":
            value, exp.code = None, "MISSING_FIELD"
        elif kind == "empty":
            value, exp.code = "", "EMPTY_TEXT"
        elif kind == "null_id":
            rid, exp.code, exp.id = None, "MISSING_FIELD", None
        if exp.code is not None:
            exp.text = None
        ids.append(rid)
        texts.append(value)
        extras.append(extra)
        expected.append(exp)
    d.mkdir(parents=True, exist_ok=True)
    cuts = np.array_split(np.arange(len(kinds)), files)
    for k, idx in enumerate(cuts):
        table = pa.table(
            {
                "id": pa.array([ids[i] for i in idx], pa.int64()),
                "text": _strings([texts[i] for i in idx]),
                "extra": _strings([extras[i] for i in idx]),
            }
        )
        pq.write_table(table, d / f"f{k}.parquet", row_group_size=group)
    return expected


@SETTINGS
@given(
    kinds=st.lists(st.tuples(st.sampled_from(PARQUET_KINDS), _texts("")), min_size=1, max_size=14),
    files=st.integers(1, 3),
    group=st.integers(1, 5),
    how=st.sampled_from(["file", "dir", "glob"]),
    window=WINDOWS,
)
def test_parquet_file_dir_and_glob(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bert: Path,
    reference: Reference,
    kinds: list[tuple[str, str]],
    files: int,
    group: int,
    how: str,
    window: int,
) -> None:
    d = tmp_path_factory.mktemp("pq")
    if how == "file":
        files = 1
    expected = render_parquet(kinds, d / "in", files=files, group=group)
    src = {"file": d / "in" / "f0.parquet", "dir": d / "in", "glob": d / "in" / "f*.parquet"}[how]
    out, errs = d / "out.parquet", d / "errs.jsonl"
    res, _ = embed(
        tiny_bert,
        [src, "-o", out, "--errors", errs, "--keep-columns", "extra", *_run_opts(window)],
        inputs=[d / "in"],
    )
    check_rows(res, out, errs, expected, reference, keep="extra")


# -- TXT ----------------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    kinds=st.lists(st.tuples(st.sampled_from(["good", "bad_utf8", "blank", "nul"]), _texts("\r\n")), max_size=14),
    crlf=st.booleans(),
    window=WINDOWS,
)
def test_txt(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bert: Path,
    reference: Reference,
    kinds: list[tuple[str, str]],
    crlf: bool,
    window: int,
) -> None:
    d = tmp_path_factory.mktemp("txt")
    lines: list[bytes] = []
    expected: list[Exp] = []
    for row, (kind, text) in enumerate(kinds):
        exp = Exp(id=row, text=text, line=row + 1)
        if kind == "bad_utf8":
            lines.append(b"\xff" + text.encode())
            exp.code, exp.text = "INVALID_UTF8", None
        elif kind == "blank":
            lines.append(b" ")
            exp.code, exp.text = "EMPTY_TEXT", None
        elif kind == "nul":
            exp.text = "a\x00" + text
            lines.append(exp.text.encode())
        else:
            lines.append(text.encode())
        expected.append(exp)
    src = d / "in.txt"
    eol = b"\r\n" if crlf else b"\n"
    src.write_bytes(eol.join(lines) + (eol if lines else b""))
    out, errs = d / "out.parquet", d / "errs.jsonl"
    res, _ = embed(tiny_bert, [src, "-o", out, "--errors", errs, *_run_opts(window)], inputs=[src])
    check_rows(res, out, errs, expected, reference)


# -- fixed cases: the defects this module was written for -----------------------------------------------------------


def test_csv_malformed_rows_keep_every_row_number(tmp_path: Path, tiny_bert: Path, reference: Reference) -> None:
    """Every 7th row of 200 malformed: each good row's vector stays under its own row number."""
    texts = [f"row {i} says {'abcdefghij'[i % 10] * (1 + i % 5)}" for i in range(200)]
    lines = ["text"] + [f"{t},surplus" if i % 7 == 3 else t for i, t in enumerate(texts)]
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n")
    out, errs = tmp_path / "out.parquet", tmp_path / "errs.jsonl"
    res, _ = embed(tiny_bert, [src, "-o", out, "--errors", errs], inputs=[src])
    expected = [
        Exp(id=i, code="MALFORMED_ROW", line=i + 2) if i % 7 == 3 else Exp(id=i, text=t, line=i + 2)
        for i, t in enumerate(texts)
    ]
    check_rows(res, out, errs, expected, reference)


def test_empty_and_header_only_files(tmp_path: Path, tiny_bert: Path) -> None:
    for name, data, code in [
        ("empty.jsonl", b"", 0),
        ("empty.txt", b"", 0),
        ("empty.csv", b"", 65),
        ("empty.tsv", b"", 65),
        ("header.csv", b"id,text\n", 0),
        ("header.tsv", b"text\r\n", 0),
        ("blank.jsonl", b"\n\n  \n", 0),
        ("empty.parquet", b"", 65),
    ]:
        src = tmp_path / name
        src.write_bytes(data)
        out = tmp_path / f"{name}.out.parquet"
        res, _ = embed(tiny_bert, [src, "-o", out], inputs=[src])
        assert res.returncode == code, (name, res.stderr)
        if code:
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert name in res.stderr
            assert not out.exists()
        else:
            assert pq.read_table(out).num_rows == 0


def test_duplicate_columns_are_refused(tmp_path: Path, tiny_bert: Path) -> None:
    dup_csv = tmp_path / "dup.csv"
    dup_csv.write_text("text,text\na,b\n")
    dup_pq = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), dup_pq)
    for src in (dup_csv, dup_pq):
        res, _ = embed(tiny_bert, [src, "-o", tmp_path / "o.parquet"], inputs=[src])
        assert res.returncode == 65, res.stderr
        assert "2 columns named 'text'" in res.stderr
    # A duplicate the run does not read is no ambiguity.
    other = tmp_path / "other.csv"
    other.write_text("x,x,text\n1,2,hello\n")
    res, _ = embed(tiny_bert, [other, "-o", tmp_path / "o2.parquet"], inputs=[other])
    assert res.returncode == 0, res.stderr


def _corrupt_row_group(path: Path, rg: int) -> None:
    meta = pq.read_metadata(path)
    col = meta.row_group(rg).column(meta.schema.names.index("text"))
    start = col.dictionary_page_offset or col.data_page_offset
    with open(path, "r+b") as fh:
        fh.seek(start + 8)
        fh.write(b"\xff" * max(8, col.total_compressed_size - 16))


def test_corrupt_parquet_page_keeps_committed_parts(tmp_path: Path, tiny_bert: Path) -> None:
    src = tmp_path / "in.parquet"
    texts = [f"text number {i} " + "xyz" * i for i in range(12)]
    pq.write_table(pa.table({"text": texts}), src, row_group_size=4, compression="snappy")
    _corrupt_row_group(src, 2)
    out = tmp_path / "out"
    args: list[str | Path] = [src, "-o", f"{out}/", "--window-rows", "4", "--part-rows", "4"]
    res, _ = embed(tiny_bert, args, inputs=[src])
    assert res.returncode == 65, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("poolcli: error")]
    assert len(lines) == 1 and str(src) in lines[0] and "row group 2" in lines[0], res.stderr
    # The two parts before the damage are committed and stay; no _SUCCESS.
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert not (out / "_SUCCESS").exists()


def test_file_named_like_a_glob_is_read_as_itself(tmp_path: Path, tiny_bert: Path, reference: Reference) -> None:
    src = tmp_path / "in[1].jsonl"
    src.write_text('{"text": "bracketed name"}\n')
    decoy = tmp_path / "in1.jsonl"
    decoy.write_text('{"text": "the glob would match me"}\n')
    out, errs = tmp_path / "out.parquet", tmp_path / "e.jsonl"
    res, _ = embed(tiny_bert, [src, "-o", out, "--errors", errs], inputs=[src, decoy])
    check_rows(res, out, errs, [Exp(id=0, text="bracketed name")], reference)


def test_unreadable_inputs_are_exit_66_in_every_format(tmp_path: Path, tiny_bert: Path, monkeypatch: Any) -> None:
    import builtins

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "x"}\n')
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["x"]}), parquet)
    csv = tmp_path / "in.csv"
    csv.write_text("text\nx\n")
    locked = {str(p) for p in (jsonl, parquet, csv)}
    if os.geteuid() == 0:
        # Root reads anything whatever its mode; make open() answer as the kernel does for other users.
        real_open = builtins.open

        def denying_open(file: Any, *a: Any, **k: Any) -> Any:
            if str(file) in locked:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *a, **k)

        monkeypatch.setattr(builtins, "open", denying_open)
    else:
        for p in locked:
            os.chmod(p, 0)
    for src in (jsonl, parquet, csv):
        res = cli("embed", src, "-o", tmp_path / "o.parquet", "-m", tiny_bert)
        assert res.returncode == 66, (src, res.stderr)
        assert "Permission denied" in res.stderr and str(src) in res.stderr


# -- output paths never touch an input ------------------------------------------------------------------------------


@pytest.fixture
def jsonl_input(tmp_path: Path) -> Path:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "precious"}\n{"text": ""}\n')
    return src


def _refused(tiny_bert: Path, args: list[str | Path], inputs: list[Path], words: str) -> None:
    res, _ = embed(tiny_bert, args, inputs=inputs)
    assert res.returncode == 64, res.stderr
    assert words in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_errors_path_equal_to_the_input_is_refused(tmp_path: Path, tiny_bert: Path, jsonl_input: Path) -> None:
    _refused(tiny_bert, [jsonl_input, "-o", tmp_path / "o.parquet", "--errors", jsonl_input], [jsonl_input], "error")
    # The same file by another spelling: `..`, a symbolic link, a hard link.
    dotted = tmp_path / "sub" / ".." / "in.jsonl"
    (tmp_path / "sub").mkdir()
    _refused(tiny_bert, [jsonl_input, "-o", tmp_path / "o.parquet", "--errors", dotted], [jsonl_input], "error")
    link = tmp_path / "link.jsonl"
    link.symlink_to(jsonl_input)
    _refused(tiny_bert, [link, "-o", tmp_path / "o.parquet", "--errors", jsonl_input], [jsonl_input], "error")
    hard = tmp_path / "hard.jsonl"
    os.link(jsonl_input, hard)
    _refused(tiny_bert, [hard, "-o", tmp_path / "o.parquet", "--errors", jsonl_input], [jsonl_input], "error")


def test_input_at_the_default_error_path_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    src = tmp_path / "x.errors.jsonl"
    src.write_text('{"text": "precious"}\n{"text": ""}\n')
    _refused(tiny_bert, [src, "-o", tmp_path / "x.parquet"], [src], "error file")
    # Streaming to stdout still writes an error file.
    _refused(tiny_bert, [src, "-o", "-", "--errors", src], [src], "error file")


def test_output_over_an_input_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["precious"]}), src)
    _refused(tiny_bert, [src, "-o", src, "--overwrite"], [src], "is the output")
    _refused(tiny_bert, [src, "-o", f"{tmp_path}/", "--overwrite"], [src], "is the output")
    # Inside the hidden state of the output.
    state = tmp_path / ".o.parquet.poolcli" / "parts"
    state.mkdir(parents=True)
    inner = state / "part-00000.parquet"
    pq.write_table(pa.table({"text": ["precious"]}), inner)
    _refused(tiny_bert, [inner, "-o", tmp_path / "o.parquet"], [inner], "is the output")


def test_output_inside_an_input_directory_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    pq.write_table(pa.table({"text": ["precious"]}), d / "a.parquet")
    _refused(tiny_bert, [d, "-o", d / "out.parquet"], [d], "inside the input directory")
    _refused(tiny_bert, [d, "-o", f"{d}/"], [d], "is the output")
    _refused(tiny_bert, [d, "-o", tmp_path / "o.parquet", "--errors", d / "e.jsonl"], [d], "inside the input")


def test_error_file_must_not_be_the_output_or_inside_it(tmp_path: Path, tiny_bert: Path, jsonl_input: Path) -> None:
    out = tmp_path / "o.parquet"
    _refused(tiny_bert, [jsonl_input, "-o", out, "--errors", out], [jsonl_input], "the output itself")
    _refused(tiny_bert, [jsonl_input, "-o", f"{tmp_path}/ds/", "--errors", tmp_path / "ds" / "e.jsonl"], [], "inside")
    assert not (tmp_path / "ds").exists()
    _refused(tiny_bert, [jsonl_input, "-o", out, "--errors", tmp_path], [jsonl_input], "is a directory")


def test_output_over_a_model_file_is_refused(tmp_path: Path, tiny_bert: Path, jsonl_input: Path) -> None:
    weights = tiny_bert / "model.safetensors"
    _refused(tiny_bert, [jsonl_input, "-o", weights, "--overwrite"], [jsonl_input, tiny_bert], "is the output")


def test_default_error_path_beside_an_input_is_fine(tmp_path: Path, tiny_bert: Path, jsonl_input: Path) -> None:
    """The checks refuse collisions only: an ordinary run beside its input still works."""
    res, _ = embed(tiny_bert, [jsonl_input], inputs=[jsonl_input])
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "in.embed.parquet").is_file() and (tmp_path / "in.embed.errors.jsonl").is_file()
