"""The ipt model equals PyTorch `transformers` number for number, and checkpoints cross both ways."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ipt.config import ConfigError
from ipt.model import hf
from ipt.model.generate import generate
from ipt.model.store import load_model, load_model_config_dir, load_params, model_from_params, save_model_dir

SEQ = 24
CASES = {
    "llama_gqa": dict(arch="llama", hidden_size=48, num_attention_heads=6, num_key_value_heads=2),
    "llama_mha": dict(arch="llama", hidden_size=32, num_attention_heads=4, num_key_value_heads=4),
    "llama_tied": dict(arch="llama", tie_word_embeddings=True),
    "llama3_rope_scaling": dict(
        arch="llama",
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "mistral_sliding_window": dict(arch="mistral", sliding_window=5),
    "odd_sizes": dict(
        arch="mistral",
        vocab_size=61,
        hidden_size=36,
        intermediate_size=50,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=10,
        sliding_window=7,
    ),
}


def make_hf_model(arch: str = "llama", seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A random tiny HF model whose weights (norms included) are far from their init values."""
    fields = dict(
        vocab_size=101,
        hidden_size=40,
        intermediate_size=72,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
    )
    fields.update(overrides)
    cls_config, cls_model = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    model = cls_model(cls_config(**fields)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


def ipt_logits(model, ids: np.ndarray, segment_ids: np.ndarray | None = None, positions=None) -> np.ndarray:
    ids = jnp.asarray(ids, jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    if segment_ids is None:
        segment_ids = jnp.ones_like(ids)
    return np.asarray(model(ids, jnp.asarray(positions, jnp.int32), jnp.asarray(segment_ids, jnp.int32)))


def import_model(hf_model, tmp_path, **runtime):
    src = tmp_path / "hf"
    hf_model.save_pretrained(src, max_shard_size="20KB")
    out = hf.import_hf(src, tmp_path / "ipt", dtype="float32", **runtime)
    return load_model(out)


def random_ids(vocab: int, shape=(2, SEQ), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_path):
    fields = dict(CASES[case])
    hf_model = make_hf_model(fields.pop("arch"), **fields)
    model = import_model(hf_model, tmp_path)
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1, "import must read sharded checkpoints"
    ids = random_ids(hf_model.config.vocab_size)
    ref = hf_logits(hf_model, ids)
    got = ipt_logits(model, ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4


def test_sliding_window_and_rope_scaling_change_the_logits(tmp_path):
    """Guards the parity cases: each feature under test must actually matter at this length."""
    for case, field in (
        ("mistral_sliding_window", "sliding_window"),
        ("llama3_rope_scaling", "rope_scaling"),
    ):
        fields = dict(CASES[case])
        model = import_model(make_hf_model(fields.pop("arch"), **fields), tmp_path / case)
        ids = random_ids(model.config.vocab_size)
        without = model_from_params(model.config.model_copy(update={field: None}), hf.model_params(model))
        assert np.abs(ipt_logits(model, ids) - ipt_logits(without, ids)).max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_export_reloads_in_transformers_and_reimports_identically(arch, tmp_path, mistral_tokenizer_dir):
    extra = dict(sliding_window=6) if arch == "mistral" else dict(tie_word_embeddings=True)
    model = import_model(make_hf_model(arch, seed=4, **extra), tmp_path)
    params = hf.model_params(model)
    out = hf.export_hf(
        model.config,
        params,
        tmp_path / "export",
        dtype="float32",
        tokenizer_dir=mistral_tokenizer_dir,
        max_shard_bytes=30_000,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.stat().st_size <= 30_000 + 4096 for p in shards)
    assert (out / "generation_config.json").exists() and (out / "tokenizer_config.json").exists()

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(reloaded).__name__ == hf.HF_CLASS[arch]
    ids = random_ids(model.config.vocab_size, seed=7)
    assert np.abs(hf_logits(reloaded, ids) - ipt_logits(model, ids)).max() < 1e-4
    transformers.AutoTokenizer.from_pretrained(out)

    again = hf.import_hf(out, tmp_path / "again", dtype="float32")
    assert load_model_config_dir(again) == model.config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(load_params(again, model.config)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_export_loads(tmp_path):
    model = import_model(make_hf_model("mistral", sliding_window=8), tmp_path)
    out = hf.export_hf(model.config, hf.model_params(model), tmp_path / "bf16")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    ids = random_ids(model.config.vocab_size)
    ref = hf_logits(reloaded.float(), ids)
    assert np.abs(ref - ipt_logits(model, ids)).max() < 0.05 * np.abs(ref).max()


def test_bfloat16_checkpoint_imports_exactly(tmp_path):
    """Released checkpoints (Llama-3, Mistral) ship bf16 safetensors: every value arrives exactly."""
    hf_model = make_hf_model("llama", seed=4).to(torch.bfloat16)
    model = import_model(hf_model, tmp_path)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    ids = random_ids(model.config.vocab_size)
    # the reference: transformers reading the same bf16 file in f32 (fresh f32 rotary buffers)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    want = hf_logits(reference, ids)
    assert np.abs(want - ipt_logits(model, ids)).max() < 1e-4


def test_import_reports_missing_tensor(tmp_path):
    src = tmp_path / "hf"
    make_hf_model("llama").save_pretrained(src)
    from safetensors.numpy import load_file, save_file

    file = next(src.glob("*.safetensors"))
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file)
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        hf.import_hf(src, tmp_path / "ipt")
    assert not (tmp_path / "ipt").exists()


def test_greedy_generation_equals_transformers(tmp_path):
    hf_model = make_hf_model("mistral", seed=2, sliding_window=6)
    model = import_model(hf_model, tmp_path)
    prompts = [[5, 17, 3, 99, 42, 8, 1, 64], [7, 7, 21]]
    new = 12
    ours = generate(model, prompts, new, eos_ids=())
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(prompt) :].tolist()
        assert got == ref
    # stop on eos: declare the 4th greedy token of row 0 an end-of-sequence id
    eos = ours[0][3]
    stopped = generate(model, prompts, new, eos_ids=(eos,))
    assert stopped[0] == ours[0][:4]
    cut = next((k + 1 for k, t in enumerate(ours[1]) if t == eos), new)
    assert stopped[1] == ours[1][:cut]


def test_sampling_is_seeded_and_top_p_restricts_support(tmp_path):
    model = import_model(make_hf_model("llama", seed=6), tmp_path)
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    a = generate(model, prompts, 8, temperature=1.0, top_p=0.9, seed=11, eos_ids=())
    assert a == generate(model, prompts, 8, temperature=1.0, top_p=0.9, seed=11, eos_ids=())
    assert a != generate(model, prompts, 8, temperature=1.0, top_p=0.9, seed=12, eos_ids=())
    # a tiny nucleus keeps only the most likely token: sampling becomes greedy
    assert generate(model, prompts, 8, temperature=1.0, top_p=1e-6, seed=3, eos_ids=()) == generate(
        model, prompts, 8, eos_ids=()
    )


def test_preset_parameter_counts_equal_transformers():
    from ipt.model import load_model_config, parameter_count, preset_names

    for name in preset_names():
        config = load_model_config(name)
        hf_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM}
        cfg_cls = transformers.MistralConfig if config.architecture == "mistral" else transformers.LlamaConfig
        with torch.device("meta"):
            ref = hf_cls[config.architecture](cfg_cls(**hf.hf_config_dict(config, "float32")))
        assert parameter_count(config) == sum(p.numel() for p in ref.parameters()), name


def test_import_places_parameters_on_their_mesh_shardings(tmp_path):
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from ipt.model.sharding import LogicalRules, param_shardings

    hf_model = make_hf_model(
        "llama", vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=4
    )
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    config = hf.config_from_hf(json.loads((tmp_path / "hf" / "config.json").read_text()), dtype="float32")
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AxisType.Auto,) * 2)
    rules = [("embed", "fsdp"), ("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor")]
    rules += [("vocab", "tensor"), ("head_dim", None), ("layers", None)]
    shardings = param_shardings(config, LogicalRules(rules, mesh))
    params = hf.import_params(tmp_path / "hf", config, shardings)
    save_model_dir(tmp_path / "ipt", config, params)
    restored = load_params(tmp_path / "ipt", config, shardings)
    replicated = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), params)
    given = hf.import_params(tmp_path / "hf", config, shardings=replicated)
    assert given["embed_tokens"]["weight"].sharding.is_fully_replicated
    np.testing.assert_array_equal(given["embed_tokens"]["weight"], params["embed_tokens"]["weight"])
    for tree in (params, restored):
        q = tree["layers"]["self_attn"]["q_proj"]["weight"]
        assert q.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(None, "fsdp", "tensor")), q.ndim)
    ids = random_ids(96)
    with jax.set_mesh(mesh):
        got = ipt_logits(model_from_params(config, restored), ids)
    assert np.abs(got - hf_logits(hf_model, ids)).max() < 1e-4


def test_import_streams_one_parameter_at_a_time(tmp_path):
    """Peak host memory while importing stays near one copy of the model. (On CPU the device
    arrays may alias the host buffers, so one copy is the floor; reading every tensor before
    converting would be two.)"""
    import tracemalloc

    hf_model = make_hf_model("llama", num_hidden_layers=16, hidden_size=64, intermediate_size=128)
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="200KB")
    config = hf.config_from_hf(json.loads((tmp_path / "hf" / "config.json").read_text()), dtype="float32")
    total = sum(p.numel() * 4 for p in hf_model.parameters())
    hf.import_params(tmp_path / "hf", config)  # warm imports and caches
    tracemalloc.start()
    params = hf.import_params(tmp_path / "hf", config)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(x.nbytes for x in jax.tree.leaves(params)) == total
    assert peak < 1.4 * total, f"peak host allocation {peak} for a {total}-byte model"


def test_bfloat16_compute_stays_close_to_float32(tmp_path):
    model = import_model(make_hf_model("mistral", sliding_window=8), tmp_path)
    ids = random_ids(model.config.vocab_size)
    ref = ipt_logits(model, ids)
    for update in ({"dtype": "bfloat16"}, {"dtype": "bfloat16", "param_dtype": "bfloat16"}):
        config = model.config.model_copy(update=update)
        params = jax.tree.map(lambda x, c=config: x.astype(c.weight_dtype), hf.model_params(model))
        got = ipt_logits(model_from_params(config, params), ids)
        assert got.dtype == np.float32
        assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
        assert generate(model_from_params(config, params), [[1, 2, 3]], 4, eos_ids=())[0] != []


def test_import_reports_shape_mismatch_with_config(tmp_path):
    src = tmp_path / "hf"
    make_hf_model("llama").save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape \(72, 40\)"):
        hf.import_hf(src, tmp_path / "ipt")
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="model_type"):
        hf.import_hf(src, tmp_path / "ipt")


def test_preset_configs_survive_the_hf_config_round_trip(tmp_path):
    from ipt.model import load_model_config, preset_names

    for name in preset_names():
        config = load_model_config(name)
        cls = transformers.MistralConfig if config.architecture == "mistral" else transformers.LlamaConfig
        cls(**hf.hf_config_dict(config, "bfloat16")).save_pretrained(tmp_path / name)
        written = json.loads((tmp_path / name / "config.json").read_text())
        assert hf.config_from_hf(written) == config, name


def test_legacy_llama31_config_reads_rope_scaling():
    """A transformers-4 style config.json (rope_theta + rope_scaling at the top level)."""
    legacy = {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rms_norm_eps": 1e-05,
        "max_position_embeddings": 131072,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "torch_dtype": "bfloat16",
    }
    from ipt.model import load_model_config

    assert hf.config_from_hf(legacy) == load_model_config("llama3.1-8b")
