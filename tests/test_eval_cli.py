"""`ipt eval` end to end: what it writes, bits-per-byte, and the refusals (exit 2, nothing written)."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from ipt.eval.load import load_for_eval
from ipt.eval.proxy import bits_per_byte, read_documents
from ipt.eval.run import main as eval_main
from ipt.eval.scorer import Scorer, ScorerConfig
from ipt.model.store import model_from_params
from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh


@pytest.mark.slow
def test_writes_lm_evals_files_and_ipts_tables(trained_tiny, tmp_path):
    out = tmp_path / "out"
    args = [
        f"model={trained_tiny['run']}",
        "step=20",
        "tasks=paper_arc_easy,paper_boolq",
        "limit=4",
        f"heldout={trained_tiny['heldout']}",
        "heldout_docs=4",
        "domain_tasks=medqa_en",
        "max_length=512",
        "log_samples=true",
        f"output={out}",
    ]
    assert eval_main(args) == 0
    (results_file,) = (out / "run-step20").glob("results_*.json")
    results = json.loads(results_file.read_text())
    assert set(results["results"]) == {"paper_arc_easy", "paper_boolq"}
    assert results["n-samples"]["paper_arc_easy"]["effective"] == 4
    samples = [
        json.loads(line)
        for f in (out / "run-step20").glob("samples_paper_arc_easy_*.jsonl")
        for line in f.open()
    ]
    assert len(samples) == 4 and all(len(s["resps"]) == len(s["arguments"]) for s in samples)
    summary = json.loads((out / "ipt_results.json").read_text())
    core = summary["core"]
    assert core["tasks"]["paper_arc_easy"]["metric"] == "acc_norm"
    assert core["tasks"]["paper_boolq"]["chance"] == 0.5
    expected = np.mean([(r["accuracy"] - r["chance"]) / (1 - r["chance"]) for r in core["tasks"].values()])
    assert core["core"] == pytest.approx(expected)
    assert summary["domain"]["medqa_en"]["samples"] == 4
    assert summary["heldout"]["heldout"]["documents"] == 4
    report = (out / "results.md").read_text()
    assert "paper_arc_easy" in report and "**CORE**" in report and "bits/byte" in report
    assert not list(tmp_path.glob(".out.tmp-*"))  # the staging directory is gone


def test_bits_per_byte_equals_a_direct_computation(trained_tiny):
    mesh_cfg = MeshConfig(axes={"data": 1, "fsdp": 1, "tensor": 1})
    rules = LogicalRules(mesh_cfg.rules, make_mesh(mesh_cfg, jax.devices()[:1]))
    loaded = load_for_eval(trained_tiny["model"], rules)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained_tiny["tokenizer"])
    docs, _ = read_documents(trained_tiny["heldout"], limit=3)
    model = model_from_params(loaded.config, loaded.params)
    nll = num_bytes = 0.0
    for ids in docs:
        x = np.asarray(ids, np.int32)[None]
        logits = model(x[:, :-1], np.arange(x.shape[1] - 1)[None], np.ones((1, x.shape[1] - 1), np.int32))
        logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
        nll -= logp[np.arange(x.shape[1] - 1), x[0, 1:]].sum()
        num_bytes += len(tok.decode(ids.tolist(), skip_special_tokens=True).encode())
    scorer = Scorer(loaded.config, loaded.params, ScorerConfig(max_length=2048, mesh=mesh_cfg), rules)
    got = bits_per_byte(scorer, tok, trained_tiny["heldout"], limit=3)
    assert max(len(d) for d in docs) <= 2048  # one window per document: the direct pass sees the same
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / num_bytes, rel=1e-5)
    assert got["tokens"] == sum(len(d) - 1 for d in docs)
    # in windows of 64 tokens every token is still predicted exactly once
    short = Scorer(
        loaded.config, loaded.params, ScorerConfig(max_length=64, min_width=16, mesh=mesh_cfg), rules
    )
    windowed = bits_per_byte(short, tok, trained_tiny["heldout"], limit=3)
    assert windowed["tokens"] == got["tokens"] and windowed["bits_per_byte"] > got["bits_per_byte"]


def refuses(args, capsys, *needles) -> None:
    assert eval_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_refused_with_a_clear_error_and_nothing_written(
    trained_tiny, bpe_tokenizer_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    run = f"model={trained_tiny['run']}"
    refuses(
        [run, "tasks=paper_arc_esy", f"output={out}"],
        capsys,
        "unknown task 'paper_arc_esy'",
        "paper_arc_easy",
    )
    refuses(
        [run, "step=7", "tasks=paper_arc_easy", f"output={out}"],
        capsys,
        "no checkpoint for step 7",
        "[20, 40]",
    )
    refuses(
        [run, f"tokenizer={bpe_tokenizer_dir}", "tasks=paper_arc_easy"],
        capsys,
        "differs from the one the model",
    )
    refuses(
        [f"model={trained_tiny['model']}", "tasks=paper_arc_easy"],
        capsys,
        "no tokenizer came with this model",
    )
    bad = tmp_path / "bad_task.jsonl"
    bad.write_text(
        '{"input": "Q1", "options": ["a", "b"], "gold_index": 0}\n{"input": "Q2", "options": ["a", "b"]}\n'
    )
    refuses([run, f"domain_tasks={bad}", f"output={out}"], capsys, f"{bad}:2")
    refuses([run, "domain_tasks=no_such_task", f"output={out}"], capsys, "no_such_task", "medqa_en")
    refuses([run, "tasks=arc_easy", "limit=2", f"output={out}"], capsys, "cannot be reached", "tasks=paper")
    refuses([run], capsys, "nothing to evaluate")
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_domain_multiple_choice_matches_torch_on_the_exported_model(trained_tiny):
    """The domain scorer on ipt's JAX model picks by the mean answer-token NLL that PyTorch
    computes directly on the HF export of the same weights (real MedQA items)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ipt.eval.domain import evaluate_domain_task
    from ipt.eval.domain_tasks import read_domain_tasks, resolve_domain_task

    mesh_cfg = MeshConfig(axes={"data": 1, "fsdp": 1, "tensor": 1})
    rules = LogicalRules(mesh_cfg.rules, make_mesh(mesh_cfg, jax.devices()[:1]))
    loaded = load_for_eval(trained_tiny["model"], rules)
    scorer = Scorer(loaded.config, loaded.params, ScorerConfig(max_length=1024, mesh=mesh_cfg), rules)
    tok = AutoTokenizer.from_pretrained(trained_tiny["tokenizer"])
    task = read_domain_tasks(resolve_domain_task("medqa_en"))
    result = evaluate_domain_task(task, scorer, tok, max_length=1024, limit=5)
    torch_model = AutoModelForCausalLM.from_pretrained(trained_tiny["hf"], dtype=torch.float32).eval()
    for item, sample in zip(task.items[:5], result.samples, strict=True):
        prompt_len = 1 + len(tok.encode(item.input, add_special_tokens=False))
        expected = []
        for option in item.options:
            ids = [tok.bos_token_id, *tok.encode(f"{item.input} {option}", add_special_tokens=False)]
            with torch.no_grad():
                logits = torch_model(torch.tensor([ids])).logits[0]
            expected.append(
                float(F.cross_entropy(logits[prompt_len - 1 : -1], torch.tensor(ids[prompt_len:])))
            )
        np.testing.assert_allclose(sample["nll"], expected, atol=1e-4)
        assert sample["prediction"] == int(np.argmin(expected))


def test_lm_eval_builds_the_registered_ipt_model_from_its_arguments(trained_tiny):
    """`simple_evaluate(model="ipt", model_args=...)`, as lm-eval's own entry points call it."""
    import lm_eval

    import ipt.eval.harness  # noqa: F401  (registers the `ipt` model class)
    from ipt.eval.run import task_manager

    out = lm_eval.simple_evaluate(
        model="ipt",
        model_args=f"pretrained={trained_tiny['run']},step=20,max_length=256",
        tasks=["paper_piqa"],
        limit=2,
        batch_size=4,
        task_manager=task_manager(None, ["paper_piqa"]),
        bootstrap_iters=0,
    )
    assert out["results"]["paper_piqa"]["acc,none"] in (0.0, 0.5, 1.0)
    assert out["config"]["model"] in ("ipt", "IptLM")
