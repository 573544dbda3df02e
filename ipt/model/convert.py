"""`ipt convert`: Hugging Face directory <-> ipt model directory.

ipt convert direction=import source=HF_DIR output=IPT_DIR [param_dtype=float32]
ipt convert direction=export source=IPT_DIR output=HF_DIR [dtype=bfloat16] [tokenizer=TOK_DIR]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from ipt.config import Config
from ipt.stage import run_stage


class ConvertConfig(Config):
    """Convert a checkpoint between Hugging Face (safetensors) and ipt (config.yaml + Orbax)."""

    direction: Literal["import", "export"]
    source: str = Field(description="import: HF model directory; export: ipt model directory")
    output: str = Field(description="directory to create (must not exist)")
    param_dtype: Literal["float32", "bfloat16"] = Field("float32", description="import: ipt parameter dtype")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16", description="export: safetensors dtype"
    )
    tokenizer: str | None = Field(None, description="export: HF tokenizer directory to copy in")
    max_shard_gb: float = Field(5.0, gt=0, description="export: largest safetensors shard, in GB")


def convert(cfg: ConvertConfig) -> int:
    from ipt.model import hf
    from ipt.model.store import load_model_config_dir, load_params

    if cfg.direction == "import":
        out = hf.import_hf(cfg.source, cfg.output, param_dtype=cfg.param_dtype)
    else:
        config = load_model_config_dir(cfg.source)
        out = hf.export_hf(
            config,
            load_params(cfg.source, config),
            cfg.output,
            dtype=cfg.dtype,
            tokenizer_dir=cfg.tokenizer,
            max_shard_bytes=int(cfg.max_shard_gb * 1000**3),
        )
    print(f"ipt convert: wrote {out}")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_stage(ConvertConfig, convert, argv, prog="ipt convert")
