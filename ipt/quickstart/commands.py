"""Every stage of the quickstart as the `ipt` command line that runs it.

The quickstart runs each stage by handing its argument list to `ipt.cli.main`, in this process,
exactly as the shell would; the report prints the same lists with `shlex`, so each number in it
comes with the command that produced it. Paths are absolute, so a command runs from anywhere.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

PARTS = ("train", "heldout")
MODELS = ("vanilla", "instruct")


@dataclass(frozen=True)
class Command:
    """One `ipt` command line: the words after `ipt`."""

    argv: tuple[str, ...]

    def shell(self) -> str:
        return shlex.join(["ipt", *self.argv])

    def run(self) -> int:
        from ipt.cli import main

        return main(list(self.argv))


@dataclass(frozen=True)
class Layout:
    """Where every stage writes under one quickstart run directory."""

    root: Path

    def split(self, part: str) -> Path:
        return self.root / "split" / f"{part}.jsonl"

    def collections(self, part: str) -> Path:
        return self.root / "collections" / part

    @property
    def cooked(self) -> Path:
        return self.root / "texts" / "train"

    def tokens(self, name: str) -> Path:
        return self.root / "tokens" / name

    def train(self, model: str) -> Path:
        return self.root / "train" / model

    def eval(self, model: str) -> Path:
        return self.root / "eval" / model


def synthesize(layout: Layout, part: str, rounds: int, seed: int) -> Command:
    """Rules-engine synthesis (M rounds) of one part of the split."""
    return Command(
        (
            "synthesize",
            f"input={layout.split(part)}",
            f"output_dir={layout.collections(part)}",
            "engine=rules",
            f"rounds={rounds}",
            f"seed={seed}",
            "chunk_texts=512",
        )
    )


def cook(layout: Layout, seed: int) -> Command:
    """The training part's read collections -> instruction-augmented text."""
    return Command(
        (
            "cook",
            f"input={layout.collections('train')}",
            f"output_dir={layout.cooked}",
            f"seed={seed}",
        )
    )


def tokenize(source: str | Path, output_dir: Path) -> Command:
    return Command(("tokenize", f"input={source}", f"output_dir={output_dir}", "tokenizer=mistral-v1"))


def tokenize_all(layout: Layout) -> dict[str, Command]:
    """Raw training text, augmented training text and raw held-out text, each its own shard directory."""
    return {
        "raw": tokenize(layout.split("train"), layout.tokens("raw")),
        "augmented": tokenize(layout.cooked, layout.tokens("augmented")),
        "heldout_raw": tokenize(layout.split("heldout"), layout.tokens("heldout_raw")),
    }


def train_sources(layout: Layout, model: str, augmented_share: float) -> list[dict]:
    """vanilla: raw text only; instruct: raw + augmented text, `augmented_share` of the tokens."""
    raw = {"name": "raw", "path": str(layout.tokens("raw"))}
    if model == "vanilla":
        return [{**raw, "weight": 1.0}]
    augmented = {"name": "augmented", "path": str(layout.tokens("augmented"))}
    return [{**raw, "weight": round(1 - augmented_share, 6)}, {**augmented, "weight": augmented_share}]


def train(
    layout: Layout, model: str, train_config: str, steps: int, seed: int, augmented_share: float
) -> Command:
    """One tiny model; both models share the config, steps, batch, sequence length and seed
    (warm-up: a tenth of the steps)."""
    sources = train_sources(layout, model, augmented_share)
    return Command(
        (
            "train",
            "--config",
            str(train_config),
            f"run_dir={layout.train(model)}",
            f"steps={steps}",
            f"optimizer.schedule.warmup_steps={max(1, steps // 10)}",
            f"seed={seed}",
            f"data.seed={seed}",
            f"data.sources={json.dumps(sources)}",
        )
    )


def evaluate(layout: Layout, model: str, seq_len: int, eval_limit: int, seed: int) -> Command:
    """Held-out response loss (both formats), bits-per-byte on held-out raw text and, unless
    `eval_limit` is 0, the paper's nine tasks on their first `eval_limit` documents."""
    tasks = ("tasks=paper", f"limit={eval_limit}") if eval_limit else ()
    return Command(
        (
            "eval",
            f"model={layout.train(model)}",
            *tasks,
            f"max_length={seq_len}",
            f"heldout={layout.tokens('heldout_raw')}",
            f"response_loss={layout.collections('heldout') / 'chunk-*.jsonl'}",
            f"response_loss_seed={seed}",
            f"output={layout.eval(model)}",
        )
    )
