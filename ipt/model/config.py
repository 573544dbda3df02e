"""`ModelConfig`: the Llama/Mistral family with Hugging Face field names, plus ipt's runtime policy.

The architecture fields carry the names `transformers` uses in `config.json`, so importing a
checkpoint is a copy of fields and a preset reads like the HF config it stands for. The ipt
fields (dtypes, remat, attention backend, scan unroll) say how the model runs, not what it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
from pydantic import Field, model_validator

from ipt.config import Config, ConfigError, load_config
from ipt.resources import config_file, config_names

DType = Literal["float32", "bfloat16", "float16"]


class RopeScaling(Config):
    """RoPE frequency scaling, as in HF `rope_scaling` (`llama3` for Llama 3.1+, or `linear`)."""

    rope_type: Literal["llama3", "linear"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


class ModelConfig(Config):
    """A decoder-only Llama/Mistral model: architecture (HF names) and how it runs (ipt names)."""

    architecture: Literal["llama", "mistral"] = Field(
        "llama", description="HF model_type: llama -> LlamaForCausalLM, mistral -> MistralForCausalLM"
    )
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(0, ge=0, description="0 = same as num_attention_heads (MHA)")
    head_dim: int = Field(0, ge=0, description="0 = hidden_size // num_attention_heads")
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    sliding_window: int | None = Field(None, gt=0, description="attend to at most this many past tokens")
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    param_dtype: DType = "float32"
    dtype: DType | Literal["auto"] = Field(
        "auto", description="compute dtype; auto = bfloat16 on GPU/TPU, float32 on CPU"
    )
    remat: Literal["none", "full", "save_dots", "save_all_dots"] = Field(
        "save_all_dots",
        description="per-layer rematerialization: none, full, save_dots (weight matmuls), save_all_dots",
    )
    attention: Literal["xla", "cudnn", "splash"] = Field(
        "xla", description="attention kernel: xla (everywhere), cudnn (NVIDIA GPU), splash (TPU)"
    )
    scan_layers: bool = Field(
        True, description="run layers with lax.scan (fast compile); false: a Python loop (no scan overhead)"
    )
    scan_unroll: int = Field(1, ge=1, description="layers per scan iteration (lax.scan unroll)")

    @model_validator(mode="before")
    @classmethod
    def _fill_derived(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        heads = data.get("num_attention_heads")
        if isinstance(heads, int) and heads > 0:
            if not data.get("num_key_value_heads"):
                data["num_key_value_heads"] = heads
            if not data.get("head_dim") and isinstance(data.get("hidden_size"), int):
                data["head_dim"] = data["hidden_size"] // heads
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.sliding_window is not None and self.architecture != "mistral":
            raise ValueError("sliding_window is a Mistral feature: set architecture: mistral")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        return self

    @property
    def compute_dtype(self) -> jnp.dtype:
        if self.dtype == "auto":
            return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return tuple(self.eos_token_id) if isinstance(self.eos_token_id, list) else (self.eos_token_id,)


def load_model_config(name_or_path: str | Path, overrides: tuple[str, ...] = ()) -> ModelConfig:
    """A preset name (`tiny`, `llama3-8b`, ...) or a YAML path -> validated `ModelConfig`."""
    path = Path(name_or_path)
    if not path.exists():
        path = config_file("model", str(name_or_path))
        if not path.is_file():
            raise ConfigError(
                f"{name_or_path}: neither a config file nor a preset ({', '.join(preset_names())})"
            )
    return load_config(ModelConfig, path, overrides)


def preset_names() -> list[str]:
    """The model presets shipped in `configs/model/` (see `ipt.resources`)."""
    return config_names("model")
