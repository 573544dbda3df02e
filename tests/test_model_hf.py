"""The ipt model equals PyTorch `transformers` number for number, and checkpoints cross both ways."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ipt.model import hf
from ipt.model.store import load_model

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
    assert len(list((tmp_path).glob("*"))) == 0
    model = import_model(hf_model, tmp_path)
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1, "import must read sharded checkpoints"
    ids = random_ids(hf_model.config.vocab_size)
    ref = hf_logits(hf_model, ids)
    got = ipt_logits(model, ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4
