"""Model behaviour that needs no PyTorch: masking, sharding metadata, remat, backends, config."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec

from ipt.config import ConfigError, load_config
from ipt.model import KVCache, ModelConfig, create_model, load_model_config, logical_axes, parameter_count
from ipt.model.attention import attend, splash_attention
from ipt.model.sharding import LogicalRules, create_sharded_model

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    dtype="float32",
)


@nnx.jit
def forward(model, ids, positions, segments):
    return model(ids, positions, segments)


def run(model, ids, positions, segments):
    return np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(segments)))


def test_packed_row_equals_each_document_alone():
    model = create_model(ModelConfig(architecture="mistral", sliding_window=4, **TINY), seed=3)
    rng = np.random.default_rng(0)
    lengths = [5, 9, 3]
    docs = [rng.integers(0, 97, size=n) for n in lengths]
    pad = 4
    ids = np.concatenate([*docs, np.zeros(pad, int)])[None].astype(np.int32)
    positions = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(pad, int)])[None].astype(np.int32)
    segments = np.concatenate([np.full(n, k + 1) for k, n in enumerate(lengths)] + [np.zeros(pad, int)])
    packed = run(model, ids, positions, segments[None].astype(np.int32))
    # each document alone, one per row; right padding cannot reach earlier tokens (causal)
    alone_ids = np.zeros((len(docs), max(lengths)), np.int32)
    for row, doc in enumerate(docs):
        alone_ids[row, : len(doc)] = doc
    alone_pos = np.tile(np.arange(max(lengths), dtype=np.int32), (len(docs), 1))
    alone = run(model, alone_ids, alone_pos, np.ones_like(alone_ids))
    start = 0
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(packed[0, start : start + n], alone[row, :n], atol=1e-5)
        start += n
    assert np.isfinite(packed).all(), "padding rows must stay finite"


def test_every_parameter_has_logical_axes():
    config = ModelConfig(**TINY)
    specs = nnx.to_pure_dict(logical_axes(config))
    assert specs["layers"]["self_attn"]["q_proj"]["weight"] == PartitionSpec(
        "layers", "embed", "heads", "head_dim"
    )
    assert specs["layers"]["self_attn"]["k_proj"]["weight"] == PartitionSpec(
        "layers", "embed", "kv_heads", "head_dim"
    )
    assert specs["layers"]["mlp"]["down_proj"]["weight"] == PartitionSpec("layers", "mlp", "embed")
    assert specs["embed_tokens"]["weight"] == PartitionSpec("vocab", "embed")
    assert specs["lm_head"]["weight"] == PartitionSpec("embed", "vocab")
    vocabulary = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers"}
    shapes = nnx.to_pure_dict(nnx.state(create_model(config), nnx.Param))
    for spec, value in zip(jax.tree.leaves(specs), jax.tree.leaves(shapes), strict=True):
        assert len(spec) == value.ndim and set(spec) <= vocabulary


def test_model_created_on_a_mesh_is_sharded_by_the_rules():
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AxisType.Auto,) * 2)
    rules = [
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("head_dim", None),
        ("layers", None),
    ]
    config = ModelConfig(**{**TINY, "num_key_value_heads": 4, "vocab_size": 96})
    model = create_sharded_model(config, LogicalRules(rules, mesh))
    q = model.layers.self_attn.q_proj.weight[...]
    expected = jax.sharding.NamedSharding(mesh, PartitionSpec(None, "fsdp", "tensor", None))
    assert q.sharding.is_equivalent_to(expected, q.ndim)
    ref = create_model(config)
    ids = np.arange(16, dtype=np.int32).reshape(2, 8)
    pos = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    seg = np.ones((2, 8), np.int32)
    with jax.set_mesh(mesh):
        sharded = run(model, ids, pos, seg)
    np.testing.assert_allclose(sharded, run(ref, ids, pos, seg), atol=1e-5)


@pytest.mark.parametrize(
    ("remat", "scan"), [("full", True), ("save_dots", True), ("save_all_dots", True), ("full", False)]
)
def test_remat_recomputes_layers_without_changing_gradients(remat, scan):
    ids = np.random.default_rng(1).integers(0, 97, size=(2, 12)).astype(np.int32)
    pos = np.tile(np.arange(12, dtype=np.int32), (2, 1))
    seg = np.ones_like(ids)

    def grads(config):
        model = create_model(config, seed=5)

        def loss(m):
            return jnp.mean(m(ids, pos, seg) ** 2)

        return jax.tree.leaves(nnx.jit(nnx.grad(loss))(model))

    def has_checkpoint(config):
        graphdef, params = nnx.split(create_model(config))
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(ids, pos, seg))))(params)
        return "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)

    assert has_checkpoint(ModelConfig(**TINY, remat=remat, scan_layers=scan))
    assert not has_checkpoint(ModelConfig(**TINY, remat="none", scan_layers=scan))
    for a, b in zip(
        grads(ModelConfig(**TINY, remat="none")),
        grads(ModelConfig(**TINY, remat=remat, scan_layers=scan)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scan", [True, False])
def test_remat_policies_recompute_what_they_say(scan):
    """Matmuls in the compiled gradient: `full` recomputes every layer matmul the backward pass
    needs, `save_dots` only the attention einsums (batched dots are not saved), `save_all_dots`
    and `none` nothing."""
    ids = np.zeros((2, 12), np.int32)
    pos = np.tile(np.arange(12, dtype=np.int32), (2, 1))

    def matmuls(remat):
        graphdef, params = nnx.split(create_model(ModelConfig(**TINY, remat=remat, scan_layers=scan)))
        grad = jax.jit(jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(ids, pos, np.ones_like(ids)))))
        return grad.lower(params).compile().as_text().count(" dot(")

    base = matmuls("none")
    recomputed = {remat: matmuls(remat) - base for remat in ("save_all_dots", "save_dots", "full")}
    layers = 1 if scan else TINY["num_hidden_layers"]  # a scan body is compiled once
    assert recomputed["save_all_dots"] == 0
    assert recomputed["save_dots"] == 2 * layers  # q.k scores and weights.v per layer
    assert recomputed["full"] > recomputed["save_dots"]


def test_splash_kernel_matches_xla_reference():
    """The Pallas TPU kernel, run by the Pallas interpreter on CPU, against the XLA reference."""
    rng = np.random.default_rng(0)
    b, s, h, kv, d = 1, 256, 4, 2, 64
    q, k, v = (jnp.asarray(rng.normal(size=(b, s, n, d)), jnp.float32) for n in (h, kv, kv))
    segments = jnp.asarray(np.repeat([1, 2, 3], [100, 100, 56])[None], jnp.int32)
    for window in (None, 48):
        ref = attend("xla", q, k, v, segments, window)
        got = splash_attention(q, k, v, segments, window, interpret=True)
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_config_fills_hf_defaults_and_rejects_bad_heads(tmp_path):
    config = ModelConfig(
        vocab_size=10, hidden_size=64, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4
    )
    assert (config.num_key_value_heads, config.head_dim) == (4, 16)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "vocab_size: 10\nhidden_size: 64\nintermediate_size: 8\nnum_hidden_layers: 1\n"
        "num_attention_heads: 4\nnum_key_value_heads: 3\n"
    )
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        load_config(ModelConfig, bad)
    with pytest.raises(ConfigError, match="Mistral feature"):
        load_model_config("tiny", ("architecture=llama",))


def test_presets_have_documented_sizes():
    counts = {name: parameter_count(load_model_config(name)) for name in ("ipt-500m", "ipt-1.3b")}
    assert abs(counts["ipt-500m"] / 500e6 - 1) < 0.05
    assert abs(counts["ipt-1.3b"] / 1.3e9 - 1) < 0.05


def test_splash_model_matches_xla_and_lowers_for_tpu():
    """Model level: splash (interpreted on CPU) equals xla, and the program lowers for TPU with
    the Mosaic kernels in it (forward and backward). The TPU compile itself is the trainer's AOT check."""
    config = ModelConfig(**{**TINY, "hidden_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1})
    splash = ModelConfig(**{**config.model_dump(), "attention": "splash"})
    ids = np.random.default_rng(2).integers(0, 97, size=(1, 128)).astype(np.int32)
    pos = np.arange(128, dtype=np.int32)[None]
    seg = np.repeat([1, 2], 64)[None].astype(np.int32)
    ref = run(create_model(config, seed=1), ids, pos, seg)
    model = create_model(splash, seed=1)
    np.testing.assert_allclose(run(model, ids, pos, seg), ref, atol=1e-4)

    graphdef, params = nnx.split(model)

    def loss(p):
        return jnp.mean(nnx.merge(graphdef, p)(ids, pos, seg) ** 2)

    lowered = jax.jit(jax.grad(loss)).trace(params).lower(lowering_platforms=("tpu",))
    assert lowered.as_text().count("tpu_custom_call") >= 3


def test_python_loop_over_layers_equals_scan():
    from ipt.model.generate import generate

    scan = create_model(ModelConfig(**TINY), seed=4)
    loop = create_model(ModelConfig(**TINY, scan_layers=False), seed=4)
    ids = np.random.default_rng(3).integers(0, 97, size=(2, 10)).astype(np.int32)
    pos = np.tile(np.arange(10, dtype=np.int32), (2, 1))
    np.testing.assert_allclose(
        run(loop, ids, pos, np.ones_like(ids)), run(scan, ids, pos, np.ones_like(ids)), atol=1e-5
    )
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    assert generate(loop, prompts, 5, eos_ids=()) == generate(scan, prompts, 5, eos_ids=())


@pytest.mark.parametrize("scan", [True, False])
def test_decode_with_a_cache_gives_the_training_logits(scan):
    """A prefill and then one token at a time through `decode` give the logits of one training
    forward over the whole rows: left padding (segment 0) is never attended, the sliding window
    is honoured across the cache, and the cache ends one slot past the last token."""
    config = ModelConfig(**{**TINY, "architecture": "mistral", "sliding_window": 4, "scan_layers": scan})
    model = create_model(config, seed=6)
    ids = np.random.default_rng(4).integers(1, 97, size=(2, 10)).astype(np.int32)
    seg = np.ones_like(ids)
    seg[1, :3] = 0  # row 1: a 7-token prompt, left-padded
    pos = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
    full = run(model, ids, pos, seg)
    decode = nnx.jit(lambda m, *args: m.decode(*args))
    cache = KVCache.empty(config, batch=2, slots=10)
    pieces = []
    for a, b in [(0, 6), (6, 7), (7, 8), (8, 9), (9, 10)]:
        logits, cache = decode(model, ids[:, a:b], pos[:, a:b], seg[:, a:b], cache)
        pieces.append(np.asarray(logits))
    real = seg.astype(bool)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1)[real], full[real], atol=1e-5)
    assert int(cache.index) == 10
    np.testing.assert_array_equal(cache.segment_ids, seg)


def test_cudnn_model_lowers_for_cuda_with_fused_attention(monkeypatch):
    """No GPU here, so the check is the program a GPU would compile: the model's forward and
    backward, lowered for CUDA, call cuDNN's fused flash attention (forward and backward kernels)
    with the causal mask and the sliding window fused, and no XLA softmax remains. Only the
    cuDNN version probe (it reads the GPU host's libcudnn) is answered here, as cuDNN 9.8."""
    from jax._src.cudnn import fused_attention_stablehlo

    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 90800)
    config = ModelConfig(**{
        **TINY, "architecture": "mistral", "sliding_window": 32, "hidden_size": 128,
        "num_attention_heads": 2, "num_key_value_heads": 1, "dtype": "bfloat16", "attention": "cudnn",
    })  # fmt: skip
    graphdef, params = nnx.split(create_model(config, seed=1))
    ids = jnp.zeros((2, 128), jnp.int32)
    pos = jnp.tile(jnp.arange(128, dtype=jnp.int32), (2, 1))
    seg = jnp.asarray(np.repeat([[1, 2]], 64, axis=1).repeat(2, axis=0), jnp.int32)

    def loss(p):
        return jnp.mean(nnx.merge(graphdef, p)(ids, pos, seg).astype(jnp.float32) ** 2)

    text = jax.jit(jax.grad(loss)).trace(params).lower(lowering_platforms=("cuda",)).as_text()
    calls = re.findall(r"custom_call @(__cudnn\$fmha\w*)", text)
    assert any(not c.endswith("Backward") for c in calls) and any(c.endswith("Backward") for c in calls)
    configs = re.findall(r"custom_call @__cudnn\$fmha\w*\(.*?backend_config = \"(.*?)\", operand", text)
    assert configs and all(r"\22mask_type\22: \22CAUSAL\22" in c for c in configs)
    assert all(r"\22sliding_window_length\22: 32" in c for c in configs)
    exps = [line for line in text.splitlines() if "stablehlo.exponential" in line]
    assert exps and not any("x128x128x" in line for line in exps)  # the softmax runs in the kernel


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    from ipt.model.generate import sample_token

    probs = np.array([0.05, 0.5, 0.15, 0.3])  # sorted: 1 (0.5), 3 (0.8), 2 (0.95), 0 (1.0)
    logits = jnp.asarray(np.log(probs)[None].repeat(4000, axis=0), jnp.float32)
    for top_p, support in ((0.4, {1}), (0.75, {1, 3}), (0.9, {1, 2, 3}), (1.0, {0, 1, 2, 3})):
        draws = np.asarray(sample_token(logits, jax.random.key(0), 1.0, top_p))
        assert set(draws.tolist()) == support
        if top_p == 0.75:  # renormalised inside the nucleus: 0.5 / 0.8
            assert abs(np.mean(draws == 1) - 0.625) < 0.03
