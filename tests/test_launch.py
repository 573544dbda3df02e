"""The exact gcloud / ssh command lines the launchers produce (gcloud cannot run here)."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launch import gpu, tpu  # noqa: E402

EXPERIMENT = "configs/experiments/continual-llama3-8b-biomed.yaml"
COMMON = ["--config", EXPERIMENT, "--name", "bio", "--project", "my-proj", "--zone", "us-east5-a",
          "--bucket", "gs://b/runs/", "--repo", "https://example.org/ipt.git", "--ref", "abc123"]  # fmt: skip


def _plan(*extra: str) -> list[list[str]]:
    job, steps, _ = tpu.job_from_args([*COMMON, *extra])
    return [cmd for step in steps if step != "wait" for cmd in job.plan(step)]


def test_tpu_queued_resource_for_the_experiments_target_slice():
    create, setup, train = _plan("--spot", "--set", "steps=10", "all")
    assert create == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "bio", "--project=my-proj", "--zone=us-east5-a",
        "--accelerator-type=v5p-32", "--runtime-version=v2-alpha-tpuv5", "--node-id=bio", "--spot",
    ]  # fmt: skip
    assert setup[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bio", "--project=my-proj", "--zone=us-east5-a",
                         "--worker=all"]  # fmt: skip
    assert setup[9] == (
        "--command=set -e; if [ ! -d ipt ]; then git clone https://example.org/ipt.git ipt; fi; cd ipt; "
        "git fetch --quiet origin; git checkout --quiet abc123; pip install --quiet -e '.[tpu]'"
    )
    script = train[9].removeprefix("--command=")
    assert script == (
        "cd ipt && mkdir -p runs && nohup ipt train --config configs/experiments/continual-llama3-8b-biomed.yaml "
        "distributed=on run_dir=runs/bio checkpoint.directory=gs://b/runs/bio/checkpoints steps=10 "
        "> runs/bio.log 2>&1 &"
    )


def test_tpu_multislice_v5e_and_teardown():
    job, _, _ = tpu.job_from_args([*COMMON, "--slice", "v5e-256", "--slices", "2", "create"])
    create = job.create()
    assert "--accelerator-type=v5litepod-256" in create and "--runtime-version=v2-alpha-tpuv5-lite" in create
    assert create[-2:] == ["--node-count=2", "--node-prefix=bio"]
    assert [c[5] for c in job.on_all_workers("true")] == ["bio-0", "bio-1"]
    assert job.delete() == ["gcloud", "compute", "tpus", "queued-resources", "delete", "bio", "--project=my-proj",
                            "--zone=us-east5-a", "--force", "--quiet"]  # fmt: skip


def test_tpu_launcher_prints_without_executing():
    out = subprocess.run(
        [sys.executable, "launch/tpu.py", *COMMON, "create", "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [shlex.split(line) for line in lines] == [_plan("create")[0], _plan("status")[0]]


def test_gpu_local_and_multinode_commands():
    assert gpu.local_command("x.yaml", ["steps=5"]) == [
        "env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.92", "NCCL_NVLS_ENABLE=0", "ipt", "train", "--config", "x.yaml",
        "steps=5",
    ]  # fmt: skip
    nodes = gpu.node_commands("x.yaml", [], ["h0", "h1"], "/srv/ipt")
    assert [n[:3] for n in nodes] == [["ssh", "--", "h0"], ["ssh", "--", "h1"]]
    assert nodes[1][3] == (
        "cd /srv/ipt && env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 NCCL_NVLS_ENABLE=0 JAX_COORDINATOR_ADDRESS=h0:8476 "
        "JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 ipt train --config x.yaml distributed=on"
    )


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--name", "x$(touch /tmp/pwned)"),
        ("--name", "Upper"),
        ("--project", "p;rm"),
        ("--zone", "us-east5-a;id"),
    ],
)
def test_tpu_launcher_refuses_names_gcloud_would_not_take(flag, value, tmp_path):
    argv = [*COMMON]
    argv[argv.index(flag) + 1] = value
    out = subprocess.run(
        [sys.executable, "launch/tpu.py", *argv, "train"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2 and flag in out.stderr and not out.stdout
    assert not (tmp_path / "pwned").exists()


def test_tpu_train_script_quotes_what_reaches_the_shell():
    script = tpu.job_from_args([*COMMON, "train"])[0].train_script()
    assert shlex.split(script)[-4:] == [">", "runs/bio.log", "2>&1", "&"]
    job = dataclasses.replace(
        tpu.job_from_args([*COMMON, "train"])[0],
        overrides=("data.sources.0.path=gs://b/my dir", "seed=$(id)"),
    )
    assert (
        "'seed=$(id)'" in job.train_script() and "'data.sources.0.path=gs://b/my dir'" in job.train_script()
    )


@pytest.mark.parametrize("hosts", ["-oProxyCommand=touch /tmp/pwned", "h0,-ofoo", "h0;id"])
def test_gpu_launcher_refuses_hosts_that_ssh_would_read_as_options(hosts):
    out = subprocess.run(
        [sys.executable, "launch/gpu.py", "--config", "x.yaml", f"--hosts={hosts}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--hosts" in out.stderr and not out.stdout
