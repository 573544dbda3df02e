"""`ipt synthesize` as a SLURM array job: array task k runs shard k of N, vLLM tensor-parallel per task.

    python launch/slurm.py --shards 64 --gpus-per-task 1 --partition gpu --time 12:00:00 \\
        --repo-dir ~/ipt --venv ~/venvs/ipt-vllm -- engine=vllm 'input=data/raw/*.jsonl.zst' output_dir=runs/synth

Prints the sbatch script; `--submit` pipes it to `sbatch`. Shards share `output_dir` and never
wait for each other; a task that is preempted is requeued (`--requeue`) and skips the chunks it
finished, so resubmitting the same script after any failure completes the job.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

SET_BY_LAUNCHER = ("shard", "num_shards", "tensor_parallel_size")
# what may stand in an `#SBATCH` line: sbatch reads those without a shell, so nothing can be quoted
DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_.:,%+/=@-]+")


def sbatch_script(a: argparse.Namespace) -> str:
    """The array job's script: directives, then the one `ipt synthesize` command of each task."""
    directives = {
        "job-name": a.job_name,
        "array": f"0-{a.shards - 1}" + (f"%{a.max_parallel}" if a.max_parallel else ""),
        "nodes": "1",
        "ntasks": "1",
        "gres": f"gpu:{a.gpus_per_task}" if a.gpus_per_task else None,
        "cpus-per-task": str(a.cpus_per_task),
        "mem": a.mem,
        "time": a.time,
        "partition": a.partition,
        "account": a.account,
        "output": f"{a.logs}/%x-%A_%a.log",
        "open-mode": "append",
    }
    lines = ["#!/bin/bash", f"# launch/slurm.py: array task k runs shard k of {a.shards}"]
    lines += [f"#SBATCH --{k}={v}" for k, v in directives.items() if v is not None]
    lines += ["#SBATCH --requeue", "set -euo pipefail", f"cd {shlex.quote(a.repo_dir)}"]
    if a.venv:
        lines.append(f"source {shlex.quote(a.venv + '/bin/activate')}")
    command = shlex.join(["ipt", "synthesize", *(["--config", a.config] if a.config else [])])
    parallel = [f"tensor_parallel_size={a.gpus_per_task}"] if a.gpus_per_task else []
    rest = shlex.join([f"num_shards={a.shards}", *parallel, *a.overrides])
    lines.append(f'exec {command} "shard=${{SLURM_ARRAY_TASK_ID}}" {rest}')
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch/slurm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shards", type=int, required=True, help="array tasks = shards (num_shards)")
    p.add_argument("--gpus-per-task", type=int, default=1, help="GPUs per task = vLLM tensor_parallel_size")
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--mem", help="memory per task, e.g. 64G")
    p.add_argument("--time", help="time limit per task, e.g. 12:00:00")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--max-parallel", type=int, help="at most this many tasks at once (%%N)")
    p.add_argument("--job-name", default="ipt-synth")
    p.add_argument(
        "--logs", default="logs", help="log directory, one file per task (relative: to where sbatch runs)"
    )
    p.add_argument("--repo-dir", default=".", help="this repository on the cluster's shared filesystem")
    p.add_argument("--venv", help="virtual environment to activate (the vLLM one)")
    p.add_argument("--config", help="passed to ipt synthesize")
    p.add_argument("--submit", action="store_true", help="pipe the script to sbatch (default: print it)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="passed to ipt synthesize")
    a = p.parse_args(argv)
    if a.shards < 1 or a.gpus_per_task < 0 or a.cpus_per_task < 1:
        p.error("--shards and --cpus-per-task must be >= 1, --gpus-per-task >= 0")
    for flag in ("mem", "time", "partition", "account", "job_name", "logs"):
        value = getattr(a, flag)
        if value is not None and not DIRECTIVE_VALUE.fullmatch(value):
            p.error(
                f"--{flag.replace('_', '-')} {value!r}: an #SBATCH value takes no spaces, quotes or newlines"
            )
    for override in a.overrides:
        key = override.split("=", 1)[0]
        if "=" not in override or key in SET_BY_LAUNCHER:
            p.error(
                f"override {override!r}: expected key=value, and not {', '.join(SET_BY_LAUNCHER)} (set here)"
            )
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    script = sbatch_script(a)
    if not a.submit:
        print(script, end="")
        return 0
    Path(a.logs).mkdir(parents=True, exist_ok=True)  # SLURM does not create it; a task without it fails
    return subprocess.run(["sbatch"], input=script, text=True).returncode


if __name__ == "__main__":
    sys.exit(main())
