"""launch/slurm.py: the exact sbatch script (golden), its quoting run by a real bash, and refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "slurm_synth.sbatch"
GOLDEN_ARGS = [
    "--shards", "16", "--gpus-per-task", "2", "--partition", "gpu", "--account", "proj-42",
    "--time", "12:00:00", "--mem", "128G", "--max-parallel", "8",
    "--repo-dir", "/shared/my repos/ipt", "--venv", "/shared/venvs/ipt-vllm", "--",
    "engine=vllm", "input=/data/raw corpus/it's *.jsonl.zst", "output_dir=/shared/runs/synth",
    "vllm_kwargs={max_num_seqs: 512}",
]  # fmt: skip


def slurm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/slurm.py", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_dry_run_prints_the_golden_sbatch_script():
    out = slurm(*GOLDEN_ARGS)
    assert out.returncode == 0, out.stderr
    assert out.stdout == GOLDEN.read_text()


def test_the_script_runs_its_shard_with_overrides_intact(tmp_path, corpus_docs, mistral_tokenizer_dir):
    """bash runs the printed script as array task 1 of 2 (no sbatch here: #SBATCH lines are
    comments to bash); paths with a space and a quote reach ipt synthesize unchanged."""
    data = tmp_path / "my data"
    data.mkdir()
    inp = data / "it's.jsonl"
    inp.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:12]))
    out = tmp_path / "out dir"
    args = ["--shards", "2", "--gpus-per-task", "0", "--repo-dir", str(ROOT), "--",
            "engine=rules", f"input={inp}", f"output_dir={out}", "chunk_texts=5", "progress=false"]  # fmt: skip
    script = slurm(*args).stdout
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1"}
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    stats = json.loads((out / "stats.shard-00001-of-00002.json").read_text())
    assert (stats["chunks_total"], stats["chunks_done_now"], stats["texts"]) == (3, 1, 5)
    assert sorted(p.name for p in out.glob("chunk-*.jsonl")) == ["chunk-000001.jsonl"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shards", "4", "shard=1"], "override 'shard=1'"),
        (["--shards", "4", "num_shards=8"], "override 'num_shards=8'"),
        (["--shards", "4", "--partition", "gpu\n#SBATCH --x"], "--partition"),
        (["--shards", "4", "--time", "1 day"], "--time"),
        (["--shards", "0"], "--shards"),
    ],
)
def test_refuses_what_would_not_reach_sbatch_or_ipt_intact(args, message):
    out = slurm(*args)
    assert out.returncode == 2 and message in out.stderr and not out.stdout
