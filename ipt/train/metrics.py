"""Training metrics: throughput and MFU, and the sinks (progress bar, JSONL, TensorBoard, W&B).

MFU = model FLOPs per second / peak FLOPs of all devices. Peaks are dense bf16 matmul figures
per chip from the vendors' data sheets; a CPU has no data sheet, so its peak is measured with
a f32 matmul (or set in the config), once for the whole host (fake CPU devices share cores).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from pydantic import Field

from ipt.config import Config

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per chip, matched against `device.device_kind` (first match wins).
PEAK_FLOPS_PER_CHIP: list[tuple[str, float]] = [
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM; PCIe parts are lower: set metrics.peak_flops
    ("A100", 312e12),
]


class MetricsConfig(Config):
    """Where metrics go and how MFU is computed."""

    log_every: int = Field(1, gt=0, description="write a metrics record every N steps")
    progress_bar: bool = Field(True, description="a tqdm bar on the console (process 0 only)")
    tensorboard: bool = Field(True, description="TensorBoard event files in <run_dir>/tensorboard")
    wandb_project: str | None = Field(
        None, description="log to this Weights & Biases project (needs `wandb`)"
    )
    peak_flops: float | None = Field(
        None, gt=0, description="peak FLOP/s per device for MFU; default: the table, or measured on CPU"
    )


def table_peak_flops(device_kind: str) -> float | None:
    for key, peak in PEAK_FLOPS_PER_CHIP:
        if key.lower() in device_kind.lower():
            return peak
    return None


def measure_cpu_peak_flops(n: int = 1024, reps: int = 5) -> float:
    """Best-of-`reps` f32 matmul FLOP/s on one CPU device (the whole host's cores)."""
    dev = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), dev)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def total_peak_flops(devices: list[jax.Device], per_device: float | None = None) -> tuple[float, str]:
    """Peak FLOP/s of all `devices` together, and where the figure came from."""
    kind = devices[0].device_kind
    if per_device is not None:
        count = 1 if devices[0].platform == "cpu" else len(devices)
        return per_device * count, "configured"
    if devices[0].platform == "cpu":
        return measure_cpu_peak_flops(), "measured f32 matmul on this host"
    peak = table_peak_flops(kind)
    if peak is None:
        raise ValueError(f"no peak FLOP/s known for device kind {kind!r}; set metrics.peak_flops")
    return peak * len(devices), f"table ({kind})"


class Throughput:
    """Step time from consecutive completions, tokens/s and MFU."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._last: float | None = None

    def tick(self) -> dict[str, float]:
        now = time.perf_counter()
        last, self._last = self._last, now
        if last is None:
            return {}
        dt = now - last
        tps = self.tokens_per_step / dt
        return {"step_time": dt, "tokens_per_s": tps, "mfu": tps * self.flops_per_token / self.peak_flops}

    def reset(self) -> None:
        """Forget the last completion (after a pause such as eval, so it is not counted as step time)."""
        self._last = None


METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's metrics records in step order (train and eval records are separate lines).

    A resumed run redoes the steps after its checkpoint; the writer drops the interrupted run's
    records of those steps when it opens the file, so each step's values appear once."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _drop_records_after(path: Path, step: int) -> int:
    """Rewrite `path` (atomically) without the records of steps after `step`; returns how many went."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            keep = json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
            keep = False
        if keep:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return len(lines) - len(kept)


class MetricsWriter:
    """One record per logged step to every configured sink; only process 0 writes.

    Opening drops records of steps after `start_step` (a resumed run redoes them), so
    `metrics.jsonl` never holds two values of one step."""

    def __init__(
        self, run_dir: Path, cfg: MetricsConfig, total_steps: int, start_step: int, run_config: dict
    ):
        self.active = jax.process_index() == 0
        self.cfg = cfg
        self._jsonl = self._tb = self._wandb = self._bar = None
        if not self.active:
            return
        dropped = _drop_records_after(run_dir / METRICS_FILE, start_step)
        if dropped:
            log.info("dropped %d metrics records after step %d (redone by this run)", dropped, start_step)
        self._jsonl = (run_dir / METRICS_FILE).open("a", encoding="utf-8")
        if cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if cfg.wandb_project:
            import wandb

            self._wandb = wandb.init(
                project=cfg.wandb_project,
                dir=str(run_dir),
                config=run_config,
                resume="allow",
                id=run_dir.name,
            )
        if cfg.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)
        if self._bar is not None:
            self._bar.n = step
            shown = {k: f"{record[k]:.4g}" for k in ("loss", "tokens_per_s", "mfu") if k in record}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.refresh()

    def message(self, text: str) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        for sink in (self._bar, self._tb, self._jsonl):
            if sink is not None:
                sink.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return v
