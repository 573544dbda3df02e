"""`ipt tokenize`: round trip through real ArrayRecord shards, loss masks, bad input, multi-host split.

Shards are read back here with `array_record` + `numpy` only (the documented format), never
with ipt's own reader, so a mismatch between writer and documentation fails a test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordReader
from transformers import AutoTokenizer

from ipt.data.tokenize import TokenizeConfig, main, tokenize
from ipt.stage import BadInputError

CORPUS_GZ = Path(__file__).resolve().parents[1] / "ipt" / "assets" / "corpus.jsonl.gz"


def read_shard_dir(directory: Path) -> tuple[dict, list[tuple[np.ndarray, np.ndarray | None]]]:
    """The manifest and every record, decoded exactly as docs/data-format.md says."""
    manifest = json.loads((directory / "manifest.json").read_text())
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    has_mask = manifest["has_loss_mask"]
    docs = []
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        reader = ArrayRecordReader(str(path))
        records = reader.read(list(range(reader.num_records())))
        reader.close()
        assert len(records) == shard["num_docs"]
        for rec in records:
            n = len(rec) // (dtype.itemsize + has_mask)
            ids = np.frombuffer(rec, dtype, count=n)
            docs.append((ids, np.frombuffer(rec, np.uint8, offset=n * dtype.itemsize) if has_mask else None))
        assert sum(len(ids) for ids, _ in docs[-len(records) :]) == shard["num_tokens"]
    assert len(docs) == manifest["num_docs"]
    return manifest, docs


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run(tmp_path: Path, tokenizer_dir: Path, inputs, name: str = "out", **overrides) -> Path:
    out = tmp_path / name
    cfg = TokenizeConfig(
        input=inputs if isinstance(inputs, list) else str(inputs),
        output_dir=str(out),
        tokenizer=str(tokenizer_dir),
        progress=False,
        **{"num_workers": 2, **overrides},
    )
    tokenize(cfg)
    return out


def test_mistral_round_trip_matches_hf_tokenizer(tmp_path, mistral_tokenizer_dir, corpus_docs):
    out = run(tmp_path, mistral_tokenizer_dir, CORPUS_GZ, shard_chars=300_000)
    manifest, docs = read_shard_dir(out)
    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    assert manifest["tokenizer"]["bos_id"] == tok.bos_token_id == 1
    assert manifest["add_bos"] and manifest["add_eos"] and manifest["dtype"] == "uint16"
    assert len(manifest["shards"]) == 5
    assert len(docs) == len(corpus_docs)
    expected = tok([d["text"] for d in corpus_docs], add_special_tokens=False)["input_ids"]
    for (ids, mask), want, doc in zip(docs, expected, corpus_docs, strict=True):
        assert mask is None
        assert ids.tolist() == [tok.bos_token_id, *want, tok.eos_token_id]
        assert tok.decode(ids[1:-1].tolist()) == doc["text"]
    assert manifest["num_tokens"] == sum(len(ids) for ids, _ in docs)
    assert manifest["inputs"][0]["path"] == str(CORPUS_GZ)


def test_bpe_round_trip_from_parquet(tmp_path, bpe_tokenizer_dir, corpus_docs):
    pq.write_table(pa.Table.from_pylist(corpus_docs[:300]), tmp_path / "docs.parquet")
    out = run(tmp_path, bpe_tokenizer_dir, tmp_path / "docs.parquet", shard_chars=100_000)
    manifest, docs = read_shard_dir(out)
    tok = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    assert not manifest["add_bos"], "a byte-level BPE does not prepend bos to prompts"
    assert manifest["add_eos"]
    assert [tok.decode(ids[:-1].tolist()) for ids, _ in docs] == [d["text"] for d in corpus_docs[:300]]
    assert all(ids[-1] == tok.eos_token_id for ids, _ in docs)


def test_special_token_text_is_plain_text(tmp_path, mistral_tokenizer_dir):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "before </s> after <s>"}])
    _, [(ids, _)] = read_shard_dir(run(tmp_path, mistral_tokenizer_dir, src, add_bos=False, add_eos=False))
    assert 1 not in ids.tolist() and 2 not in ids.tolist()
    assert (
        AutoTokenizer.from_pretrained(mistral_tokenizer_dir).decode(ids.tolist()) == "before </s> after <s>"
    )


def test_loss_mask_from_segments(tmp_path, mistral_tokenizer_dir):
    rows = [
        {
            "text": [
                {"text": "Question: what is 2+2?\nAnswer:", "train": False},
                {"text": " four.", "train": True},
            ]
        },
        {"text": [{"text": "Read this.", "train": True}, {"text": " Then this", "train": False}]},
        {"text": "A plain document is trained on every token."},
        {
            "text": [
                {"text": "Q: x", "train": False},
                {"text": "yz", "train": True},
                {"text": "!", "train": False},
            ]
        },
    ]
    src = write_jsonl(tmp_path / "masked.jsonl", rows)
    manifest, docs = read_shard_dir(run(tmp_path, mistral_tokenizer_dir, src, loss_mask=True))
    assert manifest["has_loss_mask"]
    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    for row, (ids, mask) in zip(rows, docs, strict=True):
        segments = row["text"] if isinstance(row["text"], list) else [{"text": row["text"], "train": True}]
        joined = "".join(s["text"] for s in segments)
        enc = tok(joined, add_special_tokens=False, return_offsets_mapping=True)
        assert ids[1:-1].tolist() == enc["input_ids"], "segments tokenize as their joined text"
        assert tok.decode(ids[1:-1].tolist()) == joined
        char_train = np.concatenate([np.full(len(s["text"]), s["train"]) for s in segments])
        want = [int(char_train[s : max(e, s + 1)].any()) for s, e in enc["offset_mapping"]]
        assert mask[0] == 0, "bos is never trained"
        assert mask[1:-1].tolist() == want
        assert mask[-1] == segments[-1]["train"], "eos is trained iff the last segment is"
    ids, mask = docs[0]
    assert tok.decode(ids[mask == 1][:-1].tolist()).strip() == "four."


def test_segments_need_loss_mask_flag(tmp_path, mistral_tokenizer_dir):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": "ok"}, {"text": [{"text": "a", "train": True}]}])
    with pytest.raises(BadInputError, match=r"s.jsonl:2: .*loss_mask=true"):
        run(tmp_path, mistral_tokenizer_dir, src)


def test_malformed_line_stops_with_file_and_line_and_no_manifest(tmp_path, mistral_tokenizer_dir):
    src = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, '{"text": "broken', {"text": "also fine"}])
    with pytest.raises(BadInputError, match=r"bad.jsonl:2: not valid JSON"):
        run(tmp_path, mistral_tokenizer_dir, src)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_skip_bad_counts_lines_records_and_empty_docs(tmp_path, mistral_tokenizer_dir):
    rows = [
        {"text": "one"},
        '{"text": "broken',
        "[1, 2]",
        {"text": 7},
        {"text": [{"text": "no train flag"}]},
        {"text": "   \n"},
        {"text": ""},
        {"text": "two"},
    ]
    src = write_jsonl(tmp_path / "mixed.jsonl", rows)
    manifest, docs = read_shard_dir(run(tmp_path, mistral_tokenizer_dir, src, skip_bad=True, loss_mask=True))
    assert manifest["stats"] == {
        "empty_docs": 2,
        "bad_lines": 2,
        "bad_records": 2,
        "non_utf8_lines": 0,
        "lone_surrogate_lines": 0,
    }
    assert manifest["inputs"][0]["stats"] == manifest["stats"]
    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    assert [tok.decode(ids[1:-1].tolist()) for ids, _ in docs] == ["one", "two"]


def test_wrong_value_type_is_an_error_without_skip_bad(tmp_path, mistral_tokenizer_dir):
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "ok"}, {"text": None}])
    with pytest.raises(BadInputError, match=r"t.jsonl:2: field 'text' must be a string .* got NoneType"):
        run(tmp_path, mistral_tokenizer_dir, src)


def test_missing_text_field_names_field_and_found_keys(tmp_path, mistral_tokenizer_dir):
    src = write_jsonl(tmp_path / "k.jsonl", [{"body": "x", "id": 1}])
    with pytest.raises(BadInputError, match=r"k.jsonl:1: no field 'content'; the record has: body, id"):
        run(tmp_path, mistral_tokenizer_dir, src, text_field="content", skip_bad=True)


def test_non_utf8_bytes_become_replacement_chars_and_are_counted(tmp_path, mistral_tokenizer_dir):
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(b'{"text": "caf\xe9 au lait"}\n{"text": "clean"}\n')
    manifest, docs = read_shard_dir(run(tmp_path, mistral_tokenizer_dir, src))
    assert manifest["stats"]["non_utf8_lines"] == 1
    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    assert tok.decode(docs[0][0][1:-1].tolist()) == "caf\ufffd au lait"


def _split_corpus(tmp_path: Path, corpus_docs: list[dict], n_files: int) -> list[str]:
    paths = []
    for i in range(n_files):
        paths.append(str(write_jsonl(tmp_path / f"part-{i}.jsonl", corpus_docs[i::n_files][:150])))
    return paths


def _dir_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_hosts_splitting_the_files_give_the_single_run_output(tmp_path, bpe_tokenizer_dir, corpus_docs):
    inputs = _split_corpus(tmp_path, corpus_docs, 3)
    single = run(tmp_path, bpe_tokenizer_dir, inputs, name="single", shard_chars=40_000)
    split = tmp_path / "split"
    for k in (1, 0):
        cfg = TokenizeConfig(
            input=inputs, output_dir=str(split), tokenizer=str(bpe_tokenizer_dir), shard_chars=40_000,
            shard=k, num_shards=2, num_workers=1, progress=False,
        )  # fmt: skip
        manifest = tokenize(cfg)
        assert (manifest is None) == (k == 1), "only the host finishing the last file writes the manifest"
    assert _dir_bytes(split) == _dir_bytes(single)
    assert len(json.loads((single / "manifest.json").read_text())["shards"]) > 3


def test_rerun_skips_complete_work_and_redoes_a_lost_shard(tmp_path, bpe_tokenizer_dir, corpus_docs):
    inputs = _split_corpus(tmp_path, corpus_docs, 2)
    out = run(tmp_path, bpe_tokenizer_dir, inputs, shard_chars=40_000)
    before = _dir_bytes(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    lost = sorted(p for p in out.glob("shard-00001-*.array_record"))[1]
    lost.unlink()
    (out / f".{lost.name}.999.tmp").write_bytes(b"stale half-written shard")
    run(tmp_path, bpe_tokenizer_dir, inputs, shard_chars=40_000)
    assert _dir_bytes(out) == before
    assert not list(out.glob(".*.tmp"))
    assert {n: (out / n).stat().st_mtime_ns for n in mtimes if n != lost.name} == {
        n: t for n, t in mtimes.items() if n != lost.name
    }, "complete shards are not rewritten"


def test_resuming_with_a_different_config_is_refused(tmp_path, bpe_tokenizer_dir, corpus_docs):
    inputs = _split_corpus(tmp_path, corpus_docs, 1)
    run(tmp_path, bpe_tokenizer_dir, inputs, shard_chars=40_000)
    with pytest.raises(
        BadInputError, match=r"holds an `ipt tokenize` run that differs \(config: .*shard_chars"
    ):
        run(tmp_path, bpe_tokenizer_dir, inputs, shard_chars=50_000)
    run(tmp_path, bpe_tokenizer_dir, inputs, shard_chars=40_000, num_workers=1)  # host-only keys may change


def test_cli_help_lists_keys_and_errors_exit_nonzero(tmp_path, capsys, mistral_tokenizer_dir):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for key in (
        "input:",
        "output_dir:",
        "tokenizer:",
        "text_field: str = 'text'",
        "shard_chars:",
        "skip_bad:",
    ):
        assert key in help_text
    assert main([f"input={tmp_path}/none.jsonl", f"output_dir={tmp_path}/o", "tokenizer=x"]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert main(["inptu=a.jsonl"]) == 2
    assert "did you mean `input`" in capsys.readouterr().err


def test_txt_files_are_whole_documents_whatever_the_text_field(tmp_path, mistral_tokenizer_dir):
    (tmp_path / "a.txt").write_text("First line.\nSecond line.\n")
    src = write_jsonl(tmp_path / "b.jsonl", [{"content": "from jsonl"}])
    out = run(tmp_path, mistral_tokenizer_dir, [str(tmp_path / "a.txt"), str(src)], text_field="content")
    manifest, docs = read_shard_dir(out)
    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    assert [tok.decode(ids[1:-1].tolist()) for ids, _ in docs] == [
        "First line.\nSecond line.\n",
        "from jsonl",
    ]
    assert [s["file"] for s in manifest["shards"]] == [
        "shard-00000-00000.array_record",
        "shard-00001-00000.array_record",
    ]


def test_an_unknown_tokenizer_name_fails_at_once_offline(tmp_path, capsys):
    """It used to retry the hub for about a minute before an OSError."""
    from ipt.data.tokenizer import TokenizerNotFoundError, load_tokenizer

    with pytest.raises(TokenizerNotFoundError, match="neither a local directory, a built-in name"):
        load_tokenizer("no-such-org/no-such-tokenizer")
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    code = main([f"input={tmp_path / 'x.jsonl'}", f"output_dir={tmp_path / 'out'}", "tokenizer=no-such/tok"])
    assert code != 0 and "no-such/tok" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
