"""A resumed run is the run that was interrupted: its config is compared with the saved one.

Resuming with another `model.rope_theta`, `data.seq_len` or `data.docs_per_read` still fits
the saved shapes, so Orbax restores without complaint and the run silently becomes a different
experiment. Every key is taken to change the computation unless it is listed in
`DOES_NOT_CHANGE_THE_STEPS`: when and how often to log, evaluate and checkpoint, where the
run and its checkpoints live, how many steps in all (a longer run continues the same one), how
the devices are meshed (a resume on another slice reshards the same state), how the data is
read ahead, and what happens on a non-finite step. Any other change refuses the resume with the
list of differences, unless `allow_config_change=true`, which keeps the old config next to the
new one as `config.before-step-N.yaml`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

DOES_NOT_CHANGE_THE_STEPS = (
    "run_dir",
    "steps",
    "allow_config_change",
    "distributed",
    "target",
    "nonfinite",
    "max_skipped_in_a_row",
    "eval",
    "metrics",
    "checkpoint",
    "compile",
    "init",  # read only when there is no checkpoint
    "mesh",
    "data.eval_sources",
    "data.read_threads",
    "data.read_buffer_size",
    "data.worker_buffer_size",
    "data.verify_checksums",
    "data.verify_max_bytes",
)


class ConfigChangedError(ValueError):
    """The run directory's checkpoints were trained with a config that differs where it matters."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {f"{prefix}length": len(tree)}
        for i, value in enumerate(tree):
            out.update(_flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def _counts(key: str) -> bool:
    return not any(key == k or key.startswith(k + ".") for k in DOES_NOT_CHANGE_THE_STEPS)


def config_differences(saved: dict, new: dict) -> list[str]:
    """`key: old -> new` for every key that changes the computation (dotted, list items by index)."""
    before, after = _flatten(saved), _flatten(new)
    missing = object()
    lines = []
    for key in sorted(before.keys() | after.keys()):
        old, now = before.get(key, missing), after.get(key, missing)
        if old != now and _counts(key):
            show = ["(absent)" if v is missing else json.dumps(v) for v in (old, now)]
            lines.append(f"{key}: {show[0]} -> {show[1]}")
    return lines


def check_resume_config(saved_file: Path, new_config_text: str, allow_change: bool) -> None:
    """Refuse to resume under a config whose computation differs from the saved one's."""
    if not saved_file.exists():
        return
    saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    differences = config_differences(saved, yaml.safe_load(new_config_text))
    if differences and not allow_change:
        listed = "\n  ".join(differences)
        raise ConfigChangedError(
            f"{saved_file.parent} holds checkpoints of a run with another config; these keys differ "
            f"from {saved_file}:\n  {listed}\nStart a new run_dir for a new experiment, or pass "
            "allow_config_change=true to resume these checkpoints under the new config."
        )
