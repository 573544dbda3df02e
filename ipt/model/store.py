"""The ipt model directory: `config.yaml` (a ModelConfig) + `params/` (an Orbax checkpoint).

`params/` is written by `orbax.checkpoint.StandardCheckpointer` and holds the pure nested
dict of the model's `nnx.Param` state (`nnx.to_pure_dict`), for example
`{"embed_tokens": {"weight": [vocab, embed]}, "layers": {"self_attn": {"q_proj": {"weight":
[layers, embed, heads, head_dim]}}, ...}}`. The trainer restores it into its own sharded
state; `load_model` restores it into a ready model. A directory is written under a temporary
name and renamed when complete, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from ipt.config import ConfigError, dump_config, load_config
from ipt.model.config import ModelConfig
from ipt.model.modules import CausalLM, abstract_model

CONFIG_FILE = "config.yaml"
PARAMS_DIR = "params"


def save_params(directory: Path, params: dict) -> None:
    """Write a pure param dict as an Orbax checkpoint at `directory` (which must not exist)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(directory).absolute(), params)
    checkpointer.wait_until_finished()


def save_model_dir(directory: str | Path, config: ModelConfig, params: dict) -> Path:
    """Write `config.yaml` + `params/` atomically (temp name, then rename)."""
    directory = Path(directory).absolute()
    if directory.exists():
        raise FileExistsError(f"{directory} already exists; refusing to overwrite a model directory")
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / CONFIG_FILE).write_text(dump_config(config), encoding="utf-8")
    save_params(tmp / PARAMS_DIR, params)
    tmp.rename(directory)
    return directory


def load_model_config_dir(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{directory}: not an ipt model directory (no {CONFIG_FILE})")
    return load_config(ModelConfig, path)


def abstract_params(config: ModelConfig, shardings: dict | None = None) -> dict:
    """Pure dict of `jax.ShapeDtypeStruct`, carrying `shardings` (a pure dict shaped like the
    params, e.g. `ipt.model.sharding.param_shardings`) when given."""
    shapes = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    if shardings is None:
        return shapes
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def load_params(directory: str | Path, config: ModelConfig, shardings: dict | None = None) -> dict:
    """Restore `params/` as a pure dict of jax arrays placed on `shardings` (default: the first device)."""
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract_params(config))
    target = abstract_params(config, shardings)
    return ocp.StandardCheckpointer().restore(Path(directory).absolute() / PARAMS_DIR, target)


def model_from_params(config: ModelConfig, params: dict) -> CausalLM:
    """Build a model whose parameters are `params` (a pure dict as written by `save_model_dir`)."""
    model = abstract_model(config)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def load_model(directory: str | Path, overrides: tuple[str, ...] = ()) -> CausalLM:
    """An ipt model directory -> a model on the first device (config overrides such as
    `attention=cudnn` allowed); for a mesh, `load_params` with `param_shardings`."""
    config = load_model_config_dir(directory)
    if overrides:
        config = load_config(ModelConfig, Path(directory) / CONFIG_FILE, overrides)
    return model_from_params(config, load_params(directory, config))
