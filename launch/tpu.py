"""Launch an experiment on a Cloud TPU slice with queued resources, on every worker at once.

    python launch/tpu.py --config configs/experiments/scratch-1.3b-instruct.yaml \\
        --name ipt-13b --project my-proj --zone us-east5-a --bucket gs://my-bucket \\
        --repo https://github.com/me/ipt --ref <commit> [--spot] [--slices 2] all

Prints each `gcloud` command; `--execute` also runs them. Steps: `create` (a queued resource
for the experiment's `target` slice), `wait` (until it is ACTIVE), `setup` (clone + install on
all workers), `train` (start `ipt train` on all workers, detached, logging to a file),
`status`, `delete`. Checkpoints go to the bucket, so after a preemption `create`, `setup`
and `train` again resume from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from pydantic import ConfigDict

from ipt.config import Config, load_config

# TPU VM base image per generation (cloud.google.com/tpu/docs/runtimes)
RUNTIME = {
    "v4": "tpu-ubuntu2204-base",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
ACCELERATOR = {"v4": "v4", "v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}


class _Target(Config):
    """Reads only `target` from an experiment config (bases resolved), without importing JAX."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    target: str | None = None


# What gcloud accepts (flag -> pattern, rule), checked before anything reaches a worker's shell.
NAME_RULES = {
    "name": (
        r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?",
        "a TPU name is lowercase letters, digits and '-', from a letter",
    ),
    "project": (r"[a-z][-a-z0-9]{4,28}[a-z0-9]", "a project ID is 6-30 lowercase letters, digits and '-'"),
    "zone": (r"[a-z]+-[a-z]+[0-9]+-[a-z]", "a zone looks like us-east5-a"),
}


@dataclass(frozen=True)
class TpuJob:
    name: str
    project: str
    zone: str
    slice: str  # e.g. v5p-32, as in an experiment's `target`
    config: str  # experiment config path, relative to the repository root
    bucket: str  # gs://... for checkpoints
    repo: str
    ref: str
    slices: int = 1
    spot: bool = False
    overrides: tuple[str, ...] = ()

    @property
    def generation(self) -> str:
        gen = self.slice.split("-")[0]
        if gen not in RUNTIME:
            raise ValueError(
                f"target slice {self.slice!r}: expected one of {sorted(RUNTIME)} followed by -SIZE"
            )
        return gen

    @property
    def accelerator_type(self) -> str:
        return f"{ACCELERATOR[self.generation]}-{self.slice.split('-', 1)[1]}"

    def _where(self) -> list[str]:
        return [f"--project={self.project}", f"--zone={self.zone}"]

    def create(self) -> list[str]:
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", self.name, *self._where()]
        cmd += [
            f"--accelerator-type={self.accelerator_type}",
            f"--runtime-version={RUNTIME[self.generation]}",
        ]
        if self.slices > 1:
            cmd += [f"--node-count={self.slices}", f"--node-prefix={self.name}"]
        else:
            cmd += [f"--node-id={self.name}"]
        if self.spot:
            cmd.append("--spot")
        return cmd

    def describe(self) -> list[str]:
        return ["gcloud", "compute", "tpus", "queued-resources", "describe", self.name, *self._where(),
                "--format=value(state.state)"]  # fmt: skip

    def delete(self) -> list[str]:
        return ["gcloud", "compute", "tpus", "queued-resources", "delete", self.name, *self._where(),
                "--force", "--quiet"]  # fmt: skip

    def nodes(self) -> list[str]:
        return [self.name] if self.slices == 1 else [f"{self.name}-{i}" for i in range(self.slices)]

    def on_all_workers(self, script: str) -> list[list[str]]:
        """One `ssh --worker=all` per slice: the same script runs on every host of every slice."""
        return [
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "ssh",
                node,
                *self._where(),
                "--worker=all",
                f"--command={script}",
            ]
            for node in self.nodes()
        ]

    def setup_script(self) -> str:
        q = shlex.quote
        return (
            f"set -e; if [ ! -d ipt ]; then git clone {q(self.repo)} ipt; fi; cd ipt; "
            f"git fetch --quiet origin; git checkout --quiet {q(self.ref)}; "
            "pip install --quiet -e '.[tpu]'"
        )

    def train_script(self) -> str:
        run = f"{self.bucket.rstrip('/')}/{self.name}"
        args = [
            "ipt", "train", "--config", self.config, "distributed=on",
            f"run_dir=runs/{self.name}", f"checkpoint.directory={run}/checkpoints", *self.overrides,
        ]  # fmt: skip
        command = " ".join(shlex.quote(a) for a in args)
        log = shlex.quote(f"runs/{self.name}.log")
        return f"cd ipt && mkdir -p runs && nohup {command} > {log} 2>&1 &"

    def plan(self, step: str) -> list[list[str]]:
        steps = {
            "create": [self.create()],
            "setup": self.on_all_workers(self.setup_script()),
            "train": self.on_all_workers(self.train_script()),
            "status": [self.describe()],
            "delete": [self.delete()],
        }
        return steps[step]


def job_from_args(argv: list[str]) -> tuple[TpuJob, list[str], bool]:
    p = argparse.ArgumentParser(
        prog="launch/tpu.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="an experiment config (its `target` names the slice)")
    p.add_argument("--name", required=True, help="queued-resource and node name")
    p.add_argument("--project", required=True)
    p.add_argument("--zone", required=True)
    p.add_argument("--bucket", required=True, help="gs://bucket/prefix for checkpoints")
    p.add_argument("--repo", required=True, help="git URL of this repository")
    p.add_argument("--ref", required=True, help="commit or tag to run")
    p.add_argument("--slice", help="override the experiment's target slice, e.g. v5p-64")
    p.add_argument("--slices", type=int, default=1, help="slices joined over DCN (multi-slice)")
    p.add_argument("--spot", action="store_true", help="preemptible capacity")
    p.add_argument("--execute", action="store_true", help="run the commands (default: print them)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra ipt train override")
    p.add_argument(
        "steps", nargs="+", choices=["create", "wait", "setup", "train", "status", "delete", "all"]
    )
    a = p.parse_args(argv)
    for flag, (pattern, rule) in NAME_RULES.items():
        if not re.fullmatch(pattern, getattr(a, flag)):
            p.error(f"--{flag} {getattr(a, flag)!r}: {rule}")
    target = a.slice or load_config(_Target, a.config).target
    if not target:
        p.error(f"{a.config} names no `target` slice; pass --slice")
    job = TpuJob(
        a.name, a.project, a.zone, target, a.config, a.bucket, a.repo, a.ref, a.slices, a.spot, tuple(a.set)
    )
    steps = ["create", "wait", "setup", "train"] if "all" in a.steps else a.steps
    return job, steps, a.execute


def wait_until_active(job: TpuJob, poll_s: float = 60) -> None:
    while True:
        state = subprocess.run(job.describe(), capture_output=True, text=True, check=True).stdout.strip()
        print(f"queued resource {job.name}: {state}", flush=True)
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDED"):
            raise SystemExit(f"queued resource {job.name} is {state}; delete it and create it again")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    job, steps, execute = job_from_args(sys.argv[1:] if argv is None else argv)
    for step in steps:
        if step == "wait":
            print(f"# wait until `{shlex.join(job.describe())}` says ACTIVE")
            if execute:
                wait_until_active(job)
            continue
        for cmd in job.plan(step):
            print(shlex.join(cmd), flush=True)
            if execute:
                subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
