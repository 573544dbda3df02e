"""Rotary position embeddings in Hugging Face's convention (rotate-half, not interleaved).

HF checkpoints store q/k projections permuted for the rotate-half form, so keeping the same
convention makes weight import a plain copy. Frequencies follow `transformers`'
`modeling_rope_utils` (default, `linear`, and Llama-3 `llama3` scaling) and are computed in f32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ipt.model.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """The per-pair rotation frequencies, shape [head_dim // 2], float32."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return (inv_freq / scaling.factor).astype(np.float32)
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin for int positions [batch, seq] -> two float32 arrays [batch, seq, head_dim]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inverse_frequencies(config))
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [batch, seq, heads, head_dim] by the tables [batch, seq, head_dim]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin
