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


def abstract_params(config: ModelConfig, mesh: jax.sharding.Mesh | None = None) -> dict:
    """Pure dict of `jax.ShapeDtypeStruct` (with shardings if `mesh`, under the active axis rules)."""
    state = nnx.state(abstract_model(config), nnx.Param)
    if mesh is not None:
        shardings = nnx.get_named_sharding(state, mesh)
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
        )
    return nnx.to_pure_dict(state)


def load_params(directory: str | Path, config: ModelConfig, mesh: jax.sharding.Mesh | None = None) -> dict:
    """Restore `params/` as a pure dict of jax arrays, sharded on `mesh` when given."""
    target = abstract_params(config, mesh)
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), target)
    return ocp.StandardCheckpointer().restore(Path(directory).absolute() / PARAMS_DIR, target)


def model_from_params(config: ModelConfig, params: dict) -> CausalLM:
    """Build a model whose parameters are `params` (a pure dict as written by `save_model_dir`)."""
    model = abstract_model(config)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def load_model(
    directory: str | Path, overrides: tuple[str, ...] = (), mesh: jax.sharding.Mesh | None = None
) -> CausalLM:
    """An ipt model directory -> a model (config overrides such as `attention=cudnn` allowed)."""
    config = load_model_config_dir(directory)
    if overrides:
        config = load_config(ModelConfig, Path(directory) / CONFIG_FILE, overrides)
    return model_from_params(config, load_params(directory, config, mesh))
