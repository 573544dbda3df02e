"""Batched autoregressive decoding with a KV cache: one jit-compiled program per shape.

Prompts are left-padded to a common length, so every row's next token lands in the same
cache slot and the whole decode is one `lax.while_loop` of fixed shapes (it exits early once
every row has produced an end-of-sequence token). Padding slots carry segment id 0 and are
never attended by real tokens; positions count real tokens only, as in `transformers`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ipt.model.modules import CausalLM, KVCache


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """[batch, vocab] -> [batch]: argmax when temperature is 0, else nucleus (top-p) sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always the most likely token)
        outside = jnp.cumsum(probs, axis=-1) - probs >= top_p
        sorted_logits = jnp.where(outside, -jnp.inf, sorted_logits)
        logits = (
            jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
        )
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_ids", "pad_id", "temperature", "top_p")
)
def _decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    real: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    eos_ids: tuple[int, ...],
    pad_id: int,
    temperature: float,
    top_p: float,
) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    batch, prompt_len = tokens.shape
    cache = KVCache.empty(model.config, batch, prompt_len + max_new_tokens)
    segments = real.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
    logits, cache = model.decode(tokens, positions, segments, cache)
    next_pos = positions[:, -1] + 1
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)

    def step(carry):
        i, logits, cache, pos, done, out, key = carry
        key, sub = jax.random.split(key)
        token = sample_token(logits, sub, temperature, top_p)
        token = jnp.where(done, pad_id, token)
        out = out.at[:, i].set(token)
        done = done | jnp.isin(token, eos)
        logits, cache = model.decode(token[:, None], pos[:, None], jnp.ones((batch, 1), jnp.int32), cache)
        return i + 1, logits[:, -1], cache, pos + 1, done, out, key

    def more(carry):
        i, *_, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    done = jnp.zeros((batch,), bool)
    carry = (jnp.zeros((), jnp.int32), logits[:, -1], cache, next_pos, done, out, key)
    *_, done, out, _ = jax.lax.while_loop(more, step, carry)
    return out, done


def generate(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
    pad_to_multiple: int = 1,
    input_sharding: jax.sharding.Sharding | None = None,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids); returns the new tokens, eos included.

    Greedy when `temperature` is 0. `eos_ids` defaults to the config's; `pad_to_multiple`
    rounds the padded prompt length up so that varied prompts share compiled programs;
    `input_sharding` places the prompts (e.g. replicated over a multi-host mesh)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    config = model.config
    eos = tuple(config.eos_ids if eos_ids is None else eos_ids)
    pad = pad_id if pad_id is not None else (config.pad_token_id or 0)
    width = -(-max(len(p) for p in prompts) // pad_to_multiple) * pad_to_multiple
    tokens = np.full((len(prompts), width), pad, np.int32)
    real = np.zeros((len(prompts), width), bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = prompt
        real[row, width - len(prompt) :] = True
    graphdef, state = nnx.split(model)
    if input_sharding is None:
        tokens, real = jnp.asarray(tokens), jnp.asarray(real)
    else:
        tokens, real = (
            jax.make_array_from_callback(a.shape, input_sharding, lambda idx, a=a: a[idx])
            for a in (tokens, real)
        )
    out, _ = _decode(
        graphdef,
        state,
        tokens,
        real,
        jax.random.key(seed),
        max_new_tokens=max_new_tokens,
        eos_ids=eos,
        pad_id=pad,
        temperature=float(temperature),
        top_p=float(top_p),
    )
    results = []
    for row in np.asarray(out).tolist():
        stop = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
        results.append(row[:stop])
    return results
