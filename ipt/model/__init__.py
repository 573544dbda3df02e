"""The Llama/Mistral model family in Flax NNX, with Hugging Face import/export and generation.

See docs/model.md for the public API; the names re-exported here are that API.
"""

from ipt.model.config import ModelConfig, RopeScaling, load_model_config, preset_names
from ipt.model.modules import (
    CausalLM,
    KVCache,
    abstract_model,
    create_model,
    logical_axes,
    parameter_count,
)

__all__ = [
    "CausalLM",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "abstract_model",
    "create_model",
    "load_model_config",
    "logical_axes",
    "parameter_count",
    "preset_names",
]
