"""`ipt train` end to end on real shards: learning, determinism, exact resumption after a real SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from shards import write_corpus_source

from ipt.train.run import main as train_main

ROOT = Path(__file__).resolve().parents[1]
# A model small enough that a step takes tens of milliseconds on this CPU.
MODEL = {
    "base": str(ROOT / "configs/model/tiny.yaml"),
    "vocab_size": 4096,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "bos_token_id": 0,
    "eos_token_id": 1,
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, bpe_tokenizer_dir, corpus_docs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train-shards")
    texts = [d["text"] for d in corpus_docs]
    write_corpus_source(root / "train", bpe_tokenizer_dir, texts[:300], docs_per_shard=100)
    write_corpus_source(root / "eval", bpe_tokenizer_dir, texts[-40:])
    return {"train": root / "train", "eval": root / "eval"}


def write_config(path: Path, shards: dict[str, Path], run_dir: Path, **top) -> Path:
    cfg = {
        "run_dir": str(run_dir),
        "model": MODEL,
        "data": {
            "sources": [{"name": "corpus", "path": str(shards["train"])}],
            "eval_sources": [{"name": "heldout", "path": str(shards["eval"])}],
            "seq_len": 32,
            "batch_size": 8,
        },
        "steps": 30,
        "optimizer": {"schedule": {"peak_lr": 3e-3, "warmup_steps": 3}},
        "checkpoint": {"every": 10, "keep": 2},
        "metrics": {"progress_bar": False, "tensorboard": False, "peak_flops": 1e11},
        **top,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_metrics(run_dir: Path) -> dict[int, dict]:
    """step -> the last record written for it (a resumed run rewrites the steps after its checkpoint)."""
    out: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards) -> Path:
    """One uninterrupted 30-step run, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = write_config(tmp / "train.yaml", shards, tmp / "run", eval={"every": 15, "batches": 2})
    assert train_main(["--config", str(cfg)]) == 0
    return tmp / "run"


def test_loss_decreases_and_eval_is_logged(reference):
    metrics = read_metrics(reference)
    assert sorted(metrics) == list(range(1, 31))
    losses = [metrics[s]["loss"] for s in range(1, 31)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/heldout/loss" in r]
    assert [r["step"] for r in evals] == [15, 30]
    assert evals[1]["eval/heldout/loss"] < evals[0]["eval/heldout/loss"]
    # throughput needs two consecutive completions: none for step 1 and the step after an eval
    timed = [m for s, m in metrics.items() if s not in (1, 16)]
    assert all(m["tokens_per_s"] > 0 and 0 < m["mfu"] < 1 for m in timed)
    assert sorted(int(p.name) for p in (reference / "checkpoints").iterdir()) == [20, 30]


def test_sigterm_then_resume_matches_uninterrupted_run(reference, shards, tmp_path):
    """Steps 1..k of the interrupted run (a fresh process, same config) check determinism;
    steps k+1..n after the resume check exact resumption of the model and the data iterator."""
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "train.yaml", shards, run_dir, eval={"every": 15, "batches": 2})
    cmd = [sys.executable, "-m", "ipt.cli", "train", "--config", str(cfg)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics_file = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preempted: saved a checkpoint at step" in out, out
    stopped = int(re.search(r"preempted: saved a checkpoint at step (\d+)", out).group(1))
    assert 3 <= stopped < 30, stopped
    assert stopped in [int(p.name) for p in (run_dir / "checkpoints").iterdir()]
    assert max(read_metrics(run_dir)) == stopped

    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    got, ref = read_metrics(run_dir), read_metrics(reference)
    assert sorted(got) == list(range(1, 31))
    assert [got[s]["loss"] for s in range(1, 31)] == [ref[s]["loss"] for s in range(1, 31)]
    assert [got[s]["grad_norm"] for s in range(stopped + 1, 31)] == [
        ref[s]["grad_norm"] for s in range(stopped + 1, 31)
    ]


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_gradients_stop_with_a_checkpoint(policy, shards, tmp_path, capsys):
    # a learning rate of 1e12 blows the weights up after one step; every later step overflows
    cfg = write_config(
        tmp_path / "train.yaml",
        shards,
        tmp_path / "run",
        optimizer={"clip_norm": None, "schedule": {"kind": "constant", "peak_lr": 1e12}},
        nonfinite=policy,
        max_skipped_in_a_row=3,
    )
    assert train_main(["--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "saved the last good state as checkpoint" in err
    metrics = read_metrics(tmp_path / "run")
    bad = [s for s, m in sorted(metrics.items()) if m["skipped_total"] > 0]
    if policy == "stop":
        assert "non-finite loss or gradients" in err and len(bad) == 1
    else:
        assert "3 steps in a row with non-finite" in err
        assert [metrics[s]["skipped_total"] for s in bad] == [1, 2, 3]
    (saved,) = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert saved < 30


def test_a_batch_the_mesh_cannot_split_is_refused_clearly(shards, tmp_path, capsys):
    data = {"sources": [{"name": "corpus", "path": str(shards["train"])}], "seq_len": 32, "batch_size": 4}
    cfg = write_config(
        tmp_path / "t.yaml",
        shards,
        tmp_path / "run",
        data=data,
        mesh={"axes": {"data": 8, "fsdp": 1, "tensor": 1}},
    )
    assert train_main(["--config", str(cfg)]) == 2
    assert "must be a multiple of the 8 ways the mesh splits the batch" in capsys.readouterr().err


def test_token_ids_beyond_the_model_vocabulary_are_refused_before_step_one(shards, tmp_path, capsys):
    """Shards of the 4096-token BPE with a 1000-token model: before this check, step 1 gave NaN."""
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "train.yaml", shards, run_dir, model={**MODEL, "vocab_size": 1000})
    assert train_main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "source 'corpus'" in err and "4096 token ids do not fit model.vocab_size=1000" in err
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_second_run_on_one_directory_is_refused_and_a_dead_runs_lock_is_taken_over(
    shards, tmp_path, capsys
):
    import socket

    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "train.yaml", shards, run_dir, steps=100000, checkpoint={"every": 100000})
    cmd = [sys.executable, "-m", "ipt.cli", "train", "--config", str(cfg)]
    first = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            if (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count(
                "\n"
            ) >= 2:
                break
            time.sleep(0.05)
        assert first.poll() is None
        config_before = (run_dir / "config.yaml").read_text()
        assert train_main(["--config", str(cfg), "seed=1"]) == 2
        err = capsys.readouterr().err
        assert f"host {socket.gethostname()}, pid {first.pid}" in err and ".ipt-train.lock" in err
        assert (run_dir / "config.yaml").read_text() == config_before  # the refused run changed nothing
    finally:
        first.kill()  # kill -9: the lock file stays behind
        first.wait()
    assert (run_dir / ".ipt-train.lock").exists()
    assert train_main(["--config", str(cfg), "steps=4"]) == 0  # its holder is gone: a stale lock
    assert not (run_dir / ".ipt-train.lock").exists()
