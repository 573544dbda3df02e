"""Cost of the checkpoint content checksums (ipt.train.checksum) against the save they protect.

Candidate (A): `state_checksums(state)` of a full train state (parameters and Adam moments).
Baseline (B): writing that same state as one Orbax checkpoint (`Checkpointer.save` + `wait`,
the checksums item included), as every save does. Rounds alternate A B after a warm-up; the
last line is the median A/B ratio: the share of a save's time that the checksums add.

On accelerators the checksum is one fused read of the state in HBM (about 1.5 ms for
ipt-1.3b on a v5p-8, see the module docstring) while the save moves the same bytes to a disk
or a bucket, so the ratio there is far smaller than on this CPU, where both share the cores.

    python benchmarks/checkpoint_checksum.py [--rounds 5] [--hidden 512] [--layers 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import yaml

ROOT = Path(__file__).resolve().parents[1]


def build_state(work: Path, hidden: int, layers: int):
    """The full train state (parameters + AdamW moments) of a tiny-family model, freshly initialized."""
    from ipt.config import load_config
    from ipt.train.config import TrainConfig
    from ipt.train.run import Trainer

    model = {"base": str(ROOT / "configs/model/tiny.yaml"), "hidden_size": hidden}
    model.update(intermediate_size=hidden * 3, num_hidden_layers=layers)
    cfg = {
        "run_dir": str(work),
        "model": model,
        "steps": 10,
        "data": {"sources": [{"name": "x", "path": "x"}]},
    }
    (work / "train.yaml").write_text(yaml.safe_dump(cfg))
    return Trainer(load_config(TrainConfig, work / "train.yaml", [])).fresh_state()


def main() -> None:
    from ipt.train.checkpoint import CheckpointConfig, Checkpointer
    from ipt.train.checksum import state_checksums

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ipt-checksum-"))
    try:
        state = build_state(work, args.hidden, args.layers)
        nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
        ckpt = Checkpointer(work / "checkpoints", CheckpointConfig(every=1, keep=1, async_save=False))

        def checksum() -> float:
            t = time.perf_counter()
            state_checksums(state)
            return time.perf_counter() - t

        def save(step: int) -> float:
            t = time.perf_counter()
            ckpt.save(step, state, None, force=True)
            ckpt.wait()
            return time.perf_counter() - t

        checksum(), save(0)  # warm-up: compile the checksum, create the directory layout
        ratios, a_times, b_times = [], [], []
        for r in range(args.rounds):
            a, b = checksum(), save(r + 1)
            a_times.append(a)
            b_times.append(b)
            ratios.append(a / b)
            print(
                f"round {r}: checksums {a * 1e3:.1f} ms, save {b * 1e3:.1f} ms, ratio {a / b:.3f}", flush=True
            )
        ckpt.close()
        a = statistics.median(a_times)
        print(f"state {nbytes / 2**20:,.0f} MiB ({len(jax.tree.leaves(state))} arrays), {args.rounds} rounds")
        print(
            f"checksums: {nbytes / a / 1e9:.2f} GB/s on this host; save: {nbytes / statistics.median(b_times) / 1e9:.2f} GB/s"
        )
        print(f"checksums / save time (median of rounds): {statistics.median(ratios):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
