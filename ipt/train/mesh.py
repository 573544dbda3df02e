"""The device mesh: its axes (per slice and across slices) and how it is built.

Arrays are placed on it by the model's one logical-axis table, `ipt.model.sharding.LogicalRules`
(re-exported here for the trainer); `mesh.rules` configures that table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh
from pydantic import Field, field_validator, model_validator

from ipt.config import Config
from ipt.model.sharding import DEFAULT_RULES, LogicalRules, MeshAxes

__all__ = ["DEFAULT_RULES", "LogicalRules", "MeshConfig", "make_mesh", "resolve_axis_sizes"]


class MeshConfig(Config):
    """Mesh axes (within a slice, over ICI) and, for multi-slice runs, their DCN factors."""

    axes: dict[str, int] = Field(
        default_factory=lambda: {"data": 1, "fsdp": -1, "tensor": 1},
        description="axis name -> size, in order; one size may be -1 (the remaining devices)",
    )
    dcn: dict[str, int] = Field(
        default_factory=dict,
        description="axis name -> number of slices along it (multi-slice); unnamed axes are 1",
    )
    rules: list[tuple[str, MeshAxes]] = Field(
        default_factory=lambda: list(DEFAULT_RULES),
        description="logical axis -> mesh axis (or list of axes, or null = replicated)",
    )

    @field_validator("axes")
    @classmethod
    def _sizes(cls, axes: dict[str, int]) -> dict[str, int]:
        if not axes:
            raise ValueError("at least one mesh axis is required")
        if sum(1 for s in axes.values() if s == -1) > 1:
            raise ValueError(f"at most one axis may be -1, got {axes}")
        bad = {k: s for k, s in axes.items() if s == 0 or s < -1}
        if bad:
            raise ValueError(f"axis sizes must be positive or -1, got {bad}")
        return axes

    @model_validator(mode="after")
    def _known_axes(self) -> MeshConfig:
        unknown = sorted(set(self.dcn) - set(self.axes))
        if unknown:
            raise ValueError(f"dcn names axes {unknown} that are not in mesh.axes {list(self.axes)}")
        for logical, target in self.rules:
            for axis in [target] if isinstance(target, str) else target or []:
                if axis not in self.axes:
                    raise ValueError(
                        f"rule {logical!r} -> {target!r} names mesh axis {axis!r}, "
                        f"which is not in mesh.axes {list(self.axes)}"
                    )
        return self


def resolve_axis_sizes(axes: dict[str, int], num_devices: int) -> dict[str, int]:
    """Replace a -1 with the remaining devices and check the product is `num_devices`."""
    known = math.prod(s for s in axes.values() if s != -1)
    sizes = dict(axes)
    for name, size in axes.items():
        if size == -1:
            if num_devices % known:
                raise ValueError(f"mesh axes {axes}: {num_devices} devices are not divisible by {known}")
            sizes[name] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"mesh axes {axes} hold {math.prod(sizes.values())} devices, but {num_devices} are available"
        )
    return sizes


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A GSPMD (Auto axes) mesh over `devices` (default: all), hybrid ICI x DCN when `dcn` is set."""
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(cfg.axes)
    dcn = [cfg.dcn.get(n, 1) for n in names]
    num_slices = math.prod(dcn)
    if len(devices) % num_slices:
        raise ValueError(f"mesh.dcn {cfg.dcn}: {len(devices)} devices do not split into {num_slices} slices")
    ici = resolve_axis_sizes(cfg.axes, len(devices) // num_slices)
    ici_shape = [ici[n] for n in names]
    if num_slices > 1:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn, devices=devices)
    elif devices[0].platform == "cpu":
        grid = np.asarray(devices).reshape(ici_shape)
    else:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(ici_shape, devices=devices)
    return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))
