"""Input readers: every format, and errors that point at the file and line."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from ipt.data.readers import BadInputError, expand_inputs, get_field, iter_records

DOCS = [{"text": "alpha"}, {"text": "beta \u00e9"}, {"text": "gamma"}]


def _jsonl(docs) -> bytes:
    return "".join(json.dumps(d) + "\n" for d in docs).encode()


def test_all_formats_read_the_same_documents(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(_jsonl(DOCS))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl(DOCS)))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(DOCS)))
    pq.write_table(pa.Table.from_pylist(DOCS), tmp_path / "d.parquet")
    files = expand_inputs(str(tmp_path / "*"))
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"]
    docs = list(iter_records(files))
    assert [d.record["text"] for d in docs] == [d["text"] for d in DOCS] * 4
    assert [d.line for d in docs[:3]] == [1, 2, 3]


def test_txt_is_one_document(tmp_path):
    (tmp_path / "x.txt").write_text("line one\nline two\n")
    [doc] = iter_records(expand_inputs([str(tmp_path / "x.txt")]))
    assert doc.record == {"text": "line one\nline two\n"}


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": broken\n[1, 2]\n{"text": "fine"}\n')
    with pytest.raises(BadInputError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_records([path]))
    stats = Counter()
    docs = list(iter_records([path], skip_bad=True, stats=stats))
    assert [d.line for d in docs] == [1, 4]
    assert stats["bad_lines"] == 2


def test_non_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    stats = Counter()
    [doc] = iter_records([path], stats=stats)
    assert doc.record["text"] == "caf\ufffd"
    assert stats["non_utf8_lines"] == 1


def test_missing_field_lists_keys(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"body": "x", "id": 1}\n')
    [doc] = iter_records([path])
    with pytest.raises(BadInputError, match=r"a.jsonl:1: no field 'text'; the record has: body, id"):
        get_field(doc, "text")


def test_unmatched_glob_and_unknown_suffix(tmp_path):
    with pytest.raises(BadInputError, match="matches no file"):
        expand_inputs(str(tmp_path / "*.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(BadInputError, match="unsupported file type"):
        expand_inputs(str(tmp_path / "x.csv"))
