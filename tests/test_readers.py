"""Input readers: every format, and errors that point at the file and line."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from ipt.data.readers import expand_inputs, get_field, iter_records
from ipt.stage import BadInputError

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


@pytest.mark.parametrize(
    "kind", ["truncated.jsonl.gz", "not-gzip.jsonl.gz", "truncated.jsonl.zst", "truncated.parquet"]
)
def test_damaged_compressed_and_parquet_files_are_named(kind, tmp_path):
    docs = [{"text": f"document {i} " * 50} for i in range(200)]
    path = tmp_path / kind
    if kind.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(docs), path)
        whole = path.read_bytes()
    elif kind.endswith(".zst"):
        whole = zstandard.ZstdCompressor().compress(_jsonl(docs))
    else:
        whole = gzip.compress(_jsonl(docs))
    path.write_bytes(b"plain text, not gzip\n" if kind.startswith("not-") else whole[: len(whole) // 2])
    with pytest.raises(
        BadInputError, match=rf"^{path}: (cannot be decompressed after line \d+|not a readable parquet)"
    ):
        list(iter_records([path]))


def test_a_lone_surrogate_is_replaced_and_counted(tmp_path):
    """Valid JSON, invalid Unicode: `tokenizers` used to crash on it inside tokenize and synthesize."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "a \\ud800 b"}\n{"text": "pair \\ud83d\\ude00 ok"}\n')
    stats = Counter()
    texts = [d.record["text"] for d in iter_records([path], stats=stats)]
    assert texts == ["a \ufffd b", "pair \U0001f600 ok"] and stats["lone_surrogate_lines"] == 1
    assert all(t.encode("utf-8") for t in texts)


@pytest.mark.parametrize("stage", ["cook", "tokenize", "synthesize"])
def test_a_missing_input_is_one_line_and_exit_2_in_every_stage(stage, tmp_path, capsys):
    from ipt.cli import main

    args = [stage, f"input={tmp_path}/none.jsonl", f"output_dir={tmp_path}/out"]
    args += {"cook": [], "tokenize": ["tokenizer=mistral-v1"], "synthesize": ["engine=rules"]}[stage]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"ipt {stage}: error: input '{tmp_path}/none.jsonl' matches no file"
    assert not any("Traceback" in line for line in err) and not (tmp_path / "out").exists()
