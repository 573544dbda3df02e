"""`ipt train` end to end on real shards: learning, determinism, exact resumption after a real SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
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


def test_bit_rot_in_the_newest_checkpoint_falls_back_to_the_older_one(reference, tmp_path):
    """The issue's reproduction: 4 bytes XORed in a finished checkpoint's largest data file. The
    resume notices (content checksums), says so in one line, moves the step aside, redoes the
    steps from the older checkpoint and ends exactly where the uninterrupted run ended."""
    from test_train_checkpoint import flip_bytes_in_largest_data_file

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    flip_bytes_in_largest_data_file(run_dir / "checkpoints" / "30")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**cfg, "run_dir": str(run_dir)}))
    cmd = [sys.executable, "-m", "ipt.cli", "train", "--config", str(tmp_path / "train.yaml")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "checkpoints/30 cannot be used" in line]
    assert len(lines) == 1 and "content checksum mismatch" in lines[0], done.stderr
    print(done.stderr)
    assert len(done.stderr.splitlines()) < 12, done.stderr
    assert [p.name.split(".")[1].split("-")[0] for p in (run_dir / "checkpoints").glob("30.*")] == [
        "unrestorable"
    ]
    got, ref = read_metrics(run_dir), read_metrics(reference)
    assert [got[s]["loss"] for s in range(1, 31)] == [ref[s]["loss"] for s in range(1, 31)]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(steps) == sorted([*range(1, 31), 15, 30])  # one train record per step, two evals


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_resume_under_a_changed_computation_is_refused_and_changes_no_file(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**cfg, "run_dir": str(run_dir)}))
    before = _tree_bytes(run_dir)
    refused = {  # each still fits the saved shapes, except hidden_size (refused before restoring)
        "model.rope_theta=50000.0": "model.rope_theta: 10000.0 -> 50000.0",
        "data.seq_len=16": "data.seq_len: 32 -> 16",
        "data.docs_per_read=7": "data.docs_per_read: 1024 -> 7",
        "model.hidden_size=128": "model.hidden_size: 64 -> 128",
    }
    for override, difference in refused.items():
        assert train_main(["--config", str(tmp_path / "train.yaml"), override, "steps=32"]) == 2
        err = capsys.readouterr().err
        assert "holds checkpoints of a run with another config" in err and difference in err, err
        assert "allow_config_change=true" in err and "Traceback" not in err
        assert _tree_bytes(run_dir) == before, override

    # keys that do not change what a step computes pass: more steps, logging, eval, checkpoints
    passing = ["steps=32", "metrics.log_every=2", "eval.every=16", "checkpoint.keep=3"]
    assert train_main(["--config", str(tmp_path / "train.yaml"), *passing]) == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps"] == 32
    assert not list(run_dir.glob("config.before-step-*"))
    # asked for, a changed computation resumes, and the old config stays beside the new one
    allowed = ["steps=33", "model.rope_theta=50000.0", "allow_config_change=true"]
    assert train_main(["--config", str(tmp_path / "train.yaml"), *allowed]) == 0
    assert yaml.safe_load((run_dir / "config.before-step-32.yaml").read_text())["model"]["rope_theta"] == 1e4
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["rope_theta"] == 5e4


def test_sigterm_during_start_up_exits_cleanly_having_saved_nothing(shards, tmp_path):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "train.yaml", shards, run_dir)
    cmd = [sys.executable, "-m", "ipt.cli", "train", "--config", str(cfg)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not (run_dir / ".ipt-train.lock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # the lock is taken right after the signal handler is installed
    proc.send_signal(signal.SIGTERM)  # the model is still being built: no step has run
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by a signal during start-up (no step ran, nothing saved) at step 0" in out, out
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    assert not read_metrics(run_dir)
    assert not (run_dir / ".ipt-train.lock").exists()


def _in_a_full_filesystem(cmd: list[str], mount_dir: Path) -> list[str]:
    """`cmd` run in a private mount namespace with a 1 MiB tmpfs at `mount_dir` (a full disk)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux `unshare` to mount a small tmpfs")
    user = [] if os.geteuid() == 0 else ["-r"]
    probe = subprocess.run(["unshare", *user, "-m", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
    script = f'mount -t tmpfs -o size=1M ipt-full {mount_dir} && exec "$@"'
    return ["unshare", *user, "-m", "sh", "-c", script, "sh", *cmd]


def test_a_full_disk_under_the_checkpoint_directory_is_one_clear_line(shards, tmp_path):
    run_dir, full = tmp_path / "run", tmp_path / "full"
    full.mkdir()
    cfg = write_config(
        tmp_path / "train.yaml", shards, run_dir, checkpoint={"every": 2, "directory": str(full)}
    )
    cmd = _in_a_full_filesystem([sys.executable, "-m", "ipt.cli", "train", "--config", str(cfg)], full)
    done = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True
    )
    assert done.returncode == 4, done.stderr
    (error,) = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert (
        error.startswith("ipt train: error: checkpoint 2 needs up to") and "No space left on device" in error
    )
    assert str(full) in error and len(done.stderr.splitlines()) <= 3, done.stderr
