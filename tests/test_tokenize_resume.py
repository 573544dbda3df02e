"""Kill `ipt tokenize` (SIGKILL to its process group, a real subprocess) mid-run, resume it, and
compare bytes with an uninterrupted run made with another number of workers."""

from __future__ import annotations

import json
import os
import sys

from stage_kill import kill_and_resume

from ipt.data.tokenize import STATE_DIR


def test_killed_and_resumed_run_is_byte_identical(tmp_path, bpe_tokenizer_dir, corpus_docs):
    inputs = []
    for i in range(3):
        path = tmp_path / f"part-{i}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in corpus_docs))
        inputs.append(str(path))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ipt.cli", "tokenize", f"input=[{','.join(inputs)}]", f"output_dir={out}"]
    cmd += [f"tokenizer={bpe_tokenizer_dir}", "shard_chars=20000", "progress=false"]
    result = kill_and_resume(
        [*cmd, "num_workers=1"],  # killed with one worker, resumed with all cores
        out,
        progress=lambda d: len(list((d / STATE_DIR).glob("shard-*.json"))),
        seed=0,
        env=dict(os.environ),
        clean_cmd=[*cmd, "num_workers=2"],
        resume_cmd=cmd,
    )
    assert 1 <= result.at_kill < result.total, "the kill left shards for the resumed run to write"
    assert result.resumed == result.clean  # shards, markers, manifest, run and completion records
    assert "manifest.json" in result.clean
    assert not result.temps, result.temps
