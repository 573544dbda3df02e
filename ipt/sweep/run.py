"""`ipt sweep`: run the points of a grid one after another (or print them as cluster jobs), then summarize.

    ipt sweep --config configs/sweeps/toy-3seed.yaml [launch=local|tpu|gpu|slurm] [fail_fast=true]

Each point is `ipt train --config <experiment> <overrides> run_dir=<sweep_dir>/<name>` run as a
child process, not in this process: a point that crashes, leaks memory or leaves JAX in a bad
state cannot poison the next one, every point starts from the same clean process a cluster job
would, and the command run here is exactly the one printed for a launcher. A point is done when
its marker `SWEEP_DONE.json` exists, written last (atomically) once training reached its final
step with the final checkpoint on disk and, when the sweep asks for `eval`, `ipt eval` wrote its
results; done points are skipped on a re-run. A point with checkpoints but no marker is simply
run again: `ipt train` resumes from its run directory. Pipeline stages work the same way, with a
marker beside each stage's output directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ipt.config import dump_config
from ipt.stage import run_stage
from ipt.stage.files import atomic_write_text
from ipt.sweep.config import SweepConfig
from ipt.sweep.grid import GridError
from ipt.sweep.markers import (
    DONE,
    check_finished_points,
    config_tree,
    final_checkpoint,
    marker_matches,
    point_done,
    read_marker,
)
from ipt.sweep.plan import Plan, Point, StageRun, SweepError, make_plan

POINT_FILE = "point.json"
LOG_FILE = "sweep.log"
LOG_TAIL = 5


@dataclass(frozen=True)
class Failure:
    what: str  # point or stage
    message: str
    log: Path | None


def _child(args: list[str], log: Path) -> int:
    """Run `python -m ipt.cli ARGS`, appending its output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ ipt {' '.join(args)}\n")
        out.flush()
        return subprocess.run(
            [sys.executable, "-m", "ipt.cli", *args], stdout=out, stderr=subprocess.STDOUT
        ).returncode


def _tail(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return " | ".join(line.strip() for line in lines[-LOG_TAIL:] if line.strip())


class Runner:
    """Runs a plan's stages and points in order, skipping finished work and recording failures."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.failures: list[Failure] = []
        self.failed_stages: set[str] = set()

    def run(self) -> None:
        total = len(self.plan.points)
        for point in self.plan.points:
            print(
                f"ipt sweep: [{point.index + 1}/{total}] {point.name}: {self._run_point(point)}", flush=True
            )
            if self.failures and self.plan.sweep.fail_fast:
                print("ipt sweep: stopping at the first failure (fail_fast=true)", flush=True)
                return

    def _run_point(self, point: Point) -> str:
        if point_done(point):
            return "done earlier, skipped"
        for key in point.stages:
            if not self._run_stage(self.plan.stages[key]):
                self.failures.append(Failure(f"point {point.name}", f"stage {key} failed", None))
                return f"not run: stage {key} failed"
        return self._train_and_eval(point)

    def _train_and_eval(self, point: Point) -> str:
        run_dir, log = point.run_dir, point.run_dir / LOG_FILE
        run_dir.mkdir(parents=True, exist_ok=True)
        text = dump_config(point.config)
        info = {"name": point.name, "index": point.index, "values": point.values, "experiment": point.experiment,
                "overrides": list(point.overrides)}  # fmt: skip
        atomic_write_text(run_dir / POINT_FILE, json.dumps(info, indent=2) + "\n")
        atomic_write_text(run_dir / "config.yaml", text)
        resumed = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
        code = _child(["train", "--config", point.experiment, *point.overrides], log)
        checkpoint = final_checkpoint(point)
        if code == 0 and checkpoint is not None and not checkpoint.is_dir():
            return self._fail(point, f"ipt train stopped before step {point.config.steps}", log)
        if code != 0:
            return self._fail(point, f"ipt train exited with {code}", log)
        if point.eval_overrides is not None:
            code = _child(["eval", *point.eval_overrides], log)
            if code != 0:
                return self._fail(point, f"ipt eval exited with {code}", log)
        marker = {"name": point.name, "config": config_tree(point.config), "steps": point.config.steps,
                  "eval": point.eval_overrides is not None}  # fmt: skip
        atomic_write_text(run_dir / DONE, json.dumps(marker, indent=2) + "\n")
        return "trained (resumed from its checkpoint)" if resumed else "trained"

    def _fail(self, point: Point, why: str, log: Path) -> str:
        self.failures.append(Failure(f"point {point.name}", why, log))
        return f"FAILED: {why} (log: {log})"

    def _run_stage(self, stage: StageRun) -> bool:
        if stage.key in self.failed_stages:
            return False
        root = stage.output_dir.parent
        marker = root / f"{stage.ident}.done.json"
        text = dump_config(stage.config)
        if marker_matches(read_marker(marker), stage.config):
            return True
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / f"{stage.ident}.yaml", text)
        log = root / f"{stage.ident}.log"
        args = [stage.command, *(["--config", stage.source] if stage.source else []), *stage.overrides]
        print(f"ipt sweep: stage {stage.key}: ipt {stage.command}", flush=True)
        code = _child(args, log)
        if code != 0:
            self.failed_stages.add(stage.key)
            self.failures.append(
                Failure(f"stage {stage.key}", f"ipt {stage.command} exited with {code}", log)
            )
            return False
        atomic_write_text(marker, json.dumps({"config": config_tree(stage.config)}) + "\n")
        return True


def sweep(cfg: SweepConfig) -> int:
    """Plan (validating every point), then print jobs, or run and summarize."""
    try:
        plan = make_plan(cfg)
        check_finished_points(plan)
        if cfg.launch != "local":
            from ipt.sweep.launch import launcher_lines

            print("\n".join(launcher_lines(plan)))
            return 0
    except (SweepError, GridError) as e:
        print(f"ipt sweep: error: {e}", file=sys.stderr)
        return 2
    runner = Runner(plan)
    if not cfg.summarize_only:
        print(f"ipt sweep: {len(plan.points)} points in {cfg.sweep_dir}", flush=True)
        runner.run()
    from ipt.sweep.summary import write_summary

    for path in write_summary(plan):
        print(f"ipt sweep: wrote {path}", flush=True)
    for failure in runner.failures:
        tail = f": {_tail(failure.log)}" if failure.log is not None and failure.log.is_file() else ""
        print(f"ipt sweep: FAILED {failure.what}: {failure.message}{tail}", file=sys.stderr)
    return 1 if runner.failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_stage(SweepConfig, sweep, list(argv or []), prog="ipt sweep")
