"""Grids -> points: product over `grid` axes, zip groups varied together, and point names.

A point's name is built from its own values only (never from the other points), so adding a
value to the grid renames nothing and a finished point is found again on the next run:
`optimizer.schedule.peak_lr=0.001, seed=1` -> `peak_lr-0.001_seed-1`. Keys are shortened to
their shortest suffix that still tells the sweep's keys apart. When the readable form loses
information (characters replaced, or cut for length) a hash of the exact values is appended.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

EXPERIMENT_KEY = "experiment"
MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


class GridError(ValueError):
    """The grid cannot be expanded; the message names the key."""


@dataclass(frozen=True)
class Axis:
    """Keys varied together and their values, one tuple per step along the axis."""

    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c.d": 2} -> {"a.b": 1, "c.d": 2}: nested or dotted keys, same meaning."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _values(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise GridError(f"{where}: expected a list of values, got {value!r}")
    if not value:
        raise GridError(f"{where}: the list of values is empty")
    return value


def make_axes(grid: dict[str, Any], zips: list[dict[str, Any]], experiments: list[str]) -> list[Axis]:
    """The experiment labels (when more than one), each grid key, then each zip group."""
    axes = []
    if len(experiments) > 1:
        axes.append(Axis((EXPERIMENT_KEY,), tuple((label,) for label in experiments)))
    for key, value in flatten(grid).items():
        axes.append(Axis((key,), tuple((v,) for v in _values(f"grid.{key}", value))))
    for i, group in enumerate(zips):
        flat = {k: _values(f"zip.{i}.{k}", v) for k, v in flatten(group).items()}
        if not flat:
            raise GridError(f"zip.{i}: the group names no keys")
        lengths = {k: len(v) for k, v in flat.items()}
        if len(set(lengths.values())) > 1:
            raise GridError(f"zip.{i}: lists of different lengths ({lengths}); zipped lists must be equal")
        axes.append(Axis(tuple(flat), tuple(zip(*flat.values(), strict=True))))
    if not axes:
        raise GridError(
            "the grid is empty: give `grid: {KEY: [values]}`, `zip:` groups or several experiments"
        )
    seen: dict[str, str] = {}
    for axis in axes:
        for key in axis.keys:
            if key in seen:
                raise GridError(f"key `{key}` is varied twice (in {seen[key]} and again); vary it once")
            seen[key] = "the experiment labels" if key == EXPERIMENT_KEY else "the grid or a zip group"
    return axes


def expand(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination, the first axis varying slowest; each point is {key: value}."""
    points = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        point: dict[str, Any] = {}
        for axis, values in zip(axes, combo, strict=True):
            point.update(zip(axis.keys, values, strict=True))
        points.append(point)
    return points


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted suffix that no other key ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if all(other == key or not (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        out[key] = suffix
    return out


def value_text(value: Any) -> str:
    """A compact, readable form of a value for a name: 0.001, 1e-05, true, a+b for lists."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        text = f"{value:g}"
        return text if float(text) == value else repr(value)
    if isinstance(value, list):
        return "+".join(value_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def point_name(point: dict[str, Any], shorts: dict[str, str]) -> str:
    """`key-value` parts joined by '_' (an experiment label stands alone), made path-safe."""
    parts = [
        value_text(v) if k == EXPERIMENT_KEY else f"{shorts[k]}-{value_text(v)}" for k, v in point.items()
    ]
    readable = "_".join(parts)
    safe = "_".join(_UNSAFE.sub("-", p) for p in parts)
    if safe == readable and len(safe) <= MAX_NAME:
        return safe
    digest = hashlib.sha256(canonical(point).encode()).hexdigest()[:8]
    return f"{safe[:MAX_NAME]}_h{digest}"


def canonical(point: dict[str, Any]) -> str:
    """The exact values as sorted JSON: the identity of a point (or of a stage's settings)."""
    return json.dumps(point, sort_keys=True, separators=(",", ":"), default=str)


def yaml_value(value: Any) -> str:
    """A value as YAML flow text that `ipt.config.parse_overrides` reads back unchanged."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()
