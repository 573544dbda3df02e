"""Steady-state tokens/s of `ipt train` vs a bare jit loop of the same model, batch and step.

Candidate (A): `ipt train` in this process: the grain pipeline over real shards (the built-in
corpus, Mistral v1 tokenizer), metrics to JSONL and TensorBoard every step, an async Orbax
checkpoint every `--ckpt-every` steps. Each A segment resumes the run for `--steps` more steps;
its time per step is the sum of the logged wall-clock step times (completion to completion,
so checkpoint and logging stalls count) over the segment's steady steps.
Baseline (B): the same jitted train step (same shardings, donation) on one in-memory batch
already on the device, timed over the same number of steps.
Segments alternate A B A B after a warm-up of each; the last line is the median of the
per-round A/B ratios (pairs taken back to back, so the shared machine's drifting load cancels).

    python benchmarks/train_overhead.py [--rounds 7] [--steps 12] [--ckpt-every 10]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_shards(work: Path) -> Path:
    from ipt.data.tokenize import main as tokenize

    src = work / "corpus.jsonl"
    with gzip.open(ROOT / "ipt/assets/corpus.jsonl.gz", "rt") as f:
        src.write_text(f.read())
    out = work / "tokens"
    code = tokenize([f"input={src}", f"output_dir={out}", "tokenizer=mistral-v1", "progress=false"])
    assert code == 0, "tokenize failed"
    return out


def write_config(work: Path, shards: Path, steps: int, ckpt_every: int, seq_len: int, batch: int) -> Path:
    cfg = {
        "run_dir": str(work / "run"),
        "model": {"base": str(ROOT / "configs/model/tiny.yaml")},
        "data": {
            "sources": [{"name": "corpus", "path": str(shards)}],
            "seq_len": seq_len,
            "batch_size": batch,
        },
        "steps": steps,
        "mesh": {"axes": {"data": 1, "fsdp": -1, "tensor": 1}},
        "optimizer": {"schedule": {"kind": "constant", "peak_lr": 1e-3, "warmup_steps": 2}},
        "checkpoint": {"every": ckpt_every, "keep": 2},
        "metrics": {"progress_bar": False, "tensorboard": True},
    }
    path = work / f"train-{steps}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_ipt_train(work: Path, shards: Path, upto: int, args) -> dict[int, dict]:
    from ipt.train.run import main as train

    path = write_config(work, shards, upto, args.ckpt_every, args.seq_len, args.batch)
    assert train(["--config", str(path)]) == 0
    records = {}
    for line in (work / "run" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            records[rec["step"]] = rec
    return records


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=12, help="steps per timed segment")
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ipt-train-overhead-"))
    try:
        shards = make_shards(work)
        from ipt.config import load_config
        from ipt.train.config import TrainConfig
        from ipt.train.run import Trainer

        tokens = args.seq_len * args.batch
        # baseline: the very same jitted step, on one batch held on the device
        cfg = load_config(
            TrainConfig, write_config(work, shards, 10**6, args.ckpt_every, args.seq_len, args.batch)
        )
        trainer = Trainer(cfg)
        state = trainer.fresh_state()
        rng = np.random.default_rng(0)
        ids = rng.integers(0, cfg.model.vocab_size, (args.batch, args.seq_len), dtype=np.int32)
        host = {"inputs": ids, "targets": ids, "segment_ids": np.ones_like(ids),
                "positions": np.broadcast_to(np.arange(args.seq_len, dtype=np.int32), ids.shape).copy(),
                "loss_mask": np.ones_like(ids)}  # fmt: skip
        batch = {k: jax.device_put(v, trainer.rules.batch_sharding()) for k, v in host.items()}

        def bare_segment(n: int) -> float:
            nonlocal state
            state, m = trainer.train_step(state, batch, trainer.parts.rest)
            jax.block_until_ready(m)
            t = time.perf_counter()
            for _ in range(n):
                state, m = trainer.train_step(state, batch, trainer.parts.rest)
            jax.block_until_ready(m)
            return (time.perf_counter() - t) / n

        done = 2
        run_ipt_train(work, shards, done, args)  # warm-up: first compile, first checkpoint
        bare_segment(2)
        a_rates, b_rates, mfus = [], [], []
        for r in range(args.rounds):
            start, done = done, done + args.steps
            recs = run_ipt_train(work, shards, done, args)
            # steady steps: not the first two after the resume (restore, compile), nor the last, which
            # waits for the end-of-run save that steady-state training does not have
            steady = [recs[s] for s in range(start + 3, done)]
            a = tokens / (sum(x["step_time"] for x in steady) / len(steady))
            mfus.append(statistics.median(x["mfu"] for x in steady))
            b = tokens / bare_segment(len(steady))
            a_rates.append(a)
            b_rates.append(b)
            print(
                f"round {r}: ipt train {a:.1f} tokens/s, bare loop {b:.1f} tokens/s, ratio {a / b:.3f}",
                flush=True,
            )
        a, b = statistics.median(a_rates), statistics.median(b_rates)
        print(f"tiny model ({sum(x.size for x in jax.tree.leaves(trainer.parts.params)):,} params), "
              f"batch {args.batch} x {args.seq_len}, checkpoint every {args.ckpt_every} steps, {args.rounds} rounds")  # fmt: skip
        print(
            f"ipt train MFU (logged, median): {statistics.median(mfus):.3f} of the measured CPU matmul peak"
        )
        print(f"median tokens/s: ipt train {a:.1f}, bare jit loop {b:.1f} (ratio of medians {a / b:.3f})")
        paired = statistics.median(x / y for x, y in zip(a_rates, b_rates, strict=True))
        print(f"ratio ipt_train/bare (median of the per-round ratios) = {paired:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
