"""Mesh, rules, optimizer, schedules, loss and the jitted train step, on a toy NNX model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from train_toy import toy_batch, toy_model

from ipt.train import optim
from ipt.train import state as st
from ipt.train import step as sp
from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh, resolve_axis_sizes


def _setup(axes: dict[str, int], steps: int = 10, devices=None, **kw):
    cfg = MeshConfig(axes=axes)
    rules = LogicalRules(cfg.rules, make_mesh(cfg, devices))
    parts = st.model_parts(toy_model)
    tx, schedule = optim.make_optimizer(
        optim.OptimizerConfig(), steps, optim.decay_mask(parts.params, parts.axes, False)
    )
    shardings = st.state_shardings(tx, parts, rules)
    state = st.init_state(toy_model, 0, tx, shardings)
    return parts, state, sp.make_train_step(parts, tx, schedule, rules, shardings, **kw)


def _losses(axes: dict[str, int], n: int = 4, devices=None, **kw) -> list[float]:
    parts, state, step = _setup(axes, devices=devices, **kw)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        state, m = step(state, toy_batch(rng, 16, 8), parts.rest)
        out.append(float(m["loss"]))
    assert step._cache_size() == 1, "the train step recompiled after step 1"
    return out


def test_mesh_takes_remaining_devices_and_rejects_bad_products():
    assert resolve_axis_sizes({"data": 2, "fsdp": -1, "tensor": 1}, 8) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="not divisible"):
        resolve_axis_sizes({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="hold 4 devices, but 8"):
        resolve_axis_sizes({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match=r"not in mesh\.axes"):
        MeshConfig(axes={"data": -1}, rules=[("embed", "fsdp")])
    mesh = make_mesh(MeshConfig(axes={"data": 2, "fsdp": -1, "tensor": 2}))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_rules_map_logical_names_and_replicate_what_does_not_divide():
    cfg = MeshConfig(axes={"data": 2, "fsdp": 2, "tensor": 2})
    rules = LogicalRules(cfg.rules, make_mesh(cfg))
    assert rules.spec(("embed", "mlp"), (16, 32)) == jax.P("fsdp", "tensor")
    assert rules.spec(("batch", "seq"), (8, 4)) == jax.P(("data", "fsdp"), None)
    # 1 KV head cannot be split 2 ways: replicated instead of a compile error
    assert rules.spec(("embed", "kv_heads", "head_dim"), (16, 1, 8)) == jax.P("fsdp", None, None)
    # batch of 2 splits over `data` only
    assert rules.spec(("batch", "seq"), (2, 4)) == jax.P("data", None)
    assert rules.batch_shards == 4
    with pytest.raises(KeyError, match=r"no entry in mesh\.rules"):
        rules.spec(("experts",))


def test_schedules_shape():
    cos = optim.make_schedule(
        optim.ScheduleConfig(kind="cosine", peak_lr=1.0, warmup_steps=10, final_lr_ratio=0.1), 110
    )
    assert float(cos(0)) == 0.0 and float(cos(10)) == pytest.approx(1.0)
    assert float(cos(60)) == pytest.approx(0.55, abs=1e-6) and float(cos(110)) == pytest.approx(0.1)
    wsd = optim.make_schedule(
        optim.ScheduleConfig(
            kind="wsd", peak_lr=1.0, warmup_steps=10, final_lr_ratio=0.0, decay_fraction=0.2
        ),
        100,
    )
    assert float(wsd(50)) == pytest.approx(1.0) and float(wsd(80)) == pytest.approx(1.0)
    assert float(wsd(90)) == pytest.approx(0.5) and float(wsd(100)) == pytest.approx(0.0)
    const = optim.make_schedule(optim.ScheduleConfig(kind="constant", peak_lr=0.5, warmup_steps=4), 100)
    assert float(const(2)) == pytest.approx(0.25) and float(const(99)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.make_schedule(optim.ScheduleConfig(warmup_steps=100), 100)


def test_weight_decay_mask_excludes_norms_and_by_option_embeddings():
    parts = st.model_parts(toy_model)
    mask = optim.decay_mask(parts.params, parts.axes, decay_embeddings=False)
    assert mask["up"]["kernel"] and mask["down"]["kernel"]
    assert not mask["norm"]["scale"] and not mask["embed"]["embedding"] and not mask["head"]["kernel"]
    assert optim.decay_mask(parts.params, parts.axes, decay_embeddings=True)["embed"]["embedding"]


def test_loss_is_masked_mean_over_target_tokens():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 1, 1]])
    ce, zz, count = sp.token_losses(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    lse = np.log(np.exp(logits).sum(-1))
    want = (lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]) * mask
    assert float(count) == 6
    np.testing.assert_allclose(float(ce), want.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(zz), (lse**2 * mask).sum(), rtol=1e-5)


def test_grad_accumulation_matches_one_batch_and_the_step_compiles_once():
    whole = _losses({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    assert whole[-1] < whole[0], "the toy task should be learnable"
    np.testing.assert_allclose(_losses({"data": 2, "fsdp": 4, "tensor": 1}, grad_accum=4), whole, rtol=2e-5)


def test_non_finite_gradients_skip_the_update():
    parts, state, step = _setup({"data": 8, "fsdp": 1, "tensor": 1})
    rng = np.random.default_rng(0)
    state, m = step(state, toy_batch(rng, 16, 8), parts.rest)
    assert bool(m["finite"]) and int(m["skipped_total"]) == 0
    bad = state["params"]["up"]["kernel"].at[0, 0].set(jnp.nan)
    state["params"]["up"]["kernel"] = bad
    before = jax.tree.map(
        np.asarray, {"params": state["params"], "opt_state": state["opt_state"].inner_state}
    )
    state, m = step(state, toy_batch(rng, 16, 8), parts.rest)
    assert not bool(m["finite"]) and int(m["skipped_total"]) == 1 and int(state["step"]) == 2
    after = jax.tree.map(np.asarray, {"params": state["params"], "opt_state": state["opt_state"].inner_state})
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), before, after)


def test_clipping_scales_the_gradient_adam_sees():
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([3.0, 4.0, 0.0, 0.0])}  # global norm 5
    for clip, scale in ((0.5, 0.1), (10.0, 1.0), (None, 1.0)):
        tx, _ = optim.make_optimizer(optim.OptimizerConfig(clip_norm=clip), 10, {"w": True})
        _, opt_state = tx.update(grads, tx.init(params), params)
        mu = optax.tree_utils.tree_get(opt_state, "mu")  # first moment after one step: (1 - b1) g
        np.testing.assert_allclose(mu["w"], 0.1 * scale * grads["w"], rtol=1e-6)


def test_z_loss_enters_the_gradient_with_its_weight():
    batch = toy_batch(np.random.default_rng(2), 16, 8)
    norms = {}
    for weight in (0.0, 0.5):
        parts, state, step = _setup({"data": 8, "fsdp": 1, "tensor": 1}, z_loss=weight)
        params = jax.tree.map(jnp.copy, state["params"])  # the step donates the state

        def objective(p, w=weight, parts=parts):
            model = nnx.merge(parts.graphdef, p, parts.rest)
            logits = model(batch["inputs"], batch["positions"], batch["segment_ids"])
            ce, zz, count = sp.token_losses(logits, batch["targets"], batch["loss_mask"])
            return (ce + w * zz) / count

        norms[weight] = float(optax.global_norm(jax.grad(objective)(params)))
        _, metrics = step(state, batch, parts.rest)
        np.testing.assert_allclose(float(metrics["grad_norm"]), norms[weight], rtol=1e-5)
        assert float(metrics["z_loss"]) > 0  # reported whether or not it is trained on
    assert abs(norms[0.5] / norms[0.0] - 1) > 1e-3


def test_optimizer_moments_are_sharded_like_their_parameters():
    _, state, _ = _setup({"data": 2, "fsdp": 2, "tensor": 2})
    for moment in ("mu", "nu"):
        tree = optax.tree_utils.tree_get(state["opt_state"], moment)
        jax.tree.map(lambda m, p: _assert_sharded_alike(m, p), tree, state["params"])
    assert state["params"]["up"]["kernel"].sharding.spec == jax.P("fsdp", "tensor")


def _assert_sharded_alike(moment: jax.Array, param: jax.Array) -> None:
    assert moment.sharding.is_equivalent_to(param.sharding, param.ndim), (moment.sharding, param.sharding)
