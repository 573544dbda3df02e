"""`ipt eval` as a real two-process job (jax.distributed over localhost, 4 CPU devices each):
process 0 drives lm-eval, process 1 serves its scoring and generation calls in lockstep, and
the results equal one process evaluating on 8 devices."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from test_train_distributed import run_two_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _samples(out) -> dict[str, list]:
    return {
        re.match(r"samples_(.+)_\d{4}-\d\d-\d\dT", f.name).group(1): [
            json.loads(line)["resps"] for line in f.open()
        ]
        for f in sorted(out.rglob("samples_*.jsonl"))
    }


def _eval_args(trained_tiny, out) -> list[str]:
    return [
        f"model={trained_tiny['model']}",
        f"tokenizer={trained_tiny['tokenizer']}",
        "tasks=paper_arc_easy,paper_boolq",
        "limit=4",
        "max_length=256",
        "mesh.axes={data: 2, fsdp: -1, tensor: 1}",
        "log_samples=true",
        f"heldout={trained_tiny['heldout']}",
        "heldout_docs=3",
        f"output={out}",
    ]


@pytest.mark.slow
def test_two_processes_score_like_one(trained_tiny, tmp_path):
    base_env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    single = subprocess.run(
        [sys.executable, "-m", "ipt.cli", "eval", *_eval_args(trained_tiny, tmp_path / "one")],
        cwd=ROOT, env={**base_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    run_two_processes(["eval", *_eval_args(trained_tiny, tmp_path / "two")], timeout=600)
    one, two = _samples(tmp_path / "one"), _samples(tmp_path / "two")
    assert set(one) == set(two) and len(one) == 2
    for task in one:
        for a, b in zip(one[task], two[task], strict=True):
            for (x,), (y,) in zip(a, b, strict=True):
                # lm-eval's sample files hold each response as strings
                assert float(x[0]) == pytest.approx(float(y[0]), abs=1e-4) and x[1] == y[1]
    held = [json.loads((tmp_path / d / "ipt_results.json").read_text())["heldout"] for d in ("one", "two")]
    assert held[0]["heldout"]["bits_per_byte"] == pytest.approx(held[1]["heldout"]["bits_per_byte"], rel=1e-5)
