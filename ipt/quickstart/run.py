"""The quickstart driver: split, synthesize, cook, tokenize, train two models, evaluate both, report.

Every stage runs as its `ipt` command line (`ipt.quickstart.commands`) and is skipped on a rerun
by its own completion markers (synthesis chunks, cook markers, tokenize markers, training
checkpoints, and here one marker per evaluation). `fresh=true` deletes the run directory first,
but only one that this quickstart created (it holds `quickstart.json`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

import ipt
from ipt.config import Config, load_config
from ipt.quickstart import commands as cmds
from ipt.quickstart.commands import MODELS, PARTS, Command, Layout
from ipt.resources import config_file
from ipt.stage import run_stage
from ipt.stage.files import atomic_write_text
from ipt.stage.identity import COMPLETE_FILE

CORPUS = Path(ipt.__file__).parent / "assets" / "corpus.jsonl.gz"
MARKER = "quickstart.json"
PAPER_AUGMENTED_SHARE = 0.28  # configs/data/from_scratch.yaml: augmented 27.8 : raw 71.4


class QuickstartConfig(Config):
    """Compare vanilla and instruction pre-training of the tiny model on the built-in corpus, on CPU."""

    run_dir: str = Field("runs/quickstart", description="every stage's output goes under this directory")
    train_config: str = Field(
        str(config_file("experiments", "quickstart")), description="the training experiment"
    )
    steps: int = Field(120, gt=0, description="training steps of each model (same batch and seq_len)")
    augmented_share: float = Field(
        PAPER_AUGMENTED_SHARE,
        gt=0,
        lt=1,
        description="instruct: share of training tokens from augmented text",
    )
    heldout_every: int = Field(10, ge=2, description="hold out about one document in this many")
    rounds: int = Field(2, ge=1, description="M: rounds of multi-round synthesis")
    seed: int = Field(0, ge=0, description="one seed for synthesis, cooking, initialisation and data order")
    prompt: str = Field("The for statement in Python", description="what each trained model continues")
    eval_limit: int = Field(
        10, ge=0, description="documents per task (per MMLU subject) for the nine-task table; 0 skips it"
    )
    fresh: bool = Field(False, description="delete this quickstart's run directory first, then run anew")


class QuickstartError(ValueError):
    """A quickstart that cannot run as configured; the message says why."""


def say(message: str) -> None:
    print(f"\n== ipt quickstart: {message}", file=sys.stderr, flush=True)


def prepare_run_dir(run: Path, fresh: bool) -> None:
    """Refuse a directory this quickstart did not create; with `fresh`, empty one that it did."""
    marker = run / MARKER
    if run.is_dir() and any(run.iterdir()) and not marker.exists():
        raise QuickstartError(
            f"run_dir={run} holds files but no {MARKER}, so it is not a quickstart run directory; "
            "choose another run_dir, or remove it yourself"
        )
    if run.exists() and not run.is_dir():
        raise QuickstartError(f"run_dir={run} is a file, not a directory")
    if fresh and run.exists():
        say(f"fresh=true: removing {run}")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        atomic_write_text(marker, json.dumps({"format": "ipt-quickstart/2", "corpus": CORPUS.name}) + "\n")


def run_command(what: str, command: Command) -> None:
    say(f"{what}\n   {command.shell()}")
    start = time.perf_counter()
    code = command.run()
    if code:
        raise StageFailed(command, code)
    say(f"{command.argv[0]} finished in {time.perf_counter() - start:.0f} s")


class StageFailed(RuntimeError):
    def __init__(self, command: Command, code: int):
        super().__init__(f"`{command.shell()}` exited with {code}")
        self.code = code


@dataclass(frozen=True)
class Step:
    """One command of the run; an evaluation also names the training command of its model."""

    what: str
    command: Command
    scores: Command | None = None
    output: Path | None = None


def run_evaluation(step: Step) -> None:
    """`ipt eval`, skipped when its marker records this command on this training run."""
    assert step.scores is not None and step.output is not None
    marker = step.output.parent / f"{step.output.name}.done.json"
    identity = {"eval": list(step.command.argv), "train": list(step.scores.argv)}
    if marker.exists() and json.loads(marker.read_text(encoding="utf-8")) == identity:
        say(f"{step.what}: done earlier, skipped ({marker})")
        return
    run_command(step.what, step.command)
    atomic_write_text(marker, json.dumps(identity, indent=1) + "\n")


def plan(cfg: QuickstartConfig, layout: Layout, seq_len: int) -> list[Step]:
    """Every command of the run, in order, with what it makes."""
    steps = [
        Step(
            f"synthesize pairs from the {part} documents (rules engine, M={cfg.rounds})",
            cmds.synthesize(layout, part, cfg.rounds, cfg.seed),
        )
        for part in PARTS
    ]
    steps.append(
        Step("cook the training collections into instruction-augmented text", cmds.cook(layout, cfg.seed))
    )
    steps += [Step(f"tokenize {name} text", command) for name, command in cmds.tokenize_all(layout).items()]
    trains = {
        model: cmds.train(layout, model, cfg.train_config, cfg.steps, cfg.seed, cfg.augmented_share)
        for model in MODELS
    }
    steps += [Step(f"train {m} ({layout.train(m) / 'metrics.jsonl'})", trains[m]) for m in MODELS]
    steps += [
        Step(
            f"evaluate {m} ({layout.eval(m) / 'ipt_results.json'})",
            cmds.evaluate(layout, m, seq_len, cfg.eval_limit, cfg.seed),
            scores=trains[m],
            output=layout.eval(m),
        )
        for m in MODELS
    ]
    return steps


def split_command(layout: Layout, every: int) -> str:
    """The split as a shell command (it is a quickstart step, not an `ipt` stage)."""
    corpus, out = json.dumps(str(CORPUS)), json.dumps(str(layout.root / "split"))
    code = (
        "from pathlib import Path; from ipt.quickstart.split import split_corpus; "
        f"print(split_corpus(Path({corpus}), Path({out}), {every}))"
    )
    return shlex.join(["python", "-c", code])


def generate_sample(train_dir: Path, prompt: str) -> str:
    """Greedily continue `prompt` with the final checkpoint of one training run."""
    from ipt.data.tokenizer import load_tokenizer
    from ipt.eval.load import load_for_eval
    from ipt.model.generate import generate
    from ipt.model.store import model_from_params
    from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh

    mesh = MeshConfig()
    loaded = load_for_eval(train_dir, LogicalRules(mesh.rules, make_mesh(mesh)))
    tok = load_tokenizer(loaded.tokenizer or "mistral-v1")
    ids = tok(prompt)["input_ids"]
    model = model_from_params(loaded.config, loaded.params)
    new = generate(model, [ids], max_new_tokens=48, eos_ids=[tok.eos_token_id])[0]
    return tok.decode(ids + new, skip_special_tokens=True)


def report_inputs(cfg: QuickstartConfig, layout: Layout, train_cfg, steps: list[Step]):
    """What the report shows besides the models' numbers, read from the stages' own files."""
    from ipt.data.records import read_manifest
    from ipt.quickstart.report import ReportInputs
    from ipt.quickstart.results import response_counts

    def synth_stats(part: str) -> dict:
        path = layout.collections(part) / "stats.shard-00000-of-00001.json"
        return json.loads(path.read_text(encoding="utf-8"))

    cooked = json.loads((layout.cooked / COMPLETE_FILE).read_text(encoding="utf-8"))["counts"]
    first_file = sorted(layout.cooked.glob("*.jsonl"))[0]
    with first_file.open(encoding="utf-8") as f:
        first_text = json.loads(f.readline())["text"]
    manifests = {name: read_manifest(layout.tokens(name)) for name in ("raw", "augmented", "heldout_raw")}
    data = train_cfg.data
    share = cfg.augmented_share
    return ReportInputs(
        run_dir=str(layout.root),
        documents=json.loads((layout.root / "split" / "split.json").read_text())["documents"],
        heldout_every=cfg.heldout_every,
        synthesis={part: synth_stats(part) for part in PARTS},
        cooked_texts=cooked.get("texts", 0),
        first_cooked_text=first_text,
        tokens={name: (m.num_docs, m.num_tokens) for name, m in manifests.items()},
        sources={
            "vanilla": "`raw` only",
            "instruct": f"`raw` {1 - share:.0%} + `augmented` {share:.0%} of the tokens (the paper's "
            "raw : augmented = 71.4 : 27.8, configs/data/from_scratch.yaml)",
        },
        budget=f"{cfg.steps} steps x {data.batch_size} rows x {data.seq_len} tokens = "
        f"{cfg.steps * data.batch_size * data.seq_len:,} tokens, seed {cfg.seed}",
        responses=response_counts(layout.eval("vanilla")),
        samples={model: generate_sample(layout.train(model), cfg.prompt) for model in MODELS},
        commands=[("split the corpus", split_command(layout, cfg.heldout_every))]
        + [(step.what, step.command.shell()) for step in steps],
        eval_limit=cfg.eval_limit,
    )


def write_outputs(cfg: QuickstartConfig, layout: Layout, train_cfg, steps) -> str:
    """loss_curves.png and REPORT.md from the run's files; returns the report."""
    from ipt.quickstart.plot import loss_curves_figure, save_png
    from ipt.quickstart.report import render_report
    from ipt.quickstart.results import read_model_results

    results = {m: read_model_results(layout.train(m), layout.eval(m)) for m in MODELS}
    title = f"Tiny model, {cfg.steps} steps, same token budget: vanilla vs instruction pre-training"
    save_png(
        loss_curves_figure({m: (r.steps, r.losses) for m, r in results.items()}, title),
        layout.root / "loss_curves.png",
    )
    report = render_report(report_inputs(cfg, layout, train_cfg, steps), results)
    atomic_write_text(layout.root / "REPORT.md", report + "\n")
    return report


def quickstart(cfg: QuickstartConfig) -> int:
    from ipt.quickstart.split import split_corpus
    from ipt.train.config import TrainConfig

    layout = Layout(Path(cfg.run_dir).absolute())
    try:
        train_cfg = load_config(TrainConfig, cfg.train_config)
        prepare_run_dir(layout.root, cfg.fresh)
        say(f"split the corpus into training and held-out documents -> {layout.root / 'split'}")
        counts = split_corpus(CORPUS, layout.root / "split", cfg.heldout_every)
        say(f"{counts['train']} training, {counts['heldout']} held-out documents")
        steps = plan(cfg, layout, train_cfg.data.seq_len)
        for step in steps:
            if step.scores is None:
                run_command(step.what, step.command)
            else:
                run_evaluation(step)
    except (QuickstartError, ValueError) as e:
        print(f"ipt quickstart: error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"ipt quickstart: {e}", file=sys.stderr)
        return e.code
    report = write_outputs(cfg, layout, train_cfg, steps)
    print(report)
    say(f"done: {layout.root / 'REPORT.md'} and {layout.root / 'loss_curves.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault(
        "JAX_PLATFORMS", "cpu"
    )  # the quickstart is a CPU run, even where libtpu is installed
    return run_stage(QuickstartConfig, quickstart, list(argv or []), prog="ipt quickstart")
