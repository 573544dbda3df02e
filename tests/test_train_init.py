"""Starting a run from existing weights: an ipt model directory, or a Hugging Face directory (continual)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import yaml
from test_train_loop import MODEL

from ipt.config import load_config
from ipt.model import create_model
from ipt.model.hf import export_hf, model_params
from ipt.model.store import save_model_dir
from ipt.train.config import TrainConfig
from ipt.train.run import Trainer


@pytest.mark.parametrize("source", ["hf", "model_dir"])
def test_initial_parameters_are_the_given_weights_on_the_mesh(source, tmp_path):
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "model": MODEL, "steps": 5,
        "data": {"sources": [{"name": "c", "path": "unused"}], "seq_len": 16, "batch_size": 8},
        "mesh": {"axes": {"data": 2, "fsdp": 2, "tensor": 2}},
        "init": {"source": source, "path": str(tmp_path / "weights")},
    }))  # fmt: skip
    cfg = load_config(TrainConfig, cfg_path)
    model = create_model(cfg.model, seed=7)
    want = jax.tree.map(np.asarray, model_params(model))
    if source == "hf":
        export_hf(cfg.model, model_params(model), tmp_path / "weights", dtype="float32")
    else:
        save_model_dir(tmp_path / "weights", cfg.model, model_params(model))
    trainer = Trainer(cfg)
    params = trainer.fresh_state()["params"]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, want)
    q = params["layers"]["self_attn"]["q_proj"]["weight"]
    assert q.sharding == trainer.shardings["params"]["layers"]["self_attn"]["q_proj"]["weight"]
    assert q.sharding.spec == jax.P(None, "fsdp", "tensor", None)
