"""Orbax checkpoints of the sharded train state: round trip, retention, partial and damaged steps."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
from train_toy import toy_batch, toy_model

from ipt.train import optim
from ipt.train import state as st
from ipt.train import step as sp
from ipt.train.checkpoint import CheckpointConfig, Checkpointer
from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh


def _trained_state(axes: dict[str, int], steps: int = 2):
    cfg = MeshConfig(axes=axes)
    rules = LogicalRules(cfg.rules, make_mesh(cfg))
    parts = st.model_parts(toy_model)
    tx, schedule = optim.make_optimizer(
        optim.OptimizerConfig(), 10, optim.decay_mask(parts.params, parts.axes, False)
    )
    shardings = st.state_shardings(tx, parts, rules)
    state = st.init_state(toy_model, 0, tx, shardings)
    train_step = sp.make_train_step(parts, tx, schedule, rules, shardings)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        state, _ = train_step(state, toy_batch(rng, 16, 8), parts.rest)
    return state, st.abstract_state(tx, parts, shardings)


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_round_trip_restores_values_shardings_and_data_state(tmp_path):
    state, _ = _trained_state({"data": 2, "fsdp": 4, "tensor": 1})
    ckpt = Checkpointer(tmp_path, CheckpointConfig(every=1))
    data_state = {"parent": {"next_index": 17, "remainder_slices": {"tokens": [3, 9]}}}
    assert ckpt.save(2, state, data_state)
    ckpt.close()
    # restore onto a different mesh: values equal, shardings are the target's
    _, abstract = _trained_state({"data": 1, "fsdp": 2, "tensor": 4}, steps=0)
    step, restored, restored_data = Checkpointer(tmp_path, CheckpointConfig()).restore(abstract)
    assert step == 2 and restored_data == data_state
    _assert_same(restored, state)
    kernel = restored["params"]["up"]["kernel"]
    assert kernel.sharding == abstract["params"]["up"]["kernel"].sharding
    assert kernel.sharding.spec == jax.P("fsdp", "tensor")


def test_keeps_last_n_and_every_kth(tmp_path):
    state, _ = _trained_state({"data": 8, "fsdp": 1, "tensor": 1}, steps=0)
    ckpt = Checkpointer(tmp_path, CheckpointConfig(every=1, keep=2, keep_every=4, async_save=False))
    for s in range(1, 10):
        ckpt.save(s, state, {"i": s}, force=True)
    ckpt.close()
    assert Checkpointer(tmp_path, CheckpointConfig()).all_steps() == [4, 8, 9]


def test_partial_and_damaged_checkpoints_are_never_restored(tmp_path):
    state, abstract = _trained_state({"data": 8, "fsdp": 1, "tensor": 1}, steps=1)
    ckpt = Checkpointer(tmp_path, CheckpointConfig(every=1, keep=None))
    ckpt.save(1, state, {"i": 1})
    ckpt.save(2, state, {"i": 2})
    ckpt.close()
    # a save that was killed midway: orbax writes under a temporary name until it commits
    shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp-1234")
    # a committed step whose array data was lost (disk trouble, partial copy between buckets)
    for d in (tmp_path / "2" / "state").iterdir():
        if d.is_dir():
            shutil.rmtree(d)
    ckpt = Checkpointer(tmp_path, CheckpointConfig())
    assert ckpt.latest_step() == 2
    step, restored, data_state = ckpt.restore(abstract)
    assert step == 1 and data_state == {"i": 1}
    _assert_same(restored["params"], state["params"])
    # the damaged step is kept aside, so the resumed run can save step 2 again
    assert ckpt.all_steps() == [1]
    assert [p.name.split(".")[1].split("-")[0] for p in tmp_path.glob("2.*")] == ["unrestorable"]
    assert ckpt.save(2, state, {"i": 2}, force=True)
    ckpt.close()
    assert Checkpointer(tmp_path, CheckpointConfig()).restore(abstract)[::2] == (2, {"i": 2})


def test_nothing_is_moved_when_no_checkpoint_restores(tmp_path):
    state, _ = _trained_state({"data": 8, "fsdp": 1, "tensor": 1}, steps=0)
    ckpt = Checkpointer(tmp_path, CheckpointConfig(every=1))
    ckpt.save(1, state, None)
    ckpt.close()
    # another model's shapes (e.g. the config changed): every step fails, none is set aside
    wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct((*x.shape, 2), x.dtype, sharding=x.sharding), state)
    ckpt = Checkpointer(tmp_path, CheckpointConfig())
    with pytest.raises(RuntimeError, match="could be restored"):
        ckpt.restore(wrong)
    assert ckpt.all_steps() == [1] and sorted(p.name for p in tmp_path.iterdir()) == ["1"]
