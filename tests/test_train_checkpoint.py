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


def flip_bytes_in_largest_data_file(step_dir, where: str = "ocdbt.process_0/d", at: float = 0.5) -> None:
    """XOR 4 bytes of the step's largest data file under `state/where` (bit rot on disk)."""
    target = max((step_dir / "state" / where).iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    start = int(len(data) * at)
    for i in range(start, start + 4):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))


def test_a_damaged_index_node_falls_back_in_one_line(tmp_path, caplog):
    """Small arrays live inside OCDBT's b-tree nodes, which TensorStore checks itself (CRC-32C);
    its error runs to pages of specs, cut here to one line. Bit rot in large arrays' data, which
    no one else checks, is the test in test_train_loop.py (the content checksums)."""
    state, abstract = _trained_state({"data": 2, "fsdp": 4, "tensor": 1}, steps=1)
    ckpt = Checkpointer(tmp_path, CheckpointConfig(every=1, keep=None))
    ckpt.save(1, state, {"i": 1})
    ckpt.save(2, state, {"i": 2})
    ckpt.close()
    flip_bytes_in_largest_data_file(tmp_path / "2", where="d")
    ckpt = Checkpointer(tmp_path, CheckpointConfig())
    step, restored, data_state = ckpt.restore(abstract)
    ckpt.close()
    assert step == 1 and data_state == {"i": 1}
    _assert_same(restored, state)
    assert [p.name.split(".")[1].split("-")[0] for p in tmp_path.glob("2.*")] == ["unrestorable"]
    (line,) = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert "/2 cannot be used (ValueError: DATA_LOSS: Error opening" in line
    assert "\n" not in line and len(line) < 600 and "tensorstore_spec" not in line


def test_checksums_do_not_depend_on_the_mesh_and_see_any_changed_word():
    from ipt.train.checksum import ChecksumMismatchError, state_checksums, verify_checksums

    state, _ = _trained_state({"data": 2, "fsdp": 4, "tensor": 1}, steps=1)
    sums = state_checksums(state)
    moved = jax.device_put(state, jax.devices()[0])
    assert state_checksums(moved) == sums
    kernel = np.asarray(state["params"]["up"]["kernel"]).copy()
    swapped = kernel.copy()
    swapped[0, 0], swapped[0, 1] = kernel[0, 1], kernel[0, 0]  # same words, other places
    one_bit = kernel.copy()
    one_bit.view(np.uint32)[3, 2] ^= 1
    for changed in (swapped, one_bit):
        damaged = {**state, "params": {**state["params"], "up": {**state["params"]["up"], "kernel": changed}}}
        with pytest.raises(
            ChecksumMismatchError, match=r"1 of \d+ arrays \(\['params'\]\['up'\]\['kernel'\]\)"
        ):
            verify_checksums(damaged, sums)
