"""`ipt quickstart`: every stage of the pipeline on the built-in corpus, on CPU, in minutes.

synthesize (rules engine, M=2) -> cook -> tokenize (raw and augmented text) -> train the tiny
model on a raw + instruction-augmented mixture -> generate from it -> score it on the paper's
nine tasks (`ipt eval`) -> REPORT.md. Each stage is
called exactly as its command would be, through its typed config, so the quickstart doubles
as a worked example. Rerunning resumes: finished stages are skipped by their own markers.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from ipt.config import Config, load_config
from ipt.stage import run_stage

CORPUS = Path(__file__).parent / "assets" / "corpus.jsonl.gz"
REPO = Path(__file__).resolve().parents[1]
TICKS = "▁▂▃▄▅▆▇█"


class QuickstartConfig(Config):
    """Run the whole pipeline on the built-in corpus (Python documentation prose) on CPU."""

    run_dir: str = Field("runs/quickstart", description="every stage's output goes under this directory")
    train_config: str = Field(
        str(REPO / "configs" / "experiments" / "quickstart.yaml"), description="the training experiment"
    )
    steps: int = Field(150, gt=0, description="training steps")
    augmented_share: float = Field(
        0.5, gt=0, lt=1, description="share of training tokens from instruction-augmented text"
    )
    rounds: int = Field(2, ge=1, description="M: rounds of multi-round synthesis")
    seed: int = 0
    prompt: str = Field("The for statement in Python", description="what the trained model continues")
    eval_limit: int = Field(
        40, ge=0, description="documents per task (per MMLU subject) for the nine-task table; 0 skips it"
    )


def _say(message: str) -> None:
    print(f"\n== ipt quickstart: {message}", file=sys.stderr, flush=True)


def _stage(schema: type[Config], **values) -> Config:
    """Build a stage's config from key=value pairs, with the same validation as its command line."""
    return load_config(schema, None, [f"{k}={json.dumps(v)}" for k, v in values.items()])


def sparkline(values: Sequence[float], width: int = 60) -> str:
    if not values:
        return ""
    step = max(1, len(values) // width)
    points = [sum(values[i : i + step]) / len(values[i : i + step]) for i in range(0, len(values), step)]
    lo, hi = min(points), max(points)
    scale = (len(TICKS) - 1) / (hi - lo) if hi > lo else 0.0
    return "".join(TICKS[round((p - lo) * scale)] for p in points)


def _first_collection_with_pairs(collections_dir: Path) -> list[dict]:
    for path in sorted(collections_dir.glob("chunk-*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                entries = json.loads(line)
                if any(e["QA_list"] for e in entries):
                    return entries
    return []


def _generate_sample(train_cfg, prompt: str) -> str:
    """Restore the newest checkpoint and greedily continue `prompt` with the trained model."""
    from ipt.data.tokenizer import load_tokenizer
    from ipt.model.generate import generate
    from ipt.model.store import model_from_params
    from ipt.train.checkpoint import Checkpointer
    from ipt.train.run import Trainer

    trainer = Trainer(train_cfg)
    directory = train_cfg.checkpoint.directory or Path(train_cfg.run_dir) / "checkpoints"
    checkpointer = Checkpointer(directory, train_cfg.checkpoint)
    try:
        _, state, _ = checkpointer.restore(trainer.abstract)
    finally:
        checkpointer.close()
    model = model_from_params(train_cfg.model, state["params"])
    tok = load_tokenizer("mistral-v1")
    ids = tok(prompt)["input_ids"]
    new = generate(model, [ids], max_new_tokens=48, eos_ids=[tok.eos_token_id])[0]
    return tok.decode(ids + new, skip_special_tokens=True)


def _evaluate(train_cfg, cfg: QuickstartConfig, out: Path) -> list[str]:
    """The paper's nine zero-shot tasks on the trained model (`ipt eval`), as report lines."""
    from ipt.eval.run import EvalConfig, build_lm, collect, write_output

    eval_cfg = EvalConfig(
        model=train_cfg.run_dir,
        tasks=["paper"],
        limit=cfg.eval_limit,
        max_length=train_cfg.data.seq_len,
        output=str(out),
    )
    report = collect(build_lm(eval_cfg), eval_cfg)
    write_output(out, report, log_samples=False)
    core = report["core"]
    return [
        f"Zero-shot, the first {cfg.eval_limit} documents of each task (of each MMLU subject), scored by "
        f"`ipt eval` through lm-eval (full tables: `{out / 'results.md'}`). A model this small, "
        "trained for minutes, scores near chance: a centered accuracy near 0 is the expected result.",
        "",
        "| task | metric | accuracy | chance | centered |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {t} | {r['metric']} | {r['accuracy']:.3f} | {r['chance']:.3f} | {r['centered']:+.3f} |"
            for t, r in core["tasks"].items()
        ),
        f"| **CORE** (mean) | | | | **{core['core']:+.3f}** |",
    ]


def _render_collection(entries: list[dict]) -> str:
    lines = []
    for i, entry in enumerate(entries):
        text = " ".join(entry["context"].split())
        lines.append(f"- text {i} (inherit_from_prev={entry['inherit_from_prev']}): {text[:240]}...")
        lines.extend(f"  - Q: {qa['Q']}\n    A: {qa['A']}" for qa in entry["QA_list"])
    return "\n".join(lines)


def quickstart(cfg: QuickstartConfig) -> int:
    from ipt.cook.run import CookConfig, cook
    from ipt.data.tokenize import TokenizeConfig, tokenize
    from ipt.synth.run import SynthesizeConfig, synthesize
    from ipt.train.config import TrainConfig
    from ipt.train.run import train

    run = Path(cfg.run_dir).absolute()
    collections, texts, tokens = run / "collections", run / "texts", run / "tokens"

    _say(f"synthesize instruction-response pairs (rules engine, M={cfg.rounds}) -> {collections}")
    synth = synthesize(
        _stage(
            SynthesizeConfig,
            input=str(CORPUS),
            output_dir=str(collections),
            engine="rules",
            rounds=cfg.rounds,
            seed=cfg.seed,
            chunk_texts=512,
        )
    )
    _say(f"cook read collections into pre-training text -> {texts}")
    cook(_stage(CookConfig, input=str(collections / "chunk-*.jsonl"), output_dir=str(texts), seed=cfg.seed))
    cooked = json.loads((texts / "cook_manifest.json").read_text(encoding="utf-8"))["stats"]
    _say(f"tokenize raw and instruction-augmented text (Mistral v1 tokenizer) -> {tokens}")
    manifests = {
        name: tokenize(
            _stage(TokenizeConfig, input=source, output_dir=str(tokens / name), tokenizer="mistral-v1")
        )
        for name, source in (("raw", str(CORPUS)), ("augmented", str(texts / "*.jsonl")))
    }
    sources = [
        {"name": "raw", "path": str(tokens / "raw"), "weight": 1 - cfg.augmented_share},
        {"name": "augmented", "path": str(tokens / "augmented"), "weight": cfg.augmented_share},
    ]
    train_cfg = load_config(
        TrainConfig,
        cfg.train_config,
        [
            f"run_dir={run / 'train'}",
            f"steps={cfg.steps}",
            f"seed={cfg.seed}",
            f"data.sources={json.dumps(sources)}",
        ],
    )
    _say(f"train the tiny model for {cfg.steps} steps on the mixture -> {train_cfg.run_dir}")
    code = train(train_cfg)
    if code:
        return code
    _say("generate from the trained model")
    sample = _generate_sample(train_cfg, cfg.prompt)
    scores = ["skipped (eval_limit=0)"]
    if cfg.eval_limit:
        _say(f"evaluate on the paper's nine tasks (first {cfg.eval_limit} documents each) -> {run / 'eval'}")
        scores = _evaluate(train_cfg, cfg, run / "eval")

    records = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    first_text = next(
        json.loads(line)["text"]
        for line in sorted(texts.glob("*.jsonl"))[0].read_text(encoding="utf-8").splitlines()
    )
    report = "\n".join(
        [
            "# ipt quickstart report",
            "",
            f"Corpus: {CORPUS.name} (built in). Outputs under `{run}`.",
            "",
            "## 1. Synthesis (rules engine)",
            f"{synth.get('texts', 0)} texts -> {synth.get('pairs', 0)} pairs "
            f"({synth.get('pairs_per_text', 0)} per text), {synth.get('collections', 0)} read collections.",
            "",
            "One read collection (a chain of texts with their pairs):",
            "",
            _render_collection(_first_collection_with_pairs(collections)),
            "",
            "## 2. Cooking",
            f"{cooked.get('texts', 0)} pre-training texts. The first one:",
            "",
            "```text",
            first_text[:2000],
            "```",
            "",
            "## 3. Tokens",
            *(
                f"- {name}: {m.num_docs} documents, {m.num_tokens:,} tokens"
                for name, m in manifests.items()
                if m
            ),
            "",
            "## 4. Training",
            f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
            if losses
            else "no loss recorded",
            "",
            f"    {sparkline(losses)}",
            "",
            "## 5. A sample from the trained model (greedy)",
            "",
            "```text",
            sample,
            "```",
            "",
            "## 6. The paper's nine general tasks",
            "",
            *scores,
            "",
        ]
    )
    (run / "REPORT.md").write_text(report, encoding="utf-8")
    print(report)
    _say(f"done: {run / 'REPORT.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault(
        "JAX_PLATFORMS", "cpu"
    )  # the quickstart is a CPU run, even where libtpu is installed
    return run_stage(QuickstartConfig, quickstart, list(argv or []), prog="ipt quickstart")
