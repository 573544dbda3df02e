"""`ipt compile`: compile the configured train step for a TPU slice on this machine, and check it fits.

`jax.experimental.topologies.get_topology_desc` (with `libtpu` installed) describes a slice's
devices without owning them; the train step is lowered with abstract, sharded inputs and
compiled by the TPU compiler, whose memory analysis gives each chip's arguments, outputs and
temporaries. That is the same program `ipt train` would run there, so a config that fits here
fits on the slice (less fragmentation), and one that does not fit fails here in a minute
instead of after a queued-resource wait.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ipt.stage import run_stage
from ipt.train.config import TrainConfig

GIB = 1024**3

# HBM per chip and whether the slice name counts TensorCores (2 per chip) or chips.
CHIPS: dict[str, tuple[float, bool]] = {
    "v4": (32 * GIB, True),
    "v5p": (95 * GIB, True),
    "v5e": (16 * GIB, False),
    "v6e": (32 * GIB, False),
}
# chips -> physical shape: 3D tori for v4/v5p, 2D for v5e/v6e (from one full host of 4 chips up)
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
             128: "4x4x8", 256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}  # fmt: skip
SHAPES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


def topology_name(slice_name: str) -> tuple[str, str]:
    """`v5p-32` -> (`v5p`, `v5p:2x2x4`); `v5p:2x2x4` passes through."""
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)[-:](.+)", slice_name.strip().lower())
    if not m:
        raise ValueError(f"compile.topology={slice_name!r}: expected e.g. v5p-8, v5e-16, v6e-8 or v5p:2x2x1")
    kind, size = m.groups()
    if "x" in size:
        return kind, f"{kind}:{size}"
    counts_cores = CHIPS[kind][1]
    chips = int(size) // 2 if counts_cores else int(size)
    shapes = SHAPES_3D if kind in ("v4", "v5p") else SHAPES_2D
    if chips not in shapes:
        raise ValueError(
            f"compile.topology={slice_name!r}: unknown slice size; known chip counts {sorted(shapes)}"
        )
    return kind, f"{kind}:{shapes[chips]}"


@dataclass
class FitReport:
    slice_name: str
    device_kind: str
    num_devices: int
    hbm_per_device: float
    arguments: float
    outputs: float
    aliased: float
    temporaries: float
    code: float
    compiled_flops: float
    model_flops: float

    @property
    def total(self) -> float:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    def table(self) -> str:
        rows = [
            ("arguments (state + batch)", self.arguments),
            ("outputs", self.outputs),
            ("aliased (donated state)", -self.aliased),
            ("temporaries", self.temporaries),
            ("generated code", self.code),
            ("total", self.total),
        ]
        lines = [f"{'per chip':<28}{'GiB':>9}"]
        lines += [f"  {name:<26}{value / GIB:>9.2f}" for name, value in rows]
        lines.append(
            f"  {'HBM':<26}{self.hbm_per_device / GIB:>9.2f}   ({100 * self.total / self.hbm_per_device:.0f}% used)"
        )
        lines.append(
            f"compiled FLOPs per step per chip: {self.compiled_flops:.4g}; "
            f"model FLOPs per step per chip: {self.model_flops:.4g}"
        )
        return "\n".join(lines)


def compile_for_slice(cfg: TrainConfig) -> FitReport:
    """Lower and compile the train step for `cfg.compile.topology`; return its memory and FLOPs."""
    from jax.experimental import topologies

    from ipt.model.flops import flops_per_token
    from ipt.train.run import Trainer

    if not cfg.compile.topology:
        raise ValueError("set compile.topology, e.g. compile.topology=v5p-8")
    kind, name = topology_name(cfg.compile.topology)
    # Describing a topology opens no chips, so it may run beside another libtpu user (a training
    # job on this TPU VM, or a second compile); libtpu's lockfile would refuse that by default.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        topo = topologies.get_topology_desc(
            platform="tpu", topology_name=name, num_slices=cfg.compile.num_slices
        )
    except Exception as e:  # libtpu missing or a shape the compiler does not know
        raise RuntimeError(
            f"cannot describe TPU topology {name!r} ({type(e).__name__}: {e}); "
            "is libtpu installed (`pip install 'ipt[tpu]'`)?"
        ) from e
    devices = list(topo.devices)
    if cfg.model.dtype == "auto":  # `auto` resolves on this (CPU) host; the slice computes in bf16
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "bfloat16"})})
    trainer = Trainer(cfg, devices=devices)
    sharding = trainer.rules.batch_sharding()
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding) for k in _batch_keys()}
    compiled = trainer.train_step.lower(trainer.abstract, batch, trainer.parts.rest).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    chips = len({tuple(d.coords) for d in devices}) * max(cfg.compile.num_slices, 1)
    hbm = CHIPS[kind][0] * chips / len(devices)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    return FitReport(
        slice_name=cfg.compile.topology,
        device_kind=devices[0].device_kind,
        num_devices=len(devices),
        hbm_per_device=hbm,
        arguments=mem.argument_size_in_bytes,
        outputs=mem.output_size_in_bytes,
        aliased=mem.alias_size_in_bytes,
        temporaries=mem.temp_size_in_bytes,
        code=mem.generated_code_size_in_bytes,
        compiled_flops=float(cost.get("flops", 0.0)),
        model_flops=flops_per_token(cfg.model, cfg.data.seq_len) * tokens / len(devices),
    )


def _batch_keys() -> tuple[str, ...]:
    from ipt.data.packing import BATCH_KEYS

    return BATCH_KEYS


def run_compile(cfg: TrainConfig) -> int:
    try:
        report = compile_for_slice(cfg)
    except Exception as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
            print(f"ipt compile: does NOT fit on {cfg.compile.topology}: the TPU compiler ran out of HBM:\n{e}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if isinstance(e, ValueError | RuntimeError):  # a slice name, mesh or batch that cannot work
            print(f"ipt compile: error: {e}", file=sys.stderr)
            return 2
        raise
    return verdict(cfg, report)


def verdict(cfg: TrainConfig, report: FitReport) -> int:
    """Print the memory table; 0 if it fits within `compile.hbm_margin` of HBM, else 1 with advice."""
    m = cfg.model
    print(
        f"ipt compile: train step of a {m.num_hidden_layers}-layer d={m.hidden_size} model, "
        f"batch {cfg.data.batch_size} x {cfg.data.seq_len} (grad_accum {cfg.grad_accum}, remat {m.remat}) "
        f"on {report.slice_name}: {report.num_devices} x {report.device_kind}"
    )
    print(report.table())
    limit = cfg.compile.hbm_margin * report.hbm_per_device
    if report.total > limit:
        print(
            f"ipt compile: does NOT fit: {report.total / GIB:.2f} GiB per chip > {limit / GIB:.2f} GiB "
            f"({cfg.compile.hbm_margin:.0%} of HBM). Use a bigger slice, model.remat=full, a larger "
            "grad_accum, or more fsdp sharding.",
            file=sys.stderr,
        )
        return 1
    print(f"ipt compile: fits ({report.total / GIB:.2f} of {limit / GIB:.2f} GiB per chip usable)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(TrainConfig, run_compile, list(argv or []), prog="ipt compile")
