"""`ipt train` as a real two-process job (jax.distributed over localhost, 4 CPU devices each).

Each process reads its own half of every batch and the mesh spans both. The job runs 3 steps,
stops, and resumes for 3 more; its losses must equal one process stepping the same global
batches on 8 devices without a break, so each host must have restored its own iterator state."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_train_loop import ROOT, read_metrics, shards, write_config  # noqa: F401  (fixture)

from ipt.config import load_config
from ipt.data.pipeline import make_batch_iterator
from ipt.train.config import TrainConfig
from ipt.train.loop import to_global
from ipt.train.run import Trainer

STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(ipt_args: list[str], timeout: int = 300) -> str:
    """`python -m ipt.cli *ipt_args distributed=on` as two jax.distributed processes on this
    host (4 CPU devices each), as launch/gpu.py and launch/tpu.py start every host; both must
    exit 0. Returns process 0's output."""
    port = _free_port()
    procs = []
    for i in range(2):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i),
        }
        cmd = [sys.executable, "-m", "ipt.cli", *ipt_args, "distributed=on"]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    return outs[0]


def _run_two_processes(cfg_path: Path, *overrides: str) -> str:
    return run_two_processes(["train", "--config", str(cfg_path), *overrides])


def test_two_processes_train_and_resume_like_one(shards, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    cfg_path = write_config(
        tmp_path / "train.yaml", shards, run_dir, steps=STEPS,
        optimizer={"schedule": {"kind": "constant", "peak_lr": 3e-3, "warmup_steps": 2}},
        mesh={"axes": {"data": 2, "fsdp": -1, "tensor": 1}},
    )  # fmt: skip
    out = _run_two_processes(cfg_path, f"steps={STEPS // 2}")
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in out
    data_dir = run_dir / "checkpoints" / str(STEPS // 2) / "data"
    saved = [json.loads((data_dir / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert saved[0] != saved[1]  # the hosts stopped at different places in their data
    out = _run_two_processes(cfg_path)
    assert f"steps {STEPS // 2}->{STEPS}" in out

    # one process, 8 devices, the same global batches (each host's rows, stacked), no break
    cfg = load_config(TrainConfig, cfg_path)
    trainer = Trainer(cfg)
    state = trainer.fresh_state()
    hosts = [make_batch_iterator(cfg.data, process_index=i, process_count=2) for i in range(2)]
    want = []
    for step in range(1, STEPS + 1):
        local = [next(h) for h in hosts]
        batch = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
        state, m = trainer.train_step(
            state, to_global(batch, trainer.rules.batch_sharding()), trainer.parts.rest
        )
        want.append(float(m["loss"]))
        if step == STEPS // 2:
            assert saved == [json.loads(json.dumps(h.get_state())) for h in hosts]
    got = read_metrics(run_dir)
    np.testing.assert_allclose([got[s]["loss"] for s in range(1, STEPS + 1)], want, rtol=1e-5)
