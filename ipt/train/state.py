"""The train state: parameters and optimizer state as plain pytrees, placed on the mesh.

An NNX model is split once into its graph (static) and its parameters. Parameters live as a
pure nested dict of arrays, so optax, Orbax and `jax.jit` see an ordinary pytree; the step
merges them back into a module to run the forward pass. Shardings come from each parameter's
logical axis names (`out_sharding` metadata) through the rules table, and initialisation runs
under `jax.jit` with those shardings as outputs, so no host ever holds the full model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx import traversals
from jax.sharding import NamedSharding

from ipt.train.mesh import LogicalRules

ModelBuilder = Callable[[int], nnx.Module]  # seed -> model
TrainState = dict[str, Any]  # {"step": int32 scalar, "params": dict, "opt_state": optax state}


@dataclasses.dataclass(frozen=True)
class LogicalAxes:
    """One parameter's logical axis names (a pytree leaf, unlike a bare tuple)."""

    names: tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """What the step needs from a model: its graph, parameter shapes and their logical axes."""

    graphdef: nnx.GraphDef
    params: dict  # ShapeDtypeStructs
    axes: dict  # LogicalAxes leaves
    rest: nnx.State  # non-parameter variables (usually empty)


def _build(build: ModelBuilder, seed: int) -> nnx.Module:
    with nnx.use_eager_sharding(False):
        return build(seed)


def model_parts(build: ModelBuilder) -> ModelParts:
    """Trace the model's construction without allocating it."""
    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: _build(build, 0)), nnx.Param, ...)
    axes = traversals.unflatten_mapping(
        {
            path: LogicalAxes(tuple(var.get_metadata().get("out_sharding") or (None,) * var.value.ndim))
            for path, var in nnx.to_flat_state(params)
        }
    )
    return ModelParts(graphdef, nnx.to_pure_dict(params), axes, rest)


def param_shardings(parts: ModelParts, rules: LogicalRules) -> dict:
    return jax.tree.map(lambda p, a: rules.sharding(a.names, p.shape), parts.params, parts.axes)


def init_params(build: ModelBuilder, seed: int, shardings: dict) -> dict:
    """Initialise parameters directly into their shards (same values on any mesh)."""

    def init() -> dict:
        return nnx.to_pure_dict(nnx.state(_build(build, seed), nnx.Param))

    return jax.jit(init, out_shardings=shardings)()


def opt_state_shardings(tx: optax.GradientTransformation, params: dict, shardings: dict, rules: LogicalRules):
    """Moments follow their parameter's sharding; counters and flags are replicated."""
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_map_params(
        tx,
        lambda _, s: s,
        abstract,
        shardings,
        transform_non_params=lambda _: rules.replicated(),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def state_shardings(tx: optax.GradientTransformation, parts: ModelParts, rules: LogicalRules) -> TrainState:
    shardings = param_shardings(parts, rules)
    return {
        "step": rules.replicated(),
        "params": shardings,
        "opt_state": opt_state_shardings(tx, parts.params, shardings, rules),
    }


def abstract_state(tx: optax.GradientTransformation, parts: ModelParts, shardings: TrainState) -> TrainState:
    """Shapes, dtypes and shardings of the full state (the target for AOT compiles and restores)."""
    shapes = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": parts.params,
        "opt_state": jax.eval_shape(tx.init, parts.params),
    }
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def init_state(
    build: ModelBuilder,
    seed: int,
    tx: optax.GradientTransformation,
    shardings: TrainState,
    params: dict | None = None,
) -> TrainState:
    """A fresh state; `params` (already placed) replaces random initialisation, e.g. for an imported model."""
    if params is None:
        params = init_params(build, seed, shardings["params"])
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}
