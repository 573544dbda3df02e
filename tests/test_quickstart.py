"""`ipt quickstart`, the toy comparison: end to end as a user runs it, its report recomputed from the
run's files, its figure, its run directory safety, and the held-out response-loss scorer it relies on."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import jax
import matplotlib.image
import numpy as np
import pytest

from ipt.collection import Entry, iter_collections
from ipt.cook.pools import default_pools
from ipt.cook.render import cook_collection
from ipt.eval.response_loss import cooked_text, kept_pairs, plain_text, response_loss
from ipt.quickstart.plot import loss_curves_figure, save_png
from ipt.quickstart.run import MARKER, QuickstartError, main, prepare_run_dir

STEPS = 16
MODELS = ("vanilla", "instruct")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> dict:
    """One small quickstart in a subprocess, then the same command again (which must only resume)."""
    run_dir = tmp_path_factory.mktemp("qs") / "run"
    cmd = [
        sys.executable,
        "-m",
        "ipt.cli",
        "quickstart",
        f"run_dir={run_dir}",
        f"steps={STEPS}",
        "eval_limit=1",
        "heldout_every=40",  # about 30 held-out documents: a quicker evaluation
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (run_dir / "REPORT.md").read_bytes()
    png = (run_dir / "loss_curves.png").read_bytes()
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"dir": run_dir, "report": report, "png": png, "rerun": second}


def _table_row(report: str, label: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def _expected_rows(run_dir: Path, model: str) -> dict[str, str]:
    """The comparison table's cells for one model, recomputed here from metrics.jsonl and the eval JSON."""
    lines = (run_dir / "train" / model / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    evaluation = json.loads((run_dir / "eval" / model / "ipt_results.json").read_text())
    throughput = statistics.median(r["tokens_per_s"] for r in records[1:])
    return {
        "held-out response loss, cooked format": f"{evaluation['response_loss']['cooked']['loss']:.4f}",
        "held-out response loss, plain Q/A format": f"{evaluation['response_loss']['plain']['loss']:.4f}",
        "bits per byte, held-out raw text": f"{evaluation['heldout']['heldout_raw']['bits_per_byte']:.4f}",
        "final training loss": f"{np.mean([r['loss'] for r in records[-10:]]):.4f}",
        "CORE, nine tasks": f"{evaluation['core']['core']:.4f}",
        "training throughput": f"{throughput:.0f}",
    }


@pytest.mark.slow
def test_quickstart_report_numbers_are_recomputed_from_the_runs_files(quickstart_run):
    run_dir = quickstart_run["dir"]
    report = quickstart_run["report"].decode()
    for model in MODELS:
        lines = (run_dir / "train" / model / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
    expected = {model: _expected_rows(run_dir, model) for model in MODELS}
    for label in expected["vanilla"]:
        cells = _table_row(report, label)
        assert cells[:2] == [expected["vanilla"][label], expected["instruct"][label]], label
    cooked = _table_row(report, "held-out response loss, cooked format")
    assert cooked[2] == ("instruct" if float(cooked[1]) < float(cooked[0]) else "vanilla")
    nine = report.split("## 3. The paper's nine general tasks")[1].split("## 4.")[0]
    assert len([line for line in nine.splitlines() if line.startswith("| paper_")]) == 9
    assert "near chance" in nine
    # the commands that made the numbers are in the report, and so is each model's mixture
    assert report.count("\nipt train --config ") == 2 and report.count("\nipt eval model=") == 2
    trains = {
        m: next(line for line in report.splitlines() if f"run_dir={run_dir}/train/{m}" in line)
        for m in MODELS
    }
    assert '"name": "augmented"' in trains["instruct"] and "augmented" not in trains["vanilla"]
    assert "<QUE>" not in report and "<CON>" not in report


@pytest.mark.slow
def test_quickstart_rerun_resumes_every_stage_and_rewrites_the_same_bytes(quickstart_run):
    run_dir, rerun = quickstart_run["dir"], quickstart_run["rerun"]
    log = rerun.stderr + rerun.stdout
    assert len(re.findall(r"synthesize: shard 0/1: .* 0 chunks written, [1-9] already done", log)) == 2
    assert re.search(r"ipt cook: .*: done earlier, skipped", log) and not re.search(
        r"ipt cook: .*: \d+ texts", log
    )
    assert log.count("ipt_results.json): done earlier, skipped") == 2  # both evaluations
    assert {m for m in MODELS if f"train/{m}" in log} == set(MODELS)
    assert log.count(f"ipt train: done at step {STEPS}") >= 2 and "ipt eval: wrote" not in log
    assert (run_dir / "REPORT.md").read_bytes() == quickstart_run["report"]
    assert (run_dir / "loss_curves.png").read_bytes() == quickstart_run["png"]


@pytest.mark.slow
def test_quickstart_png_is_a_real_picture(quickstart_run):
    image = matplotlib.image.imread(quickstart_run["dir"] / "loss_curves.png")
    height, width = image.shape[:2]
    assert width > 500 and height > 300
    assert image[..., :3].std() > 0.05  # not blank
    colours = {tuple(px) for px in (image[..., :3] * 255).astype(int).reshape(-1, 3)[::7]}
    assert len(colours) > 20  # lines, text and axes, not one flat colour


def test_loss_curves_figure_has_two_labelled_lines_and_axis_labels(tmp_path):
    curves = {"vanilla": ([1, 2, 3], [10.0, 9.0, 8.5]), "instruct": ([1, 2, 3], [10.0, 8.8, 8.1])}
    fig = loss_curves_figure(curves, "title here")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["vanilla", "instruct"]
    np.testing.assert_array_equal(ax.get_lines()[1].get_ydata(), [10.0, 8.8, 8.1])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["vanilla", "instruct"]
    assert ax.get_xlabel() == "training step" and "loss" in ax.get_ylabel()
    assert ax.get_title() == "title here"
    save_png(fig, tmp_path / "curves.png")
    assert matplotlib.image.imread(tmp_path / "curves.png").std() > 0.05
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temp file left


def test_fresh_deletes_only_a_quickstart_run_directory(tmp_path, capsys):
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(QuickstartError, match=MARKER):
        prepare_run_dir(other, fresh=True)
    assert main([f"run_dir={other}", "fresh=true"]) == 2
    err = capsys.readouterr().err
    assert "not a quickstart run directory" in err and "Traceback" not in err
    assert (other / "precious.txt").read_text() == "keep me"

    run = tmp_path / "run"
    prepare_run_dir(run, fresh=False)
    (run / "stage-output").write_text("old")
    prepare_run_dir(run, fresh=False)  # a rerun keeps what is there
    assert (run / "stage-output").exists()
    prepare_run_dir(run, fresh=True)
    assert sorted(p.name for p in run.iterdir()) == [MARKER]


# ----------------------------------------------------------------------------- held-out response loss


@pytest.fixture(scope="module")
def heldout_entries(tmp_path_factory, corpus_docs) -> list[Entry]:
    """Real read collections: the rules engine (M=2) on 40 documents of the built-in corpus."""
    from ipt.synth.run import main as synthesize

    root = tmp_path_factory.mktemp("heldout")
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus_docs[200:240]))
    assert synthesize([f"input={root / 'docs.jsonl'}", f"output_dir={root / 'out'}", "engine=rules"]) == 0
    return [e for _, chain in iter_collections(root / "out" / "chunk-000000.jsonl") for e in chain]


def test_cooked_format_is_exactly_what_ipt_cook_renders(heldout_entries):
    pools = default_pools()
    layouts = set()
    for entry in heldout_entries:
        example = cooked_text(entry, 7, pools)
        cooked = cook_collection([Entry(entry.context, entry.pairs)], 7, pools)
        if example is None:
            assert cooked.layouts in ([], ["raw"])
            continue
        assert cooked.texts == [example.text]
        layouts.add(cooked.layouts[0])
        starts = [start for start, _ in example.answers]
        assert starts == sorted(starts) and all(e > s for s, e in example.answers)
        plain = plain_text(entry)
        assert len(plain.answers) == len(example.answers)
        assert [plain.text[s:e] for s, e in plain.answers] == [a for _, a, _ in kept_pairs(entry)]
    assert len(layouts) >= 2  # several of cook's layouts were exercised


def _direct_answer_loss(model, tok, text: str, spans) -> tuple[float, int, float]:
    """Mean NLL over the tokens that overlap an answer span, from one full forward pass of ipt's model,
    with answer tokens found through the Hugging Face tokenizer's offsets (not ipt's loss-mask code)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray([tok.bos_token_id, *enc["input_ids"]], np.int32)[None]
    is_answer = [any(s < e_tok and s_tok < e for s, e in spans) for s_tok, e_tok in enc["offset_mapping"]]
    n = ids.shape[1] - 1
    logits = model(ids[:, :-1], np.arange(n)[None], np.ones((1, n), np.int32))
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))[np.arange(n), ids[0, 1:]]
    picked = -logp[np.asarray(is_answer)]
    return float(picked.mean()), len(picked), float(-logp.mean())


def test_response_loss_counts_only_answer_tokens_and_matches_a_direct_computation(trained_tiny):
    from transformers import AutoTokenizer

    from ipt.eval.load import load_for_eval
    from ipt.eval.scorer import Scorer, ScorerConfig
    from ipt.model.store import model_from_params
    from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh

    entry = Entry(
        "The for statement iterates over the items of any sequence, in the order that they appear.",
        (
            ("What does the for statement iterate over?", "The items of any sequence."),
            (
                "In which order?\nOptions:\n- reversed\n- the order that they appear",
                "the order that they appear",
            ),
        ),
        False,
    )
    mesh_cfg = MeshConfig(axes={"data": 1, "fsdp": 1, "tensor": 1})
    rules = LogicalRules(mesh_cfg.rules, make_mesh(mesh_cfg, jax.devices()[:1]))
    loaded = load_for_eval(trained_tiny["model"], rules)
    scorer = Scorer(loaded.config, loaded.params, ScorerConfig(max_length=512, mesh=mesh_cfg), rules)
    tok = AutoTokenizer.from_pretrained(trained_tiny["tokenizer"])
    model = model_from_params(loaded.config, loaded.params)
    got = response_loss(scorer, tok, [entry], seed=3)
    for name, example in (("cooked", cooked_text(entry, 3, default_pools())), ("plain", plain_text(entry))):
        loss, answer_tokens, every_token_loss = _direct_answer_loss(model, tok, example.text, example.answers)
        assert got[name]["answers"] == 2 and got[name]["texts"] == 1
        assert got[name]["tokens"] == answer_tokens > 0
        assert got[name]["loss"] == pytest.approx(loss, rel=1e-5)
        assert not math.isclose(
            loss, every_token_loss, rel_tol=1e-3
        )  # the text and questions are not counted
    assert plain_text(entry).text.endswith("A: the order that they appear")
    assert not math.isclose(got["cooked"]["loss"], got["plain"]["loss"])


def test_eval_refuses_response_loss_files_that_do_not_exist(trained_tiny, tmp_path, capsys):
    from ipt.eval.run import main as eval_main

    args = [f"model={trained_tiny['run']}", f"response_loss={tmp_path / 'none-*.jsonl'}"]
    assert eval_main(args) == 2
    err = capsys.readouterr().err
    assert "matches no file" in err and "Traceback" not in err


def test_quickstart_split_holds_out_documents_by_id(tmp_path, corpus_docs):
    from ipt.quickstart.run import CORPUS
    from ipt.quickstart.split import is_heldout, split_corpus

    counts = split_corpus(CORPUS, tmp_path, every=10)
    train = [json.loads(line)["id"] for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line)["id"] for line in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert counts == {"train": len(train), "heldout": len(heldout)}
    assert sorted(train + heldout) == sorted(d["id"] for d in corpus_docs) and not set(train) & set(heldout)
    assert all(is_heldout(i, 10) for i in heldout) and 0.05 < len(heldout) / len(corpus_docs) < 0.15
    before = (tmp_path / "heldout.jsonl").read_bytes()
    split_corpus(CORPUS, tmp_path / "again", every=10)
    assert (tmp_path / "again" / "heldout.jsonl").read_bytes() == before
