"""Completion markers: a point (or stage run) is done when its marker matches the config it has now.

A marker keeps the resolved config it was written for. "Matches" compares the keys both configs
have: a value that changed means different work, but a key that a newer ipt added (with its
default) or removed does not turn finished runs into different ones.
"""

from __future__ import annotations

from pathlib import Path

from ipt.config import Config
from ipt.stage.identity import read_json as read_marker
from ipt.sweep.plan import Plan, Point, SweepError

DONE = "SWEEP_DONE.json"


def config_tree(config: Config) -> dict:
    return config.model_dump(mode="json")


def same_config(saved: object, current: object) -> bool:
    """Equal values under the keys both trees have (mappings compared key by key, all else whole)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return all(same_config(saved[k], current[k]) for k in saved.keys() & current.keys())
    return saved == current


def marker_matches(marker: dict | None, config: Config) -> bool:
    return marker is not None and "config" in marker and same_config(marker["config"], config_tree(config))


def final_checkpoint(point: Point) -> Path | None:
    """The final step's checkpoint directory (None where checkpoints live in a bucket)."""
    directory = point.config.checkpoint.directory
    if directory is not None and "://" in directory:
        return None
    return Path(directory or point.run_dir / "checkpoints") / str(point.config.steps)


def point_done(point: Point) -> bool:
    """Marker written for this very config, final checkpoint present, eval results present if asked."""
    if not marker_matches(read_marker(point.run_dir / DONE), point.config):
        return False
    checkpoint = final_checkpoint(point)
    if checkpoint is not None and not checkpoint.is_dir():
        return False
    return point.eval_overrides is None or (point.run_dir / "eval" / "ipt_results.json").is_file()


def check_finished_points(plan: Plan) -> None:
    """A point that finished under another config is refused rather than silently reused or redone."""
    for point in plan.points:
        marker = read_marker(point.run_dir / DONE)
        if marker is not None and not marker_matches(marker, point.config):
            raise SweepError(
                f"point {point.name} finished with a different config than the sweep now gives it "
                f"({point.run_dir / 'config.yaml'}); delete {point.run_dir} to retrain it, or set another sweep_dir"
            )
