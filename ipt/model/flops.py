"""Model FLOPs per token, the numerator of MFU: matmuls (weights and attention) only.

Counts 2 FLOPs per multiply-add. Training is 3x the forward pass (forward + backward for
activations and weights); rematerialization is not counted, as MFU counts model FLOPs, not
hardware FLOPs. Attention counts the keys each query actually sees: causal, and capped by the
sliding window, averaged over the positions of a `seq_len` sequence.
"""

from __future__ import annotations

from ipt.model.config import ModelConfig


def mean_attended_keys(seq_len: int, sliding_window: int | None) -> float:
    """Average over positions i < seq_len of min(i + 1, window)."""
    w = seq_len if sliding_window is None else min(sliding_window, seq_len)
    full = seq_len - w  # positions that see a whole window
    return (w * (w + 1) / 2 + full * w) / seq_len


def matmul_params(config: ModelConfig) -> int:
    """Weights used in a matmul per token: all but the norms and the embedding lookup
    (the LM head counts, tied or not)."""
    e, d = config.hidden_size, config.head_dim
    attn = e * d * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    mlp = 3 * e * config.intermediate_size
    return config.num_hidden_layers * (attn + mlp) + e * config.vocab_size


def flops_per_token(config: ModelConfig, seq_len: int, training: bool = True) -> float:
    """FLOPs to process one token of a `seq_len`-token sequence (x3 when training)."""
    weights = 2 * matmul_params(config)
    context = mean_attended_keys(seq_len, config.sliding_window)
    attention = config.num_hidden_layers * 2 * 2 * config.num_attention_heads * config.head_dim * context
    return (3 if training else 1) * (weights + attention)
