"""A tiny randomly initialised Mistral with the real Mistral v1 tokenizer, saved locally.

For smoke runs, tests and benchmarks of the LM engines without a hub download: it has the
synthesizer's architecture family and exact tokenizer, so prompts, token counts and the
engines' plumbing are real; only the weights are random. head_dim is 64, which vLLM's CPU
attention needs.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def build_tiny_mistral(out_dir: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 128) -> Path:
    """Write a tiny random `MistralForCausalLM` + the v1 tokenizer to `out_dir` (once)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from ipt.data.tokenizer import builtin_tokenizer_dir

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config).to(torch.float32).eval()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok_dir = builtin_tokenizer_dir("mistral-v1")
    for f in tok_dir.iterdir():
        shutil.copy(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
