"""The real model on real batches: every mesh of 8 fake CPU devices trains like one device."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import yaml
from shards import write_corpus_source
from test_train_loop import MODEL

from ipt.config import load_config
from ipt.data.pipeline import make_batch_iterator
from ipt.train.config import TrainConfig
from ipt.train.loop import to_global
from ipt.train.run import Trainer

STEPS = 3


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, bpe_tokenizer_dir, corpus_docs):
    out = tmp_path_factory.mktemp("sharding") / "train"
    write_corpus_source(out, bpe_tokenizer_dir, [d["text"] for d in corpus_docs[:120]])
    return out


def _config(
    shard_dir,
    tmp_path,
    axes: dict[str, int],
    batch_size: int = 8,
    grad_accum: int = 1,
    seq_len: int = 32,
    **model,
) -> TrainConfig:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "model": {**MODEL, **model},
        "data": {
            "sources": [{"name": "c", "path": str(shard_dir)}],
            "seq_len": seq_len,
            "batch_size": batch_size,
        },
        "grad_accum": grad_accum,
        "steps": 10,
        "z_loss": 1e-3,
        "optimizer": {"schedule": {"peak_lr": 3e-3, "warmup_steps": 2}},
        "mesh": {"axes": axes},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(TrainConfig, path)


def _losses(cfg: TrainConfig, devices=None, steps: int = STEPS) -> list[float]:
    trainer = Trainer(cfg, devices)
    state = trainer.fresh_state()
    batches = make_batch_iterator(cfg.data)
    sharding = trainer.rules.batch_sharding()
    out = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, to_global(next(batches), sharding), trainer.parts.rest)
        out.append(float(metrics["loss"]))
    assert trainer.train_step._cache_size() == 1, "recompiled after the first step"
    return out


def test_meshes_match_one_device(shard_dir, tmp_path):
    single = _losses(_config(shard_dir, tmp_path, {"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
    assert single[-1] < single[0]
    for shape in ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)):
        axes = dict(zip(("data", "fsdp", "tensor"), shape, strict=True))
        got = _losses(_config(shard_dir, tmp_path, axes))
        np.testing.assert_allclose(got, single, rtol=1e-5, err_msg=f"mesh {shape}")


def test_grad_accumulation_matches_one_big_batch(shard_dir, tmp_path):
    whole = _losses(_config(shard_dir, tmp_path, {"data": 1, "fsdp": 1, "tensor": 1}, 16), jax.devices()[:1])
    accumulated = _losses(_config(shard_dir, tmp_path, {"data": 2, "fsdp": 2, "tensor": 2}, 16, grad_accum=4))
    np.testing.assert_allclose(accumulated, whole, rtol=1e-5)


def test_splash_kernel_per_shard_matches_xla_on_one_device(shard_dir, tmp_path):
    """splash (the Pallas kernel, interpreted on CPU) runs per shard of batch and heads under
    shard_map inside the sharded step, and trains like the XLA reference on one device."""
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}
    reference = _config(shard_dir, tmp_path, {"data": 1, "fsdp": 1, "tensor": 1}, seq_len=128, **heads)
    want = _losses(reference, jax.devices()[:1], steps=2)
    splash = _config(
        shard_dir, tmp_path, {"data": 2, "fsdp": 2, "tensor": 2}, seq_len=128, attention="splash", **heads
    )
    np.testing.assert_allclose(_losses(splash, steps=2), want, rtol=1e-4)
