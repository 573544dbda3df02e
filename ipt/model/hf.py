"""Hugging Face <-> ipt: `LlamaForCausalLM` / `MistralForCausalLM` safetensors directories.

Names map one to one (`model.layers.3.self_attn.q_proj.weight` is row 3 of ipt's stacked
`layers.self_attn.q_proj.weight`); only layouts differ: HF stores a linear weight [out, in],
ipt stores it [in, out] with heads split out. The rotary convention is HF's own (rotate-half),
so q/k need no permutation. Import reads one tensor at a time into one host buffer per ipt
parameter and places each buffer on its target sharding before reading the next.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from ipt.config import ConfigError
from ipt.model.config import ModelConfig, RopeScaling
from ipt.model.store import abstract_params, save_model_dir
from ipt.stage import BadInputError

MAX_SHARD_BYTES = 5 * 1000**3
WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
HF_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}

# ---------------------------------------------------------------- config


def config_from_hf(hf: dict, source: str = "config.json", **runtime) -> ModelConfig:
    """An HF `config.json` dict -> ModelConfig; `runtime` sets ipt fields (dtype, attention ...)."""

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: `{key}`: {why}")

    arch = hf.get("model_type")
    if arch not in HF_CLASS:
        raise fail("model_type", f"expected one of {sorted(HF_CLASS)}, got {arch!r}")
    if hf.get("hidden_act", "silu") != "silu":
        raise fail("hidden_act", f"only silu (SwiGLU) is supported, got {hf['hidden_act']!r}")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise fail(key, "biases are not supported")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    scaling = None
    if rope_type not in ("default", "llama3", "linear"):
        raise fail("rope_parameters.rope_type", f"expected default, llama3 or linear, got {rope_type!r}")
    if rope_type != "default":
        keys = set(RopeScaling.model_fields)
        scaling = RopeScaling(rope_type=rope_type, **{k: v for k, v in rope.items() if k in keys})
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing:
        raise fail(missing[0], f"missing (required: {', '.join(missing)})")
    fields = dict(
        architecture=arch,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf.get("num_key_value_heads") or 0,
        head_dim=hf.get("head_dim") or 0,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        sliding_window=hf.get("sliding_window") if arch == "mistral" else None,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        initializer_range=hf.get("initializer_range", 0.02),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )
    return ModelConfig(**fields, **runtime)


def hf_config_dict(config: ModelConfig, torch_dtype: str) -> dict:
    """ModelConfig -> the keyword arguments of transformers' LlamaConfig / MistralConfig."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope.update(config.rope_scaling.model_dump())
    out = dict(
        architectures=[HF_CLASS[config.architecture]],
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        rope_parameters=rope,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        dtype=torch_dtype,
    )
    if config.architecture == "mistral":
        out["sliding_window"] = config.sliding_window
    return out


# ---------------------------------------------------------------- tensor mapping
# Each rule: ipt path, HF name pattern ({i} = layer), HF [out, in] -> ipt layout, and back.


def _rules(config: ModelConfig) -> list[tuple[tuple[str, ...], str, Callable, Callable]]:
    e, h, kv, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    same = (lambda w: w, lambda w: w)
    transpose = (lambda w: w.T, lambda w: w.T)

    def heads_in(n):  # [n*d, e] <-> [e, n, d]
        return (lambda w: w.T.reshape(e, n, d), lambda w: w.reshape(e, n * d).T)

    heads_out = (lambda w: w.T.reshape(h, d, e), lambda w: w.reshape(h * d, e).T)  # [e, h*d] <-> [h, d, e]
    layer = "model.layers.{i}."
    rules = [
        (("embed_tokens", "weight"), "model.embed_tokens.weight", *same),
        (("norm", "weight"), "model.norm.weight", *same),
        (("layers", "input_layernorm", "weight"), layer + "input_layernorm.weight", *same),
        (("layers", "post_attention_layernorm", "weight"), layer + "post_attention_layernorm.weight", *same),
        (("layers", "self_attn", "q_proj", "weight"), layer + "self_attn.q_proj.weight", *heads_in(h)),
        (("layers", "self_attn", "k_proj", "weight"), layer + "self_attn.k_proj.weight", *heads_in(kv)),
        (("layers", "self_attn", "v_proj", "weight"), layer + "self_attn.v_proj.weight", *heads_in(kv)),
        (("layers", "self_attn", "o_proj", "weight"), layer + "self_attn.o_proj.weight", *heads_out),
        (("layers", "mlp", "gate_proj", "weight"), layer + "mlp.gate_proj.weight", *transpose),
        (("layers", "mlp", "up_proj", "weight"), layer + "mlp.up_proj.weight", *transpose),
        (("layers", "mlp", "down_proj", "weight"), layer + "mlp.down_proj.weight", *transpose),
    ]
    if not config.tie_word_embeddings:
        rules.append((("lm_head", "weight"), "lm_head.weight", *transpose))
    return rules


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------- import


def _tensor_files(hf_dir: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file that holds it."""
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: hf_dir / file for name, file in weight_map.items()}
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{hf_dir}: no *.safetensors files (PyTorch .bin checkpoints are not read)")
    out = {}
    for file in files:
        try:
            with safe_open(file, "numpy") as f:
                out.update(dict.fromkeys(f.keys(), file))
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError)
            raise BadInputError(f"{file}: not a readable safetensors file ({e})") from None
    return out


def import_params(hf_dir: str | Path, config: ModelConfig, shardings: dict | None = None) -> dict:
    """Read an HF checkpoint into ipt's pure param dict, one ipt parameter at a time.

    Each parameter goes straight to its sharding: `shardings` (a pure dict of `Sharding`s
    shaped like the params, e.g. `ipt.model.sharding.param_shardings`), else the first device."""
    hf_dir = Path(hf_dir)
    where = _tensor_files(hf_dir)
    target = abstract_params(config)
    params: dict = {}
    for path, pattern, to_ipt, to_hf in _rules(config):
        spec = _get(target, path)
        stacked = path[0] == "layers"
        expected = spec.shape[1:] if stacked else spec.shape
        hf_shape = tuple(jax.eval_shape(to_hf, jax.ShapeDtypeStruct(expected, spec.dtype)).shape)
        host = np.empty(spec.shape, spec.dtype)
        for i in range(config.num_hidden_layers if stacked else 1):
            name = pattern.format(i=i)
            if name not in where:
                raise KeyError(f"{hf_dir}: tensor {name!r} missing from the checkpoint")
            with safe_open(where[name], "numpy") as f:
                shape = tuple(f.get_slice(name).get_shape())
                if shape != hf_shape:
                    raise ValueError(
                        f"{where[name]}: {name} has shape {shape}, config.json implies {hf_shape}"
                    )
                host[i if stacked else ...] = to_ipt(f.get_tensor(name)).astype(spec.dtype)
        if shardings is not None:
            sharding = _get(shardings, path)
        else:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        _set(params, path, jax.make_array_from_callback(spec.shape, sharding, lambda idx, h=host: h[idx]))
        del host
    return params


def import_hf(hf_dir: str | Path, out_dir: str | Path, **runtime) -> Path:
    """HF directory -> ipt model directory (`config.yaml` + Orbax `params/`)."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{hf_dir}: no config.json; expected a Hugging Face model directory")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{config_path}: not a JSON file ({e})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{config_path}: expected a JSON object, got {type(hf).__name__}")
    config = config_from_hf(hf, str(config_path), **runtime)
    return save_model_dir(out_dir, config, import_params(hf_dir, config))


# ---------------------------------------------------------------- export


def hf_tensors(config: ModelConfig, params: dict, dtype: np.dtype) -> list[tuple[str, tuple, Callable]]:
    """(HF name, HF shape, thunk giving the HF-layout host array) for every tensor, in HF order.

    The thunks let the exporter plan shards from shapes and copy one tensor at a time."""
    flat, per_layer = [], []
    for path, pattern, _, to_hf in _rules(config):
        value = _get(params, path)
        if path[0] == "layers":
            per_layer.append((value, pattern, to_hf))
        else:
            flat.append((pattern, value, to_hf))

    def entry(name, value, to_hf):
        shape = jax.eval_shape(to_hf, jax.ShapeDtypeStruct(value.shape, value.dtype)).shape
        return name, shape, lambda: np.ascontiguousarray(to_hf(np.asarray(value)).astype(dtype))

    out = [entry(name, value, fn) for name, value, fn in flat if name != "lm_head.weight"]
    for i in range(config.num_hidden_layers):
        out += [entry(pattern.format(i=i), value[i], fn) for value, pattern, fn in per_layer]
    out += [entry(name, value, fn) for name, value, fn in flat if name == "lm_head.weight"]
    return out


def export_hf(
    config: ModelConfig,
    params: dict,
    out_dir: str | Path,
    dtype: str = "bfloat16",
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """ipt params -> HF directory that `transformers` (and vLLM) load unchanged."""
    from transformers import GenerationConfig, LlamaConfig, MistralConfig

    out_dir = Path(out_dir).absolute()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite")
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    hf_cls = MistralConfig if config.architecture == "mistral" else LlamaConfig
    hf_cls(**hf_config_dict(config, dtype)).save_pretrained(tmp)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(tmp)

    tensors = hf_tensors(config, params, np_dtype)
    shards: list[list] = [[]]
    size = 0
    for item in tensors:
        nbytes = int(np.prod(item[1])) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    total = sum(int(np.prod(shape)) for _, shape, _ in tensors) * np_dtype.itemsize
    for shard, file in zip(shards, names, strict=True):
        save_file({name: make() for name, _, make in shard}, tmp / file, metadata={"format": "pt"})
    weight_map = {name: file for shard, file in zip(shards, names, strict=True) for name, _, _ in shard}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), tmp)
    os.replace(tmp, out_dir)
    return out_dir


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path) -> None:
    """Copy the tokenizer files of a HF directory (everything but weights and model configs)."""
    files = [
        p
        for p in sorted(tokenizer_dir.iterdir())
        if p.is_file() and p.name not in WEIGHT_FILES and p.suffix not in (".safetensors", ".bin")
    ]
    if not any(p.name.startswith("tokenizer") for p in files):
        raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer files (tokenizer.json / tokenizer.model)")
    for p in files:
        shutil.copy2(p, out_dir / p.name)


def model_params(model: nnx.Module) -> dict:
    """The pure param dict of a live model (what `export_hf` takes)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
