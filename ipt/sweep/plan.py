"""Resolve every point of a sweep into a validated `TrainConfig` (and its pipeline stages) up front.

Nothing runs until every point's config loads, so a typo in the grid, an empty grid, or two
points that would share a run directory are reported before the first step is trained.
Overrides go through `ipt.config.load_config`, so an unknown key is named with the closest
valid one. A grid key with a list index (`data.sources.1.weight`) edits that element of the
list the experiment resolves to and is passed on as the whole list (`data.sources=[...]`).
"""

from __future__ import annotations

import copy
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipt.config import CLI, Config, ConfigError, load_config
from ipt.sweep.config import SweepConfig
from ipt.sweep.grid import (
    EXPERIMENT_KEY,
    canonical,
    expand,
    flatten,
    make_axes,
    point_name,
    short_keys,
    yaml_value,
)
from ipt.train.config import TrainConfig

STAGES_DIR = "_stages"
STAGE_REF = re.compile(r"\{stage:([a-z][a-z0-9_]*)\}")
STAGE_SCHEMAS = {
    "synthesize": ("ipt.synth.run", "SynthesizeConfig"),
    "cook": ("ipt.cook.run", "CookConfig"),
    "tokenize": ("ipt.data.tokenize", "TokenizeConfig"),
}


class SweepError(ValueError):
    """The sweep cannot run as configured; one line that names the point, key or file."""


@dataclass(frozen=True)
class StageRun:
    """One pipeline stage with one set of settings; points that agree on them share it."""

    name: str  # the pipeline entry
    command: str  # synthesize | cook | tokenize
    ident: str  # the directory name, from the grid values it depends on
    output_dir: Path
    source: str | None  # the stage's own config file, if any
    overrides: tuple[str, ...]  # `key=value` for `ipt <command> --config <source>`
    config: Config
    needs: tuple[str, ...]  # keys of the stage runs whose output it reads

    @property
    def key(self) -> str:
        return f"{self.name}/{self.ident}"


@dataclass(frozen=True)
class Point:
    index: int
    name: str
    values: dict[str, Any]  # this point's grid values (the experiment label included)
    experiment: str  # the experiment config it starts from
    overrides: tuple[str, ...]  # `key=value` for `ipt train --config <experiment>`
    config: TrainConfig
    stages: tuple[str, ...]  # stage run keys, in the order they must run
    eval_overrides: tuple[str, ...] | None

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)


@dataclass(frozen=True)
class Plan:
    sweep: SweepConfig
    keys: list[str]  # the varied keys, in axis order
    points: list[Point]
    stages: dict[str, StageRun]


def make_plan(sweep: SweepConfig) -> Plan:
    """Expand the grid and resolve every point; raises SweepError before anything has run."""
    _check_stage_names(sweep)
    axes = make_axes(sweep.grid, sweep.zip, list(sweep.experiment))
    keys = [key for axis in axes for key in axis.keys]
    for key in keys:
        if key == "run_dir" or key.startswith("run_dir."):
            raise SweepError("grid: `run_dir` is set by the sweep (<sweep_dir>/<point name>); set sweep_dir")
    shorts = short_keys(keys)
    stages: dict[str, StageRun] = {}
    points = []
    for index, values in enumerate(expand(axes)):
        name = point_name(values, shorts)
        resolver = _PointResolver(sweep, values, name, shorts, stages)
        points.append(resolver.point(index))
    _check_distinct(points)
    return Plan(sweep, keys, points, stages)


def _check_stage_names(sweep: SweepConfig) -> None:
    for name in sweep.pipeline:
        if name in TrainConfig.model_fields or name == EXPERIMENT_KEY:
            raise SweepError(f"pipeline.{name}: the name is also a training key; rename the stage")


def _check_distinct(points: list[Point]) -> None:
    """No two points may write one run directory, or one checkpoint directory."""
    for attr, label in (("run_dir", "run directory"), ("checkpoint", "checkpoint.directory")):
        seen: dict[str, Point] = {}
        for p in points:
            where = str(p.run_dir) if attr == "run_dir" else p.config.checkpoint.directory
            if where is None:
                continue
            if where in seen:
                first = seen[where]
                raise SweepError(
                    f"points {first.index} ({canonical(first.values)}) and {p.index} ({canonical(p.values)}) "
                    f"resolve to the same {label} {where}; remove the duplicate value"
                )
            seen[where] = p


def _one_line(e: ConfigError, what: str) -> SweepError:
    head, *details = str(e).replace(f"set in {CLI}", "set in the sweep").split("\n  ")
    body = "; ".join(details) if details else head
    source = f" [{head.rstrip(':')}]" if details else ""
    return SweepError(f"{what}: {body}{source}")


def _overrides(settings: dict[str, Any]) -> list[str]:
    return [f"{key}={yaml_value(value)}" for key, value in settings.items()]


class _PointResolver:
    """Builds one point: its stage runs (shared through `stages`) and its validated TrainConfig."""

    def __init__(self, sweep: SweepConfig, values: dict, name: str, shorts: dict, stages: dict):
        self.sweep, self.values, self.name, self.shorts, self.stages = sweep, values, name, shorts, stages
        self.label = values.get(EXPERIMENT_KEY, next(iter(sweep.experiment)))
        self.needed: list[str] = []  # stage keys in dependency order

    def point(self, index: int) -> Point:
        spec = self.sweep.experiment[self.label]
        settings = {**flatten(self.sweep.set), **flatten(spec.set)}
        settings.update(
            {k: v for k, v in self.values.items() if k != EXPERIMENT_KEY and not self._stage_key(k)}
        )
        if "run_dir" in settings:
            raise SweepError(
                "`run_dir` is set by the sweep (<sweep_dir>/<point name>); set sweep_dir instead"
            )
        settings = {k: self._substitute(v, f"point {self.name}: `{k}`") for k, v in settings.items()}
        settings["run_dir"] = str(Path(self.sweep.sweep_dir) / self.name)
        overrides = self._train_overrides(spec.config, settings)
        try:
            config = load_config(TrainConfig, spec.config, overrides)
        except ConfigError as e:
            raise _one_line(e, f"point {self.name}") from None
        return Point(
            index, self.name, self.values, spec.config, tuple(overrides), config, tuple(self.needed),
            self._eval_overrides(config),
        )  # fmt: skip

    def _stage_key(self, key: str) -> bool:
        return key.split(".", 1)[0] in self.sweep.pipeline

    def _train_overrides(self, experiment: str, settings: dict[str, Any]) -> list[str]:
        """Plain keys as they are; keys through a list index become the whole edited list."""
        plain = {k: v for k, v in settings.items() if not any(p.isdigit() for p in k.split("."))}
        indexed = {k: v for k, v in settings.items() if k not in plain}
        if not indexed:
            return _overrides(plain)
        try:
            tree = load_config(TrainConfig, experiment, _overrides(plain)).model_dump(mode="json")
        except ConfigError as e:
            raise _one_line(e, f"point {self.name}") from None
        lists: dict[str, Any] = {}
        for key, value in indexed.items():
            list_key, rest = _split_at_index(key)
            if list_key not in lists:
                lists[list_key] = copy.deepcopy(_lookup(tree, list_key, key))
            _assign(lists[list_key], rest, value, key)
        return _overrides({**plain, **lists})

    def _substitute(self, value: Any, where: str) -> Any:
        """'{stage:NAME}' -> that stage run's output_dir (resolving and recording the stage)."""
        if isinstance(value, str):
            return STAGE_REF.sub(lambda m: str(self._stage(m.group(1), where, ()).output_dir), value)
        if isinstance(value, list):
            return [self._substitute(v, where) for v in value]
        if isinstance(value, dict):
            return {k: self._substitute(v, where) for k, v in value.items()}
        return value

    def _stage(self, name: str, where: str, chain: tuple[str, ...]) -> StageRun:
        if name not in self.sweep.pipeline:
            known = ", ".join(sorted(self.sweep.pipeline)) or "none"
            raise SweepError(f"{where}: {{stage:{name}}} names no pipeline stage (stages: {known})")
        if name in chain:
            raise SweepError(
                f"pipeline: stages read each other's output in a cycle: {' -> '.join((*chain, name))}"
            )
        spec = self.sweep.pipeline[name]
        own = {k: v for k, v in self.values.items() if k.startswith(f"{name}.")}
        settings = {**flatten(spec.set), **{k.split(".", 1)[1]: v for k, v in own.items()}}
        needs: list[StageRun] = []
        resolved = {
            k: self._stage_refs(v, needs, f"pipeline.{name}.{k}", (*chain, name)) for k, v in settings.items()
        }
        depends = {**{k: v for n in needs for k, v in self._stage_values(n).items()}, **own}
        ident = point_name(depends, self.shorts) if depends else "all"
        key = f"{name}/{ident}"
        if key not in self.stages:
            output_dir = Path(self.sweep.sweep_dir) / STAGES_DIR / name / ident
            resolved["output_dir"] = str(output_dir)
            overrides = _overrides(resolved)
            config = _load_stage(spec.stage, spec.config, overrides, f"stage {key}")
            self.stages[key] = StageRun(
                name, spec.stage, ident, output_dir, spec.config, tuple(overrides), config,
                tuple(n.key for n in needs),
            )  # fmt: skip
        if key not in self.needed:
            self.needed.append(key)
        return self.stages[key]

    def _stage_refs(self, value: Any, needs: list[StageRun], where: str, chain: tuple[str, ...]) -> Any:
        if isinstance(value, str):

            def output(m: re.Match) -> str:
                run = self._stage(m.group(1), where, chain)
                needs.append(run)
                return str(run.output_dir)

            return STAGE_REF.sub(output, value)
        if isinstance(value, list):
            return [self._stage_refs(v, needs, where, chain) for v in value]
        return value

    def _stage_values(self, run: StageRun) -> dict[str, Any]:
        """The grid values a stage run depends on: its own keys and, through its inputs, theirs."""
        out = {k: v for k, v in self.values.items() if k.startswith(f"{run.name}.")}
        for need in run.needs:
            out.update(self._stage_values(self.stages[need]))
        return out

    def _eval_overrides(self, config: TrainConfig) -> tuple[str, ...] | None:
        if self.sweep.eval is None:
            return None
        from ipt.eval.run import EvalConfig

        settings = {**flatten(self.sweep.eval), "model": config.run_dir, "output": f"{config.run_dir}/eval"}
        overrides = _overrides(settings)
        try:
            load_config(EvalConfig, None, overrides)
        except ConfigError as e:
            raise _one_line(e, f"point {self.name}: eval") from None
        return tuple(overrides)


def _load_stage(command: str, path: str | None, overrides: list[str], what: str) -> Config:
    module, cls = STAGE_SCHEMAS[command]
    try:
        return load_config(getattr(importlib.import_module(module), cls), path, overrides)
    except ConfigError as e:
        raise _one_line(e, what) from None


def _split_at_index(key: str) -> tuple[str, list[str]]:
    parts = key.split(".")
    i = next(i for i, p in enumerate(parts) if p.isdigit())
    return ".".join(parts[:i]), parts[i:]


def _lookup(tree: dict, dotted: str, key: str) -> list:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SweepError(f"grid key `{key}`: the experiment has no list `{dotted}`")
        node = node[part]
    if not isinstance(node, list):
        raise SweepError(f"grid key `{key}`: `{dotted}` is not a list, so `{key}` has no index")
    return node


def _assign(node: Any, parts: list[str], value: Any, key: str) -> None:
    """Set `value` at `parts` (list indices and mapping keys) inside `node`, in place."""
    *path, leaf = parts
    for part in path:
        node = _child(node, part, key)
    if isinstance(node, list):
        _child(node, leaf, key)
        node[int(leaf)] = value
    else:
        node[leaf] = value


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise SweepError(
                f"grid key `{key}`: index {part} is out of range (the list has {len(node)} items)"
            )
        return node[int(part)]
    if not isinstance(node, dict):
        raise SweepError(f"grid key `{key}`: `{part}` is inside a value that is not a mapping")
    return node.setdefault(part, {})
