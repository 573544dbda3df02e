"""The Llama/Mistral decoder as Flax NNX modules, named like Hugging Face's parameters.

Every weight is an `nnx.Param` named `weight` whose `out_sharding` metadata holds logical
axis names (vocab, embed, heads, kv_heads, head_dim, mlp, layers); the trainer maps them to
mesh axes. Projection weights are stored input-first ([embed, heads, head_dim] for q_proj),
so a sharded matmul needs no transpose; `ipt.model.hf` reshapes to and from HF's [out, in].
Decoder layers are created stacked along a leading `layers` axis by `nnx.vmap` and run with
`jax.lax.scan` (or, with `scan_layers: false`, a Python loop over the same stacked
parameters), optionally rematerialized per layer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ipt.model.attention import attend, attention_mask, xla_attention
from ipt.model.config import ModelConfig
from ipt.model.rope import apply_rotary, rotary_tables

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
    """Decoding state for all layers: keys/values [layers, batch, slots, kv_heads, head_dim],
    the segment id of each slot [batch, slots] (0 = empty or padding), and the next free slot."""

    keys: jax.Array
    values: jax.Array
    segment_ids: jax.Array
    index: jax.Array


def _sharded_param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    """A Param annotated with logical axes; placed on the mesh at creation when one is set."""
    on_mesh = nnx.using_eager_sharding() and not jax.sharding.get_abstract_mesh().empty
    return nnx.Param(value, out_sharding=axes, eager_sharding=on_mesh)


def _param(rngs: nnx.Rngs, config: ModelConfig, shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
    init = jax.nn.initializers.normal(config.initializer_range)
    return _sharded_param(init(rngs.params(), shape, config.weight_dtype), axes)


class RMSNorm(nnx.Module):
    def __init__(self, config: ModelConfig):
        self.eps = config.rms_norm_eps
        self.weight = _sharded_param(jnp.ones((config.hidden_size,), config.weight_dtype), ("embed",))

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

    def __call__(
        self,
        x: jax.Array,
        rotary: tuple[jax.Array, jax.Array],
        segment_ids: jax.Array,
        cache: tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x [b, s, e] -> [b, s, e]; with `cache` (keys, values, slot segment ids, start slot),
        the new keys/values are written at the start slot and the query attends the whole cache."""
        cos, sin = rotary
        q = apply_rotary(self.q_proj(x), cos, sin)
        k = apply_rotary(self.k_proj(x), cos, sin)
        v = self.v_proj(x)
        if cache is None:
            out = attend(self.config.attention, q, k, v, segment_ids, self.config.sliding_window)
            return self.o_proj(out, contract=2), None
        keys, values, slot_segments, start = cache
        keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), start, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), start, axis=1)
        q_index = start + jnp.arange(q.shape[1])
        mask = attention_mask(
            q_index, segment_ids, jnp.arange(keys.shape[1]), slot_segments, self.config.sliding_window
        )
        out = xla_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask)
        return self.o_proj(out, contract=2), (keys, values)


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

    def __call__(self, x, rotary, segment_ids, cache=None):
        attn_out, new_kv = self.self_attn(self.input_layernorm(x), rotary, segment_ids, cache)
        x = x + attn_out
        return x + self.mlp(self.post_attention_layernorm(x)), new_kv


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
        logits, _ = self.forward(input_ids, positions, segment_ids)
        return logits

    def head(self, x: jax.Array) -> jax.Array:
        """Final-norm hidden states [..., embed] -> float32 logits [..., vocab] (tied or not).

        Separate from `forward` so a scorer can project only the positions it scores."""
        if self.lm_head is None:
            logits = jnp.einsum("...e,ve->...v", x, self.embed_tokens.weight[...].astype(x.dtype))
        else:
            logits = self.lm_head(x)
        return logits.astype(jnp.float32)

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """The final-norm hidden states [batch, seq, embed] that `head` turns into logits."""
        return self._trunk(input_ids, positions, segment_ids, None)[0]

    def forward(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits, and the updated cache when decoding from one (see `ipt.model.generate`)."""
        x, new_cache = self._trunk(input_ids, positions, segment_ids, cache)
        return self.head(x), new_cache

    def _trunk(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        cache: KVCache | None,
    ) -> tuple[jax.Array, KVCache | None]:
        config = self.config
        x = self.embed_tokens(input_ids, config.compute_dtype)
        rotary = rotary_tables(config, positions)
        graphdef, layer_state = nnx.split(self.layers)

        def one_layer(h, per_layer):
            state, kv = per_layer
            layer = nnx.merge(graphdef, state)
            layer_cache = None if kv is None else (*kv, slot_segments, start)
            return layer(h, rotary, segment_ids, layer_cache)

        if config.remat != "none":
            # CSE across layers is only impossible inside a scan; a Python loop needs the guard
            one_layer = jax.checkpoint(
                one_layer, policy=REMAT_POLICIES[config.remat], prevent_cse=not config.scan_layers
            )
        if cache is None:
            slot_segments = start = None
            kv = None
        else:
            start = cache.index
            slot_segments = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids, start, axis=1)
            kv = (cache.keys, cache.values)
        if config.scan_layers:
            x, new_kv = jax.lax.scan(one_layer, x, (layer_state, kv), unroll=config.scan_unroll)
        else:
            per_layer_out = []
            for i in range(config.num_hidden_layers):
                x, out = one_layer(x, jax.tree.map(lambda a, i=i: a[i], (layer_state, kv)))
                per_layer_out.append(out)
            new_kv = None if kv is None else jax.tree.map(lambda *a: jnp.stack(a), *per_layer_out)
        x = self.norm(x)
        if cache is None:
            return x, None
        return x, KVCache(new_kv[0], new_kv[1], slot_segments, start + input_ids.shape[1])


def create_model(config: ModelConfig, seed: int = 0) -> CausalLM:
    """A randomly initialized model (HF's init: normal(initializer_range), norms at one)."""
    return CausalLM(config, nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig) -> CausalLM:
    """The model with `jax.ShapeDtypeStruct` leaves: shapes and metadata, no memory."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: create_model(config))


def logical_axes(config: ModelConfig) -> nnx.State:
    """The parameter state tree with a `PartitionSpec` of logical axis names at every leaf."""
    return nnx.get_partition_spec(nnx.state(abstract_model(config), nnx.Param))


def parameter_count(config: ModelConfig) -> int:
    state = nnx.state(abstract_model(config), nnx.Param)
    return sum(int(x.size) for x in jax.tree.leaves(state))
