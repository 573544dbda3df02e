"""Metrics: peak FLOP/s for MFU (the table matches the device kinds JAX reports; CPU is measured or
configured), and every record reaching JSONL, TensorBoard and W&B."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from ipt.train.metrics import MetricsConfig, MetricsWriter, table_peak_flops, total_peak_flops


@pytest.mark.parametrize(
    ("kind", "peak"),
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),  # v5e
        ("TPU v5", 459e12),  # v5p
        ("TPU v6 lite", 918e12),  # v6e
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
    ],
)
def test_peak_table_matches_reported_device_kinds(kind, peak):
    assert table_peak_flops(kind) == peak


def test_total_peak_counts_chips_and_refuses_unknown_kinds():
    chips = [SimpleNamespace(device_kind="TPU v5", platform="tpu")] * 4
    assert total_peak_flops(chips) == (4 * 459e12, "table (TPU v5)")
    assert total_peak_flops(chips, per_device=1e12) == (4e12, "configured")
    with pytest.raises(ValueError, match=r"set metrics\.peak_flops"):
        total_peak_flops([SimpleNamespace(device_kind="Gaudi 3", platform="hpu")])
    # CPU: the fake devices share one host's cores, so a measured or configured peak counts once
    assert total_peak_flops(jax.devices(), per_device=2e11) == (2e11, "configured")
    peak, source = total_peak_flops(jax.devices())
    assert source.startswith("measured") and peak > 1e9


def _tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Read TensorBoard event files (TFRecord framing around `Event` protos) without TensorFlow."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])  # after length + its crc
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_each_record_reaches_jsonl_tensorboard_and_wandb(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # a real W&B run, written locally
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = MetricsConfig(progress_bar=False, tensorboard=True, wandb_project="ipt-test")
    writer = MetricsWriter(tmp_path, cfg, total_steps=3, start_step=0, run_config={"steps": 3})
    for step in (1, 2, 3):
        writer.write(step, {"loss": np.float32(6.0 / step), "lr": 1e-3 * step, "finite": True})
    writer.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 6.0), (2, 3.0), (3, 2.0)]
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["loss"] == [(1, 6.0), (2, 3.0), (3, 2.0)]
    assert [s for s, _ in scalars["lr"]] == [1, 2, 3]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "no offline W&B run was written"
    assert wandb.run is None  # finished
