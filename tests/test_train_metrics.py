"""Peak FLOP/s for MFU: the table matches the device kinds JAX reports; CPU is measured or configured."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import pytest

from ipt.train.metrics import table_peak_flops, total_peak_flops


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
