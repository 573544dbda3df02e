"""AdamW with a decay mask, global-norm clipping and a learning-rate schedule, all from optax.

The optimizer is wrapped in `optax.apply_if_finite`: a step whose gradients hold a NaN or Inf
changes nothing (parameters and moments stay as they were) and bumps a counter that the loop
reads to apply the configured policy (skip, or stop with a checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import optax
from pydantic import Field

from ipt.config import Config

# apply_if_finite accepts a non-finite update after this many in a row; the loop stops far earlier.
_NEVER_GIVE_UP = 2**30


class ScheduleConfig(Config):
    """Learning rate over optimizer steps."""

    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    peak_lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    final_lr_ratio: float = Field(0.1, ge=0, le=1, description="end lr as a share of peak (cosine, wsd)")
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="wsd: share of the run spent decaying after the stable phase"
    )
    decay_shape: Literal["linear", "cosine", "sqrt"] = Field("linear", description="wsd: decay curve")


class OptimizerConfig(Config):
    """AdamW hyper-parameters."""

    b1: float = Field(0.9, ge=0, lt=1)
    b2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    decay_embeddings: bool = Field(False, description="apply weight decay to embedding/LM-head matrices")
    clip_norm: float | None = Field(1.0, gt=0, description="global-norm clipping threshold; null = off")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)


def make_schedule(cfg: ScheduleConfig, total_steps: int) -> optax.Schedule:
    """warmup + cosine, warmup-stable-decay, or warmup + constant."""
    if cfg.warmup_steps >= total_steps and cfg.kind != "constant":
        raise ValueError(
            f"optimizer.schedule.warmup_steps ({cfg.warmup_steps}) must be below the run's steps ({total_steps})"
        )
    end = cfg.peak_lr * cfg.final_lr_ratio
    warmup = optax.linear_schedule(0.0, cfg.peak_lr, max(cfg.warmup_steps, 1))
    if cfg.kind == "constant":
        after: optax.Schedule = optax.constant_schedule(cfg.peak_lr)
    elif cfg.kind == "cosine":
        after = optax.cosine_decay_schedule(
            cfg.peak_lr, max(total_steps - cfg.warmup_steps, 1), alpha=cfg.final_lr_ratio
        )
    else:
        decay_steps = max(round(total_steps * cfg.decay_fraction), 1)
        stable_steps = max(total_steps - cfg.warmup_steps - decay_steps, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(cfg.peak_lr), _decay(cfg.decay_shape, cfg.peak_lr, end, decay_steps)],
            [stable_steps],
        )
    if cfg.warmup_steps == 0:
        return after
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def _decay(shape: str, start: float, end: float, steps: int) -> optax.Schedule:
    if shape == "linear":
        return optax.linear_schedule(start, end, steps)
    if shape == "cosine":
        return optax.cosine_decay_schedule(start, steps, alpha=end / start)

    def sqrt_decay(count: jax.Array) -> jax.Array:
        frac = jax.numpy.clip(count / steps, 0.0, 1.0)
        return end + (start - end) * (1.0 - jax.numpy.sqrt(frac))

    return sqrt_decay


def decay_mask(params: Any, logical_axes: Any, decay_embeddings: bool) -> Any:
    """True where weight decay applies: matrices, minus those with a `vocab` axis unless asked.

    `logical_axes` mirrors `params` (arrays or shape structs) with each leaf's `LogicalAxes`;
    vectors (norm scales, biases, also when stacked over `layers`) never decay.
    """

    def decays(p: Any, axes: Any) -> bool:
        matrix_dims = [n for n in axes.names if n != "layers"]  # stacked layers add a leading axis
        return len(matrix_dims) >= 2 and (decay_embeddings or "vocab" not in axes.names)

    return jax.tree.map(decays, params, logical_axes)


def make_optimizer(
    cfg: OptimizerConfig, total_steps: int, mask: Any | Callable[[Any], Any]
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The full transformation (clip -> AdamW, skipped on non-finite grads) and its schedule."""
    schedule = make_schedule(cfg.schedule, total_steps)
    parts = [] if cfg.clip_norm is None else [optax.clip_by_global_norm(cfg.clip_norm)]
    parts.append(
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask)
    )
    return optax.apply_if_finite(optax.chain(*parts), _NEVER_GIVE_UP), schedule
