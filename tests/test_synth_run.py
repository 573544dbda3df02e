"""`ipt synthesize` driver: outputs, stats, sharding, resumption (with a real kill), input errors.

These runs use the rules engine (deterministic, CPU); the LM engines share the same driver.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from stage_kill import kill_and_resume

from ipt.stage.identity import RunChangedError
from ipt.synth.run import SynthesizeConfig, main, synthesize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, corpus_docs) -> Path:
    path = tmp_path_factory.mktemp("in") / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for doc in corpus_docs[:240]:
            f.write(json.dumps(doc) + "\n")
    return path


@pytest.fixture(autouse=True)
def _tokenizer_cache(mistral_tokenizer_dir):
    """Engines load `mistral-v1` through the same (test) cache as the fixture."""


def run(inp, out, **kw) -> dict:
    cfg = SynthesizeConfig(input=str(inp), output_dir=str(out), engine="rules", progress=False, **kw)
    return synthesize(cfg)


def collections(out: Path) -> list[str]:
    return [line for p in sorted(out.glob("chunk-*.jsonl")) for line in p.read_text().splitlines()]


def test_collections_and_stats(tmp_path, corpus_docs):
    inp = tmp_path / "in.jsonl"
    docs = [{"text": d["text"]} for d in corpus_docs[:10]]
    docs.insert(3, {"text": "   \n "})
    inp.write_text("".join(json.dumps(d) + "\n" for d in docs))
    stats = run(inp, tmp_path / "out", rounds=2, chunk_texts=100)
    lines = collections(tmp_path / "out")
    assert len(lines) == 5  # 10 non-empty texts, 2 rounds -> 5 chains
    seen = []
    for line in lines:
        coll = json.loads(line)
        assert len(coll) == 2
        for e in coll:
            assert set(e) == {"context", "QA_list", "inherit_from_prev", "followed_by_next"}
            assert all(set(p) == {"Q", "A"} for p in e["QA_list"])
            seen.append(e["context"])
        assert coll[0]["followed_by_next"] == coll[1]["inherit_from_prev"]
        assert not coll[0]["inherit_from_prev"] and not coll[1]["followed_by_next"]
    assert sorted(seen) == sorted(d["text"].strip() for d in docs if d["text"].strip())
    assert stats["input_records"] == 11 and stats["empty_texts"] == 1 and stats["texts"] == 10
    assert stats["pairs_per_text"] == stats["pairs"] / 10 > 3
    assert stats["collections"] == 5
    for key in ("parse_failures", "zero_pair_texts", "chains_broken_by_length", "long_texts_skipped"):
        assert key in stats
    on_disk = json.loads((tmp_path / "out" / "stats.shard-00000-of-00001.json").read_text())
    assert on_disk["pairs"] == stats["pairs"]


def test_shards_split_the_chunks_and_together_equal_one_run(tmp_path, corpus_file):
    whole = run(corpus_file, tmp_path / "one", chunk_texts=50)
    a = run(corpus_file, tmp_path / "split", chunk_texts=50, shard=0, num_shards=2)
    b = run(corpus_file, tmp_path / "split", chunk_texts=50, shard=1, num_shards=2)
    assert a["chunks_done_now"] == 3 and b["chunks_done_now"] == 2  # chunks 0,2,4 and 1,3
    assert a["texts"] + b["texts"] == whole["texts"] == 240
    for p in sorted((tmp_path / "one").glob("chunk-*")):
        assert (tmp_path / "split" / p.name).read_bytes() == p.read_bytes()


def test_restart_skips_finished_chunks_and_redoes_unfinished_ones(tmp_path, corpus_file):
    out = tmp_path / "out"
    run(corpus_file, out, chunk_texts=50)
    reference = {p.name: p.read_bytes() for p in out.glob("chunk-*")}
    # a crash after chunk 2's data was renamed but before its marker: data present, no marker
    (out / "chunk-000002.stats.json").unlink()
    (out / "chunk-000002.jsonl").write_text("partial garbage\n")
    (out / ".chunk-000003.jsonl.k2x9q1.tmp").write_text("a dead run's temporary file")
    again = run(corpus_file, out, chunk_texts=50)
    assert again["chunks_done_now"] == 1 and again["chunks_already_done"] == 4
    assert {p.name: p.read_bytes() for p in out.glob("chunk-*")} == reference
    assert not list(out.glob(".*.tmp"))  # the dead run's temp is cleared
    assert again["texts"] == 240  # totals include the chunks done by the first run


def test_refuses_to_mix_settings_in_one_output_dir(tmp_path, corpus_file):
    run(corpus_file, tmp_path / "out", chunk_texts=50)
    with pytest.raises(RunChangedError, match=r"rounds: 2 -> 3.*on_change=redo"):
        run(corpus_file, tmp_path / "out", chunk_texts=50, rounds=3)
    run(corpus_file, tmp_path / "fresh", chunk_texts=50, rounds=3)
    run(corpus_file, tmp_path / "out", chunk_texts=50, rounds=3, on_change="redo")
    assert _chunk_bytes(tmp_path / "out") == _chunk_bytes(tmp_path / "fresh")


def _chunk_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("chunk-*"))}


def test_long_texts_are_truncated_or_skipped_by_real_token_count(
    tmp_path, corpus_docs, mistral_tokenizer_dir
):
    from transformers import AutoTokenizer

    from ipt.synth import format as wire

    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:12]))
    long = sum(
        len(tok(wire.reading_part(d["text"].strip()), add_special_tokens=False)["input_ids"]) > 200
        for d in corpus_docs[:12]
    )
    assert 0 < long < 12
    kw = dict(max_model_len=300, max_new_tokens=100, chunk_texts=100)
    cut = run(inp, tmp_path / "cut", long_text="truncate", **kw)
    assert cut["long_texts_truncated"] == long and cut["texts"] == 12
    for line in collections(tmp_path / "cut"):
        for e in json.loads(line):
            assert len(tok(wire.reading_part(e["context"]), add_special_tokens=False)["input_ids"]) <= 200
    skip = run(inp, tmp_path / "skip", long_text="skip", **kw)
    assert skip["long_texts_skipped"] == long and skip["texts"] == 12 - long


def test_bad_input_names_file_and_line(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "A fine first document with enough words in it."}\n[1, 2]\n{"body": "x"}\n')
    assert main([f"input={inp}", f"output_dir={tmp_path / 'a'}", "engine=rules", "progress=false"]) == 2
    assert f"{inp}:2: expected a JSON object" in capsys.readouterr().err
    args = [f"input={inp}", f"output_dir={tmp_path / 'b'}", "engine=rules", "progress=false", "skip_bad=true"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{inp}:3: no field 'text'" in err and "body" in err
    assert main([f"input={inp}", "output_dir=x", "shard=2", "num_shards=2"]) == 2
    assert "shard=2 must be below num_shards=2" in capsys.readouterr().err


def test_terminated_and_restarted_equals_an_uninterrupted_run(tmp_path, corpus_file):
    """SIGTERM (a scheduler's stop) at a random chunk; kill -9 is in tests/test_stage_kill.py."""
    sig = signal.SIGTERM
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ipt.cli", "synthesize", f"input={corpus_file}", f"output_dir={out}"]
    result = kill_and_resume(
        [*cmd, "engine=rules", "chunk_texts=10", "progress=false"],
        out,
        progress=lambda d: len(list(d.glob("chunk-*.stats.json"))),
        seed=sig,
        sig=sig,
        volatile=["stats.shard-*.json"],  # seconds, texts/s, chunks done before and now
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.total == 24 and 1 <= result.at_kill < 24
    stats = json.loads((out / "stats.shard-00000-of-00001.json").read_text())
    assert stats["chunks_already_done"] == result.at_kill
    lines = collections(out)
    assert len(lines) == len(set(lines)) == stats["collections"]  # none duplicated
    assert result.resumed == result.clean  # every chunk, marker and record, byte for byte
    assert not result.temps


def test_synthesis_with_the_rules_engine_never_imports_jax_or_vllm(tmp_path, corpus_docs):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(d) + "\n" for d in corpus_docs[:20]))
    code = (
        "import sys\n"
        "from ipt.synth.run import main\n"
        f"assert main(['input={inp}', 'output_dir={tmp_path / 'out'}', 'engine=rules', 'progress=false']) == 0\n"
        "print(sorted(m for m in ('jax', 'flax', 'vllm') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
