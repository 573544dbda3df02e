"""The JAX scorer: packed, bucketed, sharded scoring gives every request the score it gets alone."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ipt.eval import rows as rowlib
from ipt.eval.load import ModelLoadError, load_for_eval
from ipt.eval.scorer import Scorer, ScorerConfig
from ipt.model.generate import generate
from ipt.model.store import model_from_params
from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh

ONE_DEVICE = MeshConfig(axes={"data": 1, "fsdp": 1, "tensor": 1})
EIGHT_DEVICES = MeshConfig(axes={"data": 2, "fsdp": 2, "tensor": 2})


def make_scorer(path, mesh_cfg: MeshConfig, devices=None, step=None, **cfg) -> Scorer:
    rules = LogicalRules(mesh_cfg.rules, make_mesh(mesh_cfg, devices))
    loaded = load_for_eval(path, rules, step)
    return Scorer(loaded.config, loaded.params, ScorerConfig(mesh=mesh_cfg, **cfg), rules)


def random_requests(n: int, seed: int = 0, max_ctx: int = 150) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(3, 32000, rng.integers(1, max_ctx)).tolist(),
            rng.integers(3, 32000, rng.integers(1, 20)).tolist(),
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def alone(trained_tiny) -> Scorer:
    """One device, one request per row, no packing: the reference layout."""
    return make_scorer(
        trained_tiny["model"], ONE_DEVICE, jax.devices()[:1], max_length=256, batch_rows=1, pack=False
    )


def test_plan_places_every_request_once_within_its_row():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 300, 500).tolist()
    targets = [int(rng.integers(1, n + 1)) for n in lengths]
    buckets = rowlib.Buckets(rowlib.bucket_widths(300, 32), target_share=0.5)
    assert buckets.widths == (32, 64, 128, 256, 300)
    assert [buckets.slots(w) for w in buckets.widths] == [16, 32, 64, 128, 300]
    plan = rowlib.plan_rows(lengths, targets, buckets, max_segments=6)
    members = sorted(i for row in plan for i in row.members)
    assert members == list(range(500))
    for row in plan:
        assert sum(lengths[i] for i in row.members) <= row.width
        assert sum(targets[i] for i in row.members) <= buckets.slots(row.width)
        assert len(row.members) <= 6
        # a row is never wider than the narrowest bucket that fits its largest request
        assert row.width == max(buckets.fit(lengths[i], targets[i]) for i in row.members)
    unpacked = rowlib.plan_rows(lengths, targets, buckets, max_segments=6, pack=False)
    fill = lambda plan: sum(lengths) / sum(row.width for row in plan)  # noqa: E731
    assert len(unpacked) == 500
    assert fill(plan) > 0.9 and fill(unpacked) < 0.75  # packing pays: little padding left


def test_targets_that_do_not_fit_a_bucket_move_up_one():
    buckets = rowlib.Buckets((64, 128, 256), target_share=0.25)
    assert buckets.fit(60, 16) == 64 and buckets.fit(60, 17) == 128 and buckets.fit(60, 60) == 256
    with pytest.raises(ValueError, match="exceeds the widest bucket"):
        buckets.fit(257, 1)


def test_score_equals_the_models_own_log_softmax(trained_tiny, alone):
    ctx, cont = [1, 415, 354, 6418, 302], [272, 2296, 28723]
    (score,) = alone.loglikelihood([(ctx, cont)])
    model = model_from_params(alone.config, alone.params)
    tokens = np.asarray([ctx + cont])
    n = tokens.shape[1] - 1
    logits = model(tokens[:, :-1], np.arange(n)[None], np.ones((1, n), np.int32))
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    targets = tokens[0, 1:]
    expected = sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))
    argmax = logp.argmax(-1)[len(ctx) - 1 :]
    assert score.num_tokens == len(cont)
    assert score.logprob == pytest.approx(expected, abs=1e-4)
    assert score.greedy == bool(np.all(argmax == targets[len(ctx) - 1 :]))


def test_score_does_not_depend_on_neighbours_bucket_packing_or_devices(trained_tiny, alone):
    requests = random_requests(60)
    reference = alone.loglikelihood(requests)
    packed = make_scorer(trained_tiny["model"], EIGHT_DEVICES, max_length=256, batch_rows=8, min_width=32)
    for variant in (requests, requests[::-1]):
        scores = packed.loglikelihood(variant)
        if variant is not requests:
            scores = scores[::-1]
        np.testing.assert_allclose(
            [s.logprob for s in scores], [s.logprob for s in reference], rtol=1e-5, atol=1e-4
        )
        assert [(s.num_tokens, s.greedy) for s in scores] == [(s.num_tokens, s.greedy) for s in reference]
    # one request in a row of its own, in a wider bucket than it needs
    wide = make_scorer(trained_tiny["model"], ONE_DEVICE, jax.devices()[:1], max_length=256, min_width=256)
    (single,) = wide.loglikelihood(requests[:1])
    assert single.logprob == pytest.approx(reference[0].logprob, abs=1e-4)


def test_compilations_are_at_most_one_per_bucket(trained_tiny):
    scorer = make_scorer(trained_tiny["model"], ONE_DEVICE, jax.devices()[:1], max_length=256, min_width=32)
    requests = random_requests(80, seed=2, max_ctx=230)
    windows = [rowlib.window(c, t, 256) for c, t in requests]
    plan = rowlib.plan_rows([w.length for w in windows], [w.num_targets for w in windows], scorer.buckets, 16)
    used = {row.width for row in plan}
    scorer.loglikelihood(requests)
    assert scorer.compilations == len(used) <= len(scorer.widths)
    scorer.loglikelihood(random_requests(80, seed=3, max_ctx=230))
    assert scorer.compilations <= len(scorer.widths)  # new requests reuse the compiled widths


def test_long_context_is_left_truncated_like_lm_eval(alone):
    ctx, cont = list(range(10, 400)), [500, 501]
    (long,) = alone.loglikelihood([(ctx, cont)])
    (cut,) = alone.loglikelihood([(ctx[-(256 + 1 - len(cont)) :], cont)])
    assert long == cut
    with pytest.raises(ValueError, match="exceeds max_length"):
        alone.loglikelihood([([1], list(range(300)))])


def test_generate_equals_the_model_decoding_each_prompt_alone(trained_tiny, alone):
    prompts = [[1, 415, 354], [1, 415, 354, 6418, 302, 272, 2296], [1, 330]]
    packed = make_scorer(trained_tiny["model"], EIGHT_DEVICES, max_length=256, batch_rows=8)
    model = model_from_params(alone.config, alone.params)
    expected = [generate(model, [p], 12)[0] for p in prompts]
    assert packed.generate(prompts, 12) == expected
    assert alone.generate(prompts, 12) == expected


def test_loads_every_kind_of_model_directory(trained_tiny):
    rules = LogicalRules(ONE_DEVICE.rules, make_mesh(ONE_DEVICE, jax.devices()[:1]))
    final = load_for_eval(trained_tiny["model"], rules)
    run = load_for_eval(trained_tiny["run"], rules)
    early = load_for_eval(trained_tiny["run"], rules, step=20)
    exported = load_for_eval(trained_tiny["hf"], rules)
    assert run.name == "run-step40" and early.name == "run-step20"
    assert run.tokenizer == str(trained_tiny["tokenizer"]) and exported.tokenizer == str(trained_tiny["hf"])
    weight = lambda m: np.asarray(m.params["embed_tokens"]["weight"])  # noqa: E731
    np.testing.assert_array_equal(weight(run), weight(final))
    np.testing.assert_array_equal(weight(exported), weight(final))  # float32 export
    assert not np.array_equal(weight(early), weight(final))
    with pytest.raises(ModelLoadError, match=r"no checkpoint for step 7; saved steps: \[20, 40\]"):
        load_for_eval(trained_tiny["run"], rules, step=7)
    with pytest.raises(ModelLoadError, match="not a model"):
        load_for_eval(trained_tiny["heldout"], rules)
