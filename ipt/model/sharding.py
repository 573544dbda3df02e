"""The one table that maps the model's logical axis names onto a device mesh.

Parameters carry logical names (`vocab`, `embed`, `mlp`, ...); batches use `batch` and `seq`.
`LogicalRules` turns a tuple of logical names into a `PartitionSpec` over the mesh axes, and
drops a mesh axis from a dimension it does not divide (a 1-head KV projection on an 8-way
tensor axis is replicated rather than rejected), so one rules table serves every model size.
Training, HF import, checkpoint restore, evaluation and generation all place arrays through it
(the table is configured as `mesh.rules`; see `ipt.train.mesh`), so a model lands on the same
shards whichever way it was loaded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ipt.model.config import ModelConfig
from ipt.model.modules import CausalLM, create_model, logical_axes
from ipt.model.store import abstract_params, model_from_params

log = logging.getLogger(__name__)

MeshAxes = str | list[str] | None

DEFAULT_RULES: list[tuple[str, MeshAxes]] = [
    ("batch", ["data", "fsdp"]),
    ("seq", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
]


class LogicalRules:
    """Logical axis names -> `PartitionSpec`s on one mesh."""

    def __init__(self, rules: Sequence[tuple[str, MeshAxes]], mesh: Mesh):
        self.mesh = mesh
        self.table: dict[str, tuple[str, ...]] = {}
        for logical, target in rules:
            axes = (target,) if isinstance(target, str) else tuple(target or ())
            self.table[logical] = tuple(a for a in axes if mesh.shape[a] > 1)

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> PartitionSpec:
        """The spec for one array; a mesh axis is used at most once and only where it divides the dim."""
        used: set[str] = set()
        out: list[str | tuple[str, ...] | None] = []
        for i, name in enumerate(logical):
            if name is None:
                out.append(None)
                continue
            if name not in self.table:
                raise KeyError(
                    f"logical axis {name!r} has no entry in mesh.rules (known: {sorted(self.table)})"
                )
            axes = tuple(a for a in self.table[name] if a not in used)
            if shape is not None:
                while axes and shape[i] % math.prod(self.mesh.shape[a] for a in axes):
                    log.info(
                        "dim %d (%s=%d) not divisible by %s; dropping %s", i, name, shape[i], axes, axes[-1]
                    )
                    axes = axes[:-1]
            used.update(axes)
            out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        return PartitionSpec(*out)

    def sharding(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical, shape))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def batch_sharding(self, ndim: int = 2) -> NamedSharding:
        """Inputs are `(batch, seq, ...)`: batch split over the data axes, the rest replicated."""
        return self.sharding(("batch", "seq", *([None] * (ndim - 2))))

    @property
    def batch_shards(self) -> int:
        """How many ways the batch dimension is split (the global batch must be a multiple)."""
        return math.prod(self.mesh.shape[a] for a in self.table.get("batch", ()))


def param_shardings(config: ModelConfig, rules: LogicalRules) -> dict:
    """Every parameter's `NamedSharding`, a pure dict shaped like the params (what training uses)."""
    return jax.tree.map(
        lambda spec, a: rules.sharding(tuple(spec), a.shape),
        nnx.to_pure_dict(logical_axes(config)),
        abstract_params(config),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def create_sharded_model(config: ModelConfig, rules: LogicalRules, seed: int = 0) -> CausalLM:
    """`create_model` with each parameter initialised straight into its shard (no host ever
    holds the whole model; the values are those of `create_model(config, seed)`)."""

    def init() -> dict:
        return nnx.to_pure_dict(nnx.state(create_model(config, seed), nnx.Param))

    return model_from_params(config, jax.jit(init, out_shardings=param_shardings(config, rules))())
