"""`ipt model info CONFIG`: parameter count and FLOPs per token of a model config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ipt.config import ConfigError
from ipt.model.config import load_model_config, preset_names
from ipt.model.flops import flops_per_token
from ipt.model.modules import parameter_count


def describe(name: str, overrides: Sequence[str] = (), seq_len: int = 2048) -> str:
    config = load_model_config(name, tuple(overrides))
    params = parameter_count(config)
    embedding = config.vocab_size * config.hidden_size
    lines = [
        f"model: {name} ({config.architecture}, {config.num_hidden_layers} layers x {config.hidden_size})",
        f"parameters: {params:,} ({params / 1e6:.1f}M; {params - embedding:,} without the input embedding)",
        f"FLOPs/token at seq_len {seq_len}: training {flops_per_token(config, seq_len):.4g}, "
        f"inference {flops_per_token(config, seq_len, training=False):.4g}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="ipt model info", description=__doc__)
    parser.add_argument("config", help=f"YAML path or preset: {', '.join(preset_names())}")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--seq-len", type=int, default=2048, help="sequence length for attention FLOPs")
    args = parser.parse_args(argv)
    try:
        print(describe(args.config, args.overrides, args.seq_len))
    except ConfigError as e:
        print(f"ipt model info: error: {e}", file=sys.stderr)
        return 2
    return 0
