"""kill -9 at a random point of synthesize, cook and tokenize, then a rerun: byte-identical to
an uninterrupted run (tests/stage_kill.py), no temp file left, no worker left running."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest
from stage_kill import kill_and_resume

from ipt.cook.run import CookConfig, cook
from ipt.data.tokenize import STATE_DIR, TokenizeConfig, tokenize
from ipt.synth.run import SynthesizeConfig, synthesize

CLI = [sys.executable, "-m", "ipt.cli"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory, corpus_docs, mistral_tokenizer_dir) -> Path:
    """240 documents of the built-in corpus as one .jsonl.gz."""
    path = tmp_path_factory.mktemp("kill-in") / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:240])
    return path


@pytest.fixture(scope="module")
def collections(tmp_path_factory, texts) -> Path:
    """A complete synthesize directory: 24 files of read collections, the input of cook."""
    out = tmp_path_factory.mktemp("kill-synth") / "synth"
    cfg = SynthesizeConfig(
        input=str(texts), output_dir=str(out), engine="rules", chunk_texts=10, progress=False
    )
    synthesize(cfg)
    return out


def test_synthesize(tmp_path, texts):
    out = tmp_path / "out"
    cmd = [*CLI, "synthesize", f"input={texts}", f"output_dir={out}", "engine=rules", "chunk_texts=10"]
    result = kill_and_resume(
        [*cmd, "progress=false"],
        out,
        progress=lambda d: len(list(d.glob("chunk-*.stats.json"))),
        seed=1,
        volatile=["stats.shard-*.json"],  # seconds, texts/s, chunks done before and now
        env=dict(os.environ),
    )
    assert result.total == 24 and 1 <= result.at_kill < 24
    assert result.resumed == result.clean
    assert not result.temps, result.temps
    assert "ipt_complete.json" in result.clean
    stats = json.loads((out / "stats.shard-00000-of-00001.json").read_text())
    assert stats["chunks_already_done"] == result.at_kill  # the rerun redid only the rest


def test_cook_with_two_workers(tmp_path, collections):
    out = tmp_path / "out"
    result = kill_and_resume(
        [*CLI, "cook", f"input={collections}", f"output_dir={out}", "num_workers=2"],
        out,
        progress=lambda d: len(list((d / ".cook").glob("*.done.json"))),
        seed=2,
        env=dict(os.environ),
    )
    assert result.total == 24 and 1 <= result.at_kill < 24
    assert result.resumed == result.clean
    assert not result.temps, result.temps
    assert "ipt_complete.json" in result.clean
    assert not result.survivors


def test_tokenize_with_workers_when_only_the_main_process_dies(tmp_path, corpus_docs, mistral_tokenizer_dir):
    """The kill takes the main process alone (an OOM kill): its workers must exit by themselves."""
    for i in range(3):
        part = corpus_docs[i * 300 : (i + 1) * 300]
        (tmp_path / f"part-{i}.jsonl").write_text(
            "".join(json.dumps({"text": d["text"]}) + "\n" for d in part)
        )
    out = tmp_path / "out"
    cmd = [*CLI, "tokenize", f"input={tmp_path / 'part-*.jsonl'}", f"output_dir={out}"]
    cmd += [f"tokenizer={mistral_tokenizer_dir}", "shard_chars=20000", "num_workers=2", "progress=false"]
    result = kill_and_resume(
        cmd,
        out,
        progress=lambda d: len(list((d / STATE_DIR).glob("shard-*.json"))),
        seed=3,
        env=dict(os.environ),
        main_only=True,
    )
    assert result.total >= 10 and 1 <= result.at_kill < result.total
    assert len(result.children) >= 2, "the workers were not running at the kill"
    assert not result.survivors, f"workers {result.survivors} outlived the killed tokenize"
    assert result.resumed == result.clean
    assert not result.temps, result.temps
    assert {"manifest.json", "ipt_complete.json"} <= set(result.clean)


@pytest.mark.parametrize("stage", ["cook", "tokenize"])
def test_a_rerun_clears_the_temps_a_killed_run_left_beside_its_markers(
    stage, tmp_path, texts, collections, mistral_tokenizer_dir
):
    """A kill inside the atomic write of a marker (cook: .cook/NAME.done.json) or of an input
    file's record (tokenize: .ipt-tokenize/input-NNNNN.json) leaves its temp behind; a rerun
    clears it."""
    out = tmp_path / "out"
    if stage == "cook":
        cfg = CookConfig(input=str(collections), output_dir=str(out))
        temp = out / ".cook" / ".chunk-000001.jsonl.done.json.k2x9q1.tmp"
    else:
        cfg = TokenizeConfig(
            input=str(texts), output_dir=str(out), tokenizer=str(mistral_tokenizer_dir), progress=False
        )
        temp = out / STATE_DIR / ".input-00000.json.k2x9q1.tmp"
    run = cook if stage == "cook" else tokenize
    run(cfg)
    temp.write_text("a killed run's half-written marker")
    run(cfg)  # a rerun with the same settings: every unit is done, stale temps are cleared
    assert not temp.exists()
