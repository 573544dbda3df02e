"""`TrainConfig`: everything one training run needs, as one typed YAML document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ipt.config import Config
from ipt.data.pipeline import DataConfig
from ipt.model import ModelConfig
from ipt.train.checkpoint import CheckpointConfig
from ipt.train.mesh import MeshConfig
from ipt.train.metrics import MetricsConfig
from ipt.train.optim import OptimizerConfig


class InitConfig(Config):
    """Where the first parameters come from when the run directory holds no checkpoint."""

    source: Literal["scratch", "model_dir", "hf"] = Field(
        "scratch",
        description="scratch: random; model_dir: an ipt model directory; hf: a Hugging Face safetensors directory",
    )
    path: str | None = Field(None, description="the model directory (for model_dir / hf)")

    @model_validator(mode="after")
    def _path_given(self) -> InitConfig:
        if self.source != "scratch" and not self.path:
            raise ValueError(f"init.source={self.source} needs init.path")
        return self


class TrainEvalConfig(Config):
    """Evaluation during training: held-out loss on `data.eval_sources` and lm-eval tasks."""

    every: int | None = Field(None, gt=0, description="evaluate every N steps (null: never)")
    batches: int | None = Field(None, gt=0, description="cap on held-out loss batches per eval source")
    tasks: list[str] = Field(
        default_factory=list, description="lm-eval tasks scored at each eval (e.g. paper)"
    )
    limit: float | None = Field(None, gt=0, description="documents per task (a fraction if below 1)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (default: each task's own)")
    include_path: str | None = Field(None, description="a directory of your own lm-eval task YAMLs")
    tokenizer: str | None = Field(None, description="default: the tokenizer of data.sources[0]")
    max_length: int | None = Field(
        None, gt=1, description="tokens per scoring request (default: data.seq_len)"
    )
    batch_rows: int = Field(8, gt=0, description="rows per scoring call (a multiple of the batch shards)")

    @field_validator("tasks", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class CompileConfig(Config):
    """Ahead-of-time compilation for a TPU slice (`ipt compile`)."""

    topology: str | None = Field(None, description="e.g. v5p-8, v5p-32, v5e-16, v4-8 (or v5p:2x2x1)")
    num_slices: int = Field(1, gt=0, description="slices joined over DCN")
    hbm_margin: float = Field(0.95, gt=0, le=1, description="fit if total <= margin * HBM per chip")


class TrainConfig(Config):
    """Train a language model on a device mesh (see docs/training.md)."""

    run_dir: str = Field(description="checkpoints, metrics and the config go here; a rerun resumes from it")
    model: ModelConfig
    data: DataConfig
    steps: int = Field(gt=0, description="optimizer steps in the whole run")
    seed: int = Field(0, ge=0, description="parameter initialisation seed")
    grad_accum: int = Field(
        1, gt=0, description="micro-batches per step (data.batch_size is split into them)"
    )
    z_loss: float = Field(0.0, ge=0, description="weight of the z-loss (logsumexp^2); 0 = off")
    nonfinite: Literal["skip", "stop"] = Field(
        "stop", description="a step with NaN/Inf gradients: skip it, or stop with a checkpoint"
    )
    max_skipped_in_a_row: int = Field(10, gt=0, description="skip policy: stop after this many in a row")
    allow_config_change: bool = Field(
        False, description="resume checkpoints under a config that changes the computation (ipt.train.resume)"
    )
    eval: TrainEvalConfig = Field(default_factory=TrainEvalConfig)
    distributed: Literal["auto", "on", "off"] = Field(
        "auto", description="call jax.distributed.initialize(); auto: when a multi-host launcher is detected"
    )
    init: InitConfig = Field(default_factory=InitConfig)
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    compile: CompileConfig = Field(default_factory=CompileConfig)
    target: str | None = Field(None, description="the hardware this experiment is meant for (documentation)")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        if self.data.batch_size % self.grad_accum:
            raise ValueError(
                f"data.batch_size={self.data.batch_size} is not divisible by grad_accum={self.grad_accum}"
            )
        if self.model.attention == "splash":
            from ipt.model.attention import splash_length_problem

            problem = splash_length_problem(self.data.seq_len)
            if problem:
                raise ValueError(f"data.seq_len={self.data.seq_len}: {problem} (model.attention)")
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_position_embeddings="
                f"{self.model.max_position_embeddings}"
            )
        return self
