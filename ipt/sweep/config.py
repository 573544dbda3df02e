"""`SweepConfig`: the sweep file's schema (an experiment, a grid, optional pipeline stages, a launcher).

Paths in a sweep file (experiment configs, stage configs, sweep_dir) are relative to the
current directory, like every path inside experiment configs, so one sweep file serves both
a local run and the launcher lines printed for a cluster checkout of the same repository.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from ipt.config import Config

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STAGE_NAME = re.compile(r"[a-z][a-z0-9_]*")
SINGLE_EXPERIMENT = "default"


class ExperimentSpec(Config):
    """One experiment config a point can start from, with overrides of its own."""

    config: str = Field(description="the experiment YAML (e.g. configs/experiments/quickstart.yaml)")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for this experiment's points")


class StageSpec(Config):
    """A pipeline stage run per point before training; grid keys `<stage name>.<key>` vary it."""

    stage: Literal["synthesize", "cook", "tokenize"] = Field(description="the ipt command")
    config: str | None = Field(None, description="a YAML config for the stage")
    set: dict[str, Any] = Field(
        default_factory=dict, description="its keys; '{stage:NAME}' is replaced by stage NAME's output_dir"
    )


class TpuLaunch(Config):
    """`launch=tpu`: the arguments of launch/tpu.py that do not come from the point."""

    project: str | None = None
    zone: str | None = None
    bucket: str | None = Field(None, description="gs://bucket/prefix for checkpoints")
    repo: str | None = Field(None, description="git URL of this repository")
    ref: str | None = Field(None, description="commit or tag to run")
    name_prefix: str = Field("ipt-sweep", description="queued-resource names are <prefix>-<index>")
    slice: str | None = Field(None, description="override the experiments' `target` slice, e.g. v5p-64")
    slices: int = Field(1, gt=0)
    spot: bool = False


class GpuLaunch(Config):
    """`launch=gpu`: launch/gpu.py's options (no hosts: one machine)."""

    hosts: list[str] = Field(
        default_factory=list, description="nodes of a multi-node run (first = coordinator)"
    )
    repo_dir: str = Field("ipt", description="the repository on every node")
    port: int = Field(8476, gt=0)


class SlurmLaunch(Config):
    """`launch=slurm`: one `sbatch --wrap` line per point."""

    partition: str | None = None
    nodes: int = Field(1, gt=0)
    gpus_per_node: int | None = Field(None, gt=0)
    time: str | None = Field(None, description="time limit, e.g. 24:00:00")
    extra: list[str] = Field(default_factory=list, description="more sbatch options, e.g. --account=me")


class SweepConfig(Config):
    """Run an experiment over a grid of overrides, one run directory per point (docs/sweep.md)."""

    experiment: dict[str, ExperimentSpec] = Field(
        description="an experiment YAML, or {label: YAML or {config, set}} to vary the experiment itself"
    )
    sweep_dir: str = Field(description="each point runs in <sweep_dir>/<point name>; summaries go here")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides applied to every point")
    grid: dict[str, Any] = Field(
        default_factory=dict, description="key: [values]; the points are the product"
    )
    zip: list[dict[str, Any]] = Field(
        default_factory=list, description="groups of equal-length lists varied together (one axis each)"
    )
    pipeline: dict[str, StageSpec] = Field(default_factory=dict, description="stages run before training")
    eval: dict[str, Any] | None = Field(None, description="`ipt eval` keys run on each finished point")
    seed_keys: list[str] = Field(["seed"], description="grid keys averaged over in the seed table")
    final_loss_window: int = Field(3, gt=0, description="final train loss = mean of the last N logged losses")
    fail_fast: bool = Field(False, description="stop at the first failed point (default: run the others)")
    launch: Literal["local", "tpu", "gpu", "slurm"] = Field(
        "local", description="local: run the points here; tpu | gpu | slurm: print one job per point"
    )
    summarize_only: bool = Field(False, description="only write the summary of what the run dirs hold")
    tpu: TpuLaunch = Field(default_factory=TpuLaunch)
    gpu: GpuLaunch = Field(default_factory=GpuLaunch)
    slurm: SlurmLaunch = Field(default_factory=SlurmLaunch)

    @field_validator("experiment", mode="before")
    @classmethod
    def _one_or_labelled(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {SINGLE_EXPERIMENT: {"config": value}}
        if isinstance(value, dict):
            return {k: {"config": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("experiment")
    @classmethod
    def _labels(cls, value: dict[str, ExperimentSpec]) -> dict[str, ExperimentSpec]:
        if not value:
            raise ValueError("name at least one experiment config")
        for label in value:
            if not LABEL.fullmatch(label):
                raise ValueError(f"experiment label {label!r}: use letters, digits, '.', '_' and '-'")
        return value

    @field_validator("pipeline")
    @classmethod
    def _stage_names(cls, value: dict[str, StageSpec]) -> dict[str, StageSpec]:
        for name in value:
            if not STAGE_NAME.fullmatch(name):
                raise ValueError(f"stage name {name!r}: use lowercase letters, digits and '_', from a letter")
        return value
