"""A toy NNX language model with logical axis names, for trainer tests that do not need the real model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

VOCAB = 64


class ToyLM(nnx.Module):
    """Embedding -> (RMSNorm, SwiGLU-ish MLP) -> LM head; a position signal makes order matter."""

    def __init__(self, rngs: nnx.Rngs, vocab: int = VOCAB, embed: int = 16, mlp: int = 32):
        init = nnx.initializers.normal(0.1)
        self.embed = nnx.Embed(
            vocab, embed, rngs=rngs, embedding_init=nnx.with_partitioning(init, ("vocab", "embed"))
        )
        self.norm = nnx.RMSNorm(embed, rngs=rngs)
        self.up = nnx.Linear(
            embed, mlp, use_bias=False, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("embed", "mlp"))
        )
        self.down = nnx.Linear(
            mlp, embed, use_bias=False, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("mlp", "embed"))
        )
        self.head = nnx.Linear(
            embed,
            vocab,
            use_bias=False,
            rngs=rngs,
            kernel_init=nnx.with_partitioning(init, ("embed", "vocab")),
        )

    def __call__(self, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        x = self.embed(input_ids) + jnp.sin(positions[..., None].astype(jnp.float32))
        x = x + self.down(jax.nn.silu(self.up(self.norm(x))))
        return self.head(x)


def toy_model(seed: int) -> ToyLM:
    return ToyLM(nnx.Rngs(seed))


def toy_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    """A learnable batch: each row counts upward modulo vocab from a random start, some tokens masked."""
    start = rng.integers(0, vocab, size=(batch, 1))
    tokens = (start + np.arange(seq + 1)[None]) % vocab
    mask = (rng.random((batch, seq)) > 0.1).astype(np.int32)
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "segment_ids": np.ones((batch, seq), np.int32),
        "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
        "loss_mask": mask,
    }
