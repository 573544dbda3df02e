"""`ipt data inspect`: the summary, decoded records (with untrained spans marked) and checksums."""

from __future__ import annotations

import json

from ipt.data.inspect import main
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
    assert "checksums   1/1 shards match" in shown
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
    assert main([str(out), "-n", "0", "--verify"]) == 1
    assert shard.name in capsys.readouterr().err


def test_not_a_shard_directory(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().err
