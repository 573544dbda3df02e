"""`ipt data inspect`: the summary, decoded records (with untrained spans marked) and checksums."""

from __future__ import annotations

import json
import re

from ipt.data.inspect import main
from ipt.data.shard_writer import file_sha256
from ipt.data.tokenize import TokenizeConfig, tokenize


def _tokenize(tmp_path, tokenizer_dir, rows, **overrides):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = TokenizeConfig(
        input=str(src),
        output_dir=str(out),
        tokenizer=str(tokenizer_dir),
        num_workers=1,
        progress=False,
        **overrides,
    )
    tokenize(cfg)
    return out


def test_summary_and_decoded_records(tmp_path, capsys, mistral_tokenizer_dir, corpus_docs):
    out = _tokenize(
        tmp_path, mistral_tokenizer_dir, [{"text": d["text"]} for d in corpus_docs[:5]] + [{"text": ""}]
    )
    assert main([str(out), "-n", "2", "--max-chars", "100000", "--verify"]) == 0
    shown = capsys.readouterr().out
    assert f"tokenizer   {mistral_tokenizer_dir}  vocab 32000" in shown
    assert "5 docs" in shown and "1 shards" in shown and "empty_docs 1" in shown
    assert "verified    1 shards (size, sha256, records, tokens): ok" in shown
    assert f"<s> {corpus_docs[0]['text']}</s>" in shown
    assert f"<s> {corpus_docs[1]['text']}</s>" in shown
    assert corpus_docs[2]["text"] not in shown


def test_untrained_spans_are_marked(tmp_path, capsys, mistral_tokenizer_dir):
    segments = [{"text": "Question: why?", "train": False}, {"text": " Because.", "train": True}]
    out = _tokenize(tmp_path, mistral_tokenizer_dir, [{"text": segments}], loss_mask=True)
    assert main([str(out), "-n", "1"]) == 0
    shown = capsys.readouterr().out
    assert "8 tokens  trained 3/8" in shown  # "▁Because", "." and eos
    assert "⟦<s> Question: why?⟧Because.</s>" in shown


def test_changed_shard_fails_verification(tmp_path, capsys, mistral_tokenizer_dir):
    out = _tokenize(tmp_path, mistral_tokenizer_dir, [{"text": "some text"}])
    shard = next(out.glob("shard-*.array_record"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    expected = json.loads((out / "manifest.json").read_text())["shards"][0]["sha256"]
    assert main([str(out), "-n", "0", "--verify"]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: sha256 {file_sha256(shard)}, but manifest.json says {expected}" in err


def _edit_manifest(directory, **shard0):
    """Add `shard0`'s values to the first shard's counts and to the totals, keeping them consistent."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, extra in shard0.items():
        manifest["shards"][0][key] += extra
        manifest[key] += extra
    path.write_text(json.dumps(manifest))


def test_counts_that_disagree_with_the_records_fail_verification(tmp_path, capsys, mistral_tokenizer_dir):
    out = _tokenize(tmp_path, mistral_tokenizer_dir, [{"text": "one document"}, {"text": "and another"}])
    tokens = json.loads((out / "manifest.json").read_text())["num_tokens"]
    _edit_manifest(out, num_tokens=7, num_docs=1)
    assert main([str(out), "-n", "0", "--verify"]) == 2
    shown, err = capsys.readouterr()
    shard = next(out.glob("shard-*.array_record"))
    assert "verified    1 shards (size, sha256, records, tokens): 2 problems" in shown
    assert f"{shard}: holds 2 records, but manifest.json says 3" in err
    assert f"{shard}: holds {tokens} tokens, but manifest.json says {tokens + 7}" in err


def test_totals_that_disagree_with_the_shards_fail_verification(tmp_path, capsys, mistral_tokenizer_dir):
    out = _tokenize(tmp_path, mistral_tokenizer_dir, [{"text": "one document"}])
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "num_tokens": manifest["num_tokens"] + 1}))
    assert main([str(out), "-n", "0", "--verify"]) == 2
    n = manifest["num_tokens"]
    assert (
        f"manifest.json: num_tokens is {n + 1:,}, but its shards add up to {n:,}" in capsys.readouterr().err
    )


def test_a_damaged_record_is_named_by_verify_and_by_decoding(
    tmp_path, capsys, mistral_tokenizer_dir, corpus_docs
):
    out = _tokenize(tmp_path, mistral_tokenizer_dir, [{"text": d["text"]} for d in corpus_docs[:60]])
    shard = next(out.glob("shard-*.array_record"))
    data = bytearray(shard.read_bytes())
    data[10_100:10_104] = bytes(b ^ 0xFF for b in data[10_100:10_104])
    shard.write_bytes(bytes(data))
    assert main([str(out), "-n", "0", "--verify"]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: sha256 " in err
    assert re.search(
        rf"{re.escape(str(shard))}: record \d+ \(0-based\) cannot be read \(.*hash mismatch", err
    )
    assert main([str(out), "-n", "60"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(r"record \d+ \(0-based\) cannot be read", err)


def test_not_a_shard_directory(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
