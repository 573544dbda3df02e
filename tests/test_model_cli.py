"""`ipt model info` and `ipt convert` from the command line; FLOPs accounting."""

from __future__ import annotations

import numpy as np
import pytest

from ipt.cli import main as ipt_main
from ipt.model import load_model_config
from ipt.model.flops import flops_per_token, matmul_params, mean_attended_keys


def test_model_info_prints_params_and_flops(capsys):
    assert ipt_main(["model", "info", "ipt-500m", "--seq-len", "1024"]) == 0
    out = capsys.readouterr().out
    assert "501,007,872" in out and "FLOPs/token at seq_len 1024" in out
    assert ipt_main(["model", "info", "no-such-preset"]) == 2
    assert "ipt-1.3b" in capsys.readouterr().err


def test_attention_flops_count_causal_and_window():
    assert mean_attended_keys(4, None) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert mean_attended_keys(6, 2) == pytest.approx((1 + 2 + 2 + 2 + 2 + 2) / 6)
    llama = load_model_config("llama3-8b")
    # 6N + attention, the usual training estimate, for an 8B model at 8192 tokens
    n = matmul_params(llama)
    attn = 3 * 32 * 4 * 32 * 128 * (8193 / 2)
    assert flops_per_token(llama, 8192) == pytest.approx(6 * n + attn)
    assert flops_per_token(llama, 8192, training=False) == pytest.approx((6 * n + attn) / 3)
    mistral = load_model_config("mistral-7b-v0.1")
    assert flops_per_token(mistral, 32768) < flops_per_token(
        mistral.model_copy(update={"sliding_window": None}), 32768
    )


def test_convert_round_trip_from_the_command_line(tmp_path, capsys):
    import jax
    import transformers

    from ipt.model.store import load_model_config_dir, load_params

    config = transformers.MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
    )
    transformers.MistralForCausalLM(config).save_pretrained(tmp_path / "hf")
    assert (
        ipt_main(["convert", "direction=import", f"source={tmp_path / 'hf'}", f"output={tmp_path / 'ipt'}"])
        == 0
    )
    args = [
        "convert",
        "direction=export",
        f"source={tmp_path / 'ipt'}",
        f"output={tmp_path / 'out'}",
        "dtype=float32",
    ]
    assert ipt_main(args) == 0
    assert (
        ipt_main(["convert", "direction=import", f"source={tmp_path / 'out'}", f"output={tmp_path / 'ipt2'}"])
        == 0
    )
    a = load_params(tmp_path / "ipt", load_model_config_dir(tmp_path / "ipt"))
    b = load_params(tmp_path / "ipt2", load_model_config_dir(tmp_path / "ipt2"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert ipt_main(["convert", "direction=sideways", "source=a", "output=b"]) == 2
    assert "direction" in capsys.readouterr().err
