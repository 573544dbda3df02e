"""The loss and the jitted train/eval steps.

The loss is the mean next-token cross-entropy over tokens whose `loss_mask` is 1: summed per
micro-batch and divided by the target-token count of the whole batch, so gradient accumulation
over micro-batches (a `lax.scan`) gives the same update as one large batch. An optional z-loss
(`weight * logsumexp(logits)^2`, same normalisation) keeps the softmax normaliser near 1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ipt.data.packing import BATCH_KEYS
from ipt.model.attention import kernel_layout
from ipt.train.mesh import LogicalRules
from ipt.train.state import ModelParts, TrainState

Batch = dict[str, jax.Array]


def token_losses(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, ...]:
    """Sums over masked tokens of cross-entropy and of logsumexp^2, and the token count (all f32)."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    mask = loss_mask.astype(jnp.float32)
    return jnp.sum((lse - target_logit) * mask), jnp.sum(jnp.square(lse) * mask), jnp.sum(mask)


def _forward(parts: ModelParts, params: dict, rest: Any, batch: Batch, rules: LogicalRules) -> jax.Array:
    model = nnx.merge(parts.graphdef, params, rest)
    with kernel_layout(rules.mesh, rules.spec):  # fused attention kernels get per-shard blocks
        return model(batch["inputs"], batch["positions"], batch["segment_ids"])


def _split_micro(batch: Batch, num_micro: int, rules: LogicalRules) -> Batch:
    """(B, L) -> (A, B/A, L), taking rows with stride A so each micro-batch keeps the batch sharding."""

    def split(x: jax.Array) -> jax.Array:
        b = x.shape[0]
        y = x.reshape(b // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, *rules.spec(("batch", "seq", *([None] * (x.ndim - 2)))))
        return jax.lax.with_sharding_constraint(y, NamedSharding(rules.mesh, spec))

    return jax.tree.map(split, batch)


def make_train_step(
    parts: ModelParts,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    rules: LogicalRules,
    state_shardings: TrainState,
    *,
    grad_accum: int = 1,
    z_loss: float = 0.0,
):
    """A jitted `(state, batch, rest) -> (state, metrics)`; the state's buffers are donated."""
    param_shardings = state_shardings["params"]

    def train_step(state: TrainState, batch: Batch, rest: Any) -> tuple[TrainState, dict]:
        params = state["params"]
        total = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)

        def micro_loss(p: dict, mb: Batch) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            ce, zz, _ = token_losses(_forward(parts, p, rest, mb, rules), mb["targets"], mb["loss_mask"])
            return (ce + z_loss * zz) / total, (ce, zz)

        grad_fn = jax.grad(micro_loss, has_aux=True)
        if grad_accum == 1:
            grads, (ce, zz) = grad_fn(params, batch)
        else:

            def body(carry, mb):
                acc, ce_acc, zz_acc = carry
                g, (ce, zz) = grad_fn(params, mb)
                acc = jax.tree.map(jnp.add, acc, g)
                acc = jax.lax.with_sharding_constraint(acc, param_shardings)
                return (acc, ce_acc + ce, zz_acc + zz), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            init = (jax.lax.with_sharding_constraint(zeros, param_shardings), 0.0, 0.0)
            (grads, ce, zz), _ = jax.lax.scan(body, init, _split_micro(batch, grad_accum, rules))
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)

        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        applied = state["step"] + 1 - opt_state.total_notfinite  # the schedule counts applied updates
        metrics = {
            "loss": ce / total,
            "z_loss": zz / total,
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(new_params),
            "lr": schedule(applied - 1),
            "target_tokens": total,
            "finite": opt_state.last_finite,
            "skipped_total": opt_state.total_notfinite,
        }
        return {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}, metrics

    replicated = rules.replicated()
    batch_shardings = {k: rules.batch_sharding() for k in BATCH_KEYS}
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )


def make_eval_step(parts: ModelParts, rules: LogicalRules, param_shardings: dict):
    """A jitted `(params, batch, rest) -> (sum of cross-entropy, target-token count)`."""

    def eval_step(params: dict, batch: Batch, rest: Any) -> tuple[jax.Array, jax.Array]:
        ce, _, count = token_losses(
            _forward(parts, params, rest, batch, rules), batch["targets"], batch["loss_mask"]
        )
        return ce, count

    replicated = rules.replicated()
    batch_shardings = {k: rules.batch_sharding() for k in BATCH_KEYS}
    return jax.jit(
        eval_step,
        in_shardings=(param_shardings, batch_shardings, replicated),
        out_shardings=(replicated, replicated),
    )
