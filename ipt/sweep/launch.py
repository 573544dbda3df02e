"""`launch=tpu|gpu|slurm`: one cluster job per point, printed, never run.

The GPU lines are built by launch/gpu.py's own command builders and the TPU lines are
invocations of launch/tpu.py checked by its own argument parser, so a sweep job is exactly
what the launcher would run for that experiment with the point's overrides. SLURM gets one
`sbatch --wrap` per point (`srun` across nodes; `ipt train` joins the job's processes itself).
Pipeline stages, when the sweep has them, are printed first as plain `ipt` commands.
"""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path
from types import ModuleType

from ipt import resources
from ipt.sweep.plan import Plan, Point, SweepError


def launcher(name: str) -> ModuleType:
    """launch/<name>.py, shipped with ipt as `ipt.launch.<name>` (see `ipt.resources`)."""
    try:
        return resources.launcher(name)
    except ModuleNotFoundError as e:
        if e.name not in (resources.LAUNCH, f"{resources.LAUNCH}.{name}"):
            raise  # the launcher is there but imports something missing: a real error, keep it
        raise SweepError(f"launch={name}: {e}") from None


def train_args(point: Point) -> list[str]:
    return ["ipt", "train", "--config", point.experiment, *point.overrides]


def gpu_lines(plan: Plan, point: Point) -> list[str]:
    gpu, opts = launcher("gpu"), plan.sweep.gpu
    if opts.hosts:
        commands = gpu.node_commands(
            point.experiment, list(point.overrides), opts.hosts, opts.repo_dir, opts.port
        )
    else:
        commands = [gpu.local_command(point.experiment, list(point.overrides))]
    return [shlex.join(cmd) for cmd in commands]


def tpu_argv(plan: Plan, point: Point) -> list[str]:
    opts = plan.sweep.tpu
    missing = [k for k in ("project", "zone", "bucket", "repo", "ref") if getattr(opts, k) is None]
    if missing:
        raise SweepError(f"launch=tpu needs {', '.join(f'tpu.{k}' for k in missing)}")
    argv = ["--config", point.experiment, "--name", f"{opts.name_prefix}-{point.index}"]
    argv += [f"--{k}={getattr(opts, k)}" for k in ("project", "zone", "bucket", "repo", "ref")]
    argv += [f"--slice={opts.slice}"] if opts.slice else []
    argv += ["--spot"] * opts.spot + ([f"--slices={opts.slices}"] if opts.slices > 1 else [])
    return argv + [f"--set={o}" for o in point.overrides] + ["all"]


def tpu_lines(plan: Plan, point: Point) -> list[str]:
    """`python launch/tpu.py ... all --execute`: create the slice, set it up, train the point."""
    argv = tpu_argv(plan, point)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            launcher("tpu").job_from_args(argv)
    except SystemExit:
        reason = errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else "refused"
        raise SweepError(f"launch=tpu, point {point.name}: {reason}") from None
    return [shlex.join(["python", "launch/tpu.py", *argv, "--execute"])]


def slurm_lines(plan: Plan, point: Point) -> list[str]:
    opts, train = plan.sweep.slurm, train_args(point)
    sbatch = ["sbatch", f"--job-name={Path(plan.sweep.sweep_dir).name}-{point.name}",
              f"--output={point.run_dir}/slurm-%j.log", f"--nodes={opts.nodes}"]  # fmt: skip
    if opts.partition:
        sbatch.append(f"--partition={opts.partition}")
    if opts.gpus_per_node:
        sbatch.append(f"--gpus-per-node={opts.gpus_per_node}")
    if opts.time:
        sbatch.append(f"--time={opts.time}")
    if opts.nodes > 1:  # one process per node; each finds the others through SLURM's variables
        sbatch.append("--ntasks-per-node=1")
        train = ["srun", *train]
    return [shlex.join([*sbatch, *opts.extra, f"--wrap={shlex.join(train)}"])]


BUILDERS = {"gpu": gpu_lines, "tpu": tpu_lines, "slurm": slurm_lines}


def launcher_lines(plan: Plan) -> list[str]:
    """Stage commands (if any), then `# <point>` and its job line(s) for every point."""
    lines = []
    if plan.stages:
        lines.append("# pipeline stages: run these first, in this order")
        for stage in plan.stages.values():
            config = ["--config", stage.source] if stage.source else []
            lines.append(shlex.join(["ipt", stage.command, *config, *stage.overrides]))
    build = BUILDERS[plan.sweep.launch]
    for point in plan.points:
        lines.append(f"# {point.name}")
        lines.extend(build(plan, point))
    return lines
