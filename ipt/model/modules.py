"""The Llama/Mistral decoder as Flax NNX modules, named like Hugging Face's parameters.

Every weight is an `nnx.Param` named `weight` whose `out_sharding` metadata holds logical
axis names (vocab, embed, heads, kv_heads, head_dim, mlp, layers); `ipt.model.sharding` maps
them to mesh axes. Projection weights are stored input-first ([embed, heads, head_dim] for q_proj),
so a sharded matmul needs no transpose; `ipt.model.hf` reshapes to and from HF's [out, in].
Decoder layers are created stacked along a leading `layers` axis by `nnx.vmap` and run with
`jax.lax.scan` (or, with `scan_layers: false`, a Python loop over the same stacked
parameters), optionally rematerialized per layer. Training and scoring run `__call__` /
`hidden_states` (no cache); generation runs `decode`, which threads a `KVCache` through every
layer down to the attention call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ipt.model.attention import attend, attention_mask, xla_attention
from ipt.model.config import ModelConfig
from ipt.model.rope import apply_rotary, rotary_tables

Rotary = tuple[jax.Array, jax.Array]  # cos, sin [batch, seq, head_dim]

# What each layer keeps for the backward pass (the rest is recomputed from the layer input):
# full nothing; save_dots the weight matmuls (attention's batched einsums are redone);
# save_all_dots every matmul, so only norms, rotary, activations and the softmax are redone. In a
# scan the kept values are stacked over layers and written out, so keeping the cheap elementwise
# ones too (`none`) costs more memory and bandwidth than recomputing them.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_all_dots": jax.checkpoint_policies.dots_saveable,
}


class KVCache(NamedTuple):
    """Decoding state: keys/values [layers, batch, slots, kv_heads, head_dim] for the model (one
    layer's [batch, slots, kv_heads, head_dim] inside it), the segment id of each slot
    [batch, slots] (0 = empty or padding), and the next free slot."""

    keys: jax.Array
    values: jax.Array
    segment_ids: jax.Array
    index: jax.Array

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, slots: int) -> KVCache:
        """A cache of `slots` empty slots per row, in the compute dtype."""
        shape = (config.num_hidden_layers, batch, slots, config.num_key_value_heads, config.head_dim)
        kv = jnp.zeros(shape, config.compute_dtype)
        return cls(kv, kv, jnp.zeros((batch, slots), jnp.int32), jnp.zeros((), jnp.int32))


def _logical_param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    """A Param annotated with logical axes. Never placed at creation (not even under a mesh):
    `ipt.model.sharding` places parameters, so every path shards by the same table."""
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _param(rngs: nnx.Rngs, config: ModelConfig, shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
    init = jax.nn.initializers.normal(config.initializer_range)
    return _logical_param(init(rngs.params(), shape, config.weight_dtype), axes)


class RMSNorm(nnx.Module):
    def __init__(self, config: ModelConfig):
        self.eps = config.rms_norm_eps
        self.weight = _logical_param(jnp.ones((config.hidden_size,), config.weight_dtype), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


class Embedding(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.weight = _param(rngs, config, (config.vocab_size, config.hidden_size), ("vocab", "embed"))

    def __call__(self, ids: jax.Array, dtype: jnp.dtype) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0).astype(dtype)


class LMHead(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.weight = _param(rngs, config, (config.hidden_size, config.vocab_size), ("embed", "vocab"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...e,ev->...v", x, self.weight[...].astype(x.dtype))


class Projection(nnx.Module):
    """A bias-free linear map whose weight is [*in_dims, *out_dims] (contracting the leading dims)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...]):
        self.weight = _param(rngs, config, shape, axes)

    def __call__(self, x: jax.Array, contract: int = 1) -> jax.Array:
        w = self.weight[...].astype(x.dtype)
        return jax.lax.dot_general(
            x, w, (((tuple(range(x.ndim - contract, x.ndim))), tuple(range(contract))), ((), ()))
        )


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        e, h, d = config.hidden_size, config.num_attention_heads, config.head_dim
        kv = config.num_key_value_heads
        self.config = config
        self.q_proj = Projection(config, rngs, (e, h, d), ("embed", "heads", "head_dim"))
        self.k_proj = Projection(config, rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"))
        self.v_proj = Projection(config, rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"))
        self.o_proj = Projection(config, rngs, (h, d, e), ("heads", "head_dim", "embed"))

    def _qkv(self, x: jax.Array, rotary: Rotary) -> tuple[jax.Array, jax.Array, jax.Array]:
        cos, sin = rotary
        return apply_rotary(self.q_proj(x), cos, sin), apply_rotary(self.k_proj(x), cos, sin), self.v_proj(x)

    def __call__(self, x: jax.Array, rotary: Rotary, segment_ids: jax.Array) -> jax.Array:
        """x [b, s, e] -> [b, s, e]: causal self-attention within each segment, on the configured backend."""
        q, k, v = self._qkv(x, rotary)
        out = attend(self.config.attention, q, k, v, segment_ids, self.config.sliding_window)
        return self.o_proj(out, contract=2)

    def decode(
        self, x: jax.Array, rotary: Rotary, segment_ids: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Like `__call__`, with this layer's `cache`: the new keys/values are written at
        `cache.index` and the queries attend every slot (`cache.segment_ids` already holds the
        new tokens' segments). XLA attention only: fused kernels take no cache."""
        q, k, v = self._qkv(x, rotary)
        start, dtype = cache.index, cache.keys.dtype
        keys = jax.lax.dynamic_update_slice_in_dim(cache.keys, k.astype(dtype), start, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(cache.values, v.astype(dtype), start, axis=1)
        q_index = start + jnp.arange(q.shape[1])
        mask = attention_mask(
            q_index, segment_ids, jnp.arange(keys.shape[1]), cache.segment_ids, self.config.sliding_window
        )
        out = xla_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask)
        return self.o_proj(out, contract=2), cache._replace(keys=keys, values=values)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        e, m = config.hidden_size, config.intermediate_size
        self.gate_proj = Projection(config, rngs, (e, m), ("embed", "mlp"))
        self.up_proj = Projection(config, rngs, (e, m), ("embed", "mlp"))
        self.down_proj = Projection(config, rngs, (m, e), ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config)
        self.self_attn = Attention(config, rngs)
        self.post_attention_layernorm = RMSNorm(config)
        self.mlp = MLP(config, rngs)

    def __call__(self, x: jax.Array, rotary: Rotary, segment_ids: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), rotary, segment_ids)
        return self._feed_forward(x)

    def decode(
        self, x: jax.Array, rotary: Rotary, segment_ids: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        attn_out, cache = self.self_attn.decode(self.input_layernorm(x), rotary, segment_ids, cache)
        return self._feed_forward(x + attn_out), cache

    def _feed_forward(self, x: jax.Array) -> jax.Array:
        return x + self.mlp(self.post_attention_layernorm(x))


# A layer step for `_over_layers`: (hidden, this layer's slice of the stacked inputs) ->
# (hidden, this layer's output to stack, or None).
LayerStep = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def _forward_layer(
    graphdef: nnx.GraphDef, rotary: Rotary, segment_ids: jax.Array, x: jax.Array, state: nnx.State
) -> tuple[jax.Array, None]:
    return nnx.merge(graphdef, state)(x, rotary, segment_ids), None


def _decode_layer(
    graphdef: nnx.GraphDef,
    rotary: Rotary,
    segment_ids: jax.Array,
    slots: jax.Array,
    start: jax.Array,
    x: jax.Array,
    per_layer: tuple[nnx.State, jax.Array, jax.Array],
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """`slots` and `start` are the model-wide slot segments and first new slot; `per_layer` holds
    this layer's parameters and keys/values."""
    state, keys, values = per_layer
    x, cache = nnx.merge(graphdef, state).decode(x, rotary, segment_ids, KVCache(keys, values, slots, start))
    return x, (cache.keys, cache.values)


def _over_layers(config: ModelConfig, step: LayerStep, x: jax.Array, stacked: Any) -> tuple[jax.Array, Any]:
    """Run `step` over the leading (layer) axis of `stacked`: a scan, or a Python loop over the
    same arrays; per-layer outputs come back stacked. Each layer is rematerialized as configured."""
    if config.remat != "none":
        # CSE across layers is only impossible inside a scan; a Python loop needs the guard
        step = jax.checkpoint(step, policy=REMAT_POLICIES[config.remat], prevent_cse=not config.scan_layers)
    if config.scan_layers:
        return jax.lax.scan(step, x, stacked, unroll=config.scan_unroll)
    outputs = []
    for i in range(config.num_hidden_layers):
        x, out = step(x, jax.tree.map(lambda a, i=i: a[i], stacked))
        outputs.append(out)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *outputs)


class CausalLM(nnx.Module):
    """`model(input_ids, positions, segment_ids) -> logits` (float32 [batch, seq, vocab]).

    Inputs are int32 [batch, seq]; `segment_ids` numbers the packed documents of a row
    (0 = padding), `positions` restart at 0 for each document.
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embedding(config, rngs)

        @nnx.split_rngs(splits=config.num_hidden_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked_layers(rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(config, rngs)

        self.layers = stacked_layers(rngs)
        self.norm = RMSNorm(config)
        self.lm_head = None if config.tie_word_embeddings else LMHead(config, rngs)

    def __call__(self, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        return self.head(self.hidden_states(input_ids, positions, segment_ids))

    def head(self, x: jax.Array) -> jax.Array:
        """Final-norm hidden states [..., embed] -> float32 logits [..., vocab] (tied or not).

        Separate from `hidden_states` so a scorer can project only the positions it scores."""
        if self.lm_head is None:
            logits = jnp.einsum("...e,ve->...v", x, self.embed_tokens.weight[...].astype(x.dtype))
        else:
            logits = self.lm_head(x)
        return logits.astype(jnp.float32)

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """The final-norm hidden states [batch, seq, embed] that `head` turns into logits."""
        x, rotary = self._embed(input_ids, positions)
        graphdef, layer_state = nnx.split(self.layers)
        step = functools.partial(_forward_layer, graphdef, rotary, segment_ids)
        x, _ = _over_layers(self.config, step, x, layer_state)
        return self.norm(x)

    def _embed(self, input_ids: jax.Array, positions: jax.Array) -> tuple[jax.Array, Rotary]:
        return self.embed_tokens(input_ids, self.config.compute_dtype), rotary_tables(self.config, positions)

    def decode(
        self, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Logits for tokens placed in `cache` from its next free slot on, and the updated cache
        (a prompt's prefill and each generated token alike; see `ipt.model.generate`)."""
        x, rotary = self._embed(input_ids, positions)
        graphdef, layer_state = nnx.split(self.layers)
        slots = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids, cache.index, axis=1)
        step = functools.partial(_decode_layer, graphdef, rotary, segment_ids, slots, cache.index)
        x, (keys, values) = _over_layers(self.config, step, x, (layer_state, cache.keys, cache.values))
        new_cache = KVCache(keys, values, slots, cache.index + input_ids.shape[1])
        return self.head(self.norm(x)), new_cache


def create_model(config: ModelConfig, seed: int = 0) -> CausalLM:
    """A randomly initialized model (HF's init: normal(initializer_range), norms at one)."""
    return CausalLM(config, nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig) -> CausalLM:
    """The model with `jax.ShapeDtypeStruct` leaves: shapes and metadata, no memory. Built off
    any ambient mesh, where `nnx.eval_shape` would shard by Flax's own rules instead of ours."""
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
        return nnx.eval_shape(lambda: create_model(config))


def logical_axes(config: ModelConfig) -> nnx.State:
    """The parameter state tree with a `PartitionSpec` of logical axis names at every leaf."""
    return nnx.get_partition_spec(nnx.state(abstract_model(config), nnx.Param))


def parameter_count(config: ModelConfig) -> int:
    state = nnx.state(abstract_model(config), nnx.Param)
    return sum(int(x.size) for x in jax.tree.leaves(state))
