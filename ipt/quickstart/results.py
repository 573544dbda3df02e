"""The report's numbers, read back from the files the run wrote (never from memory).

Training: `train/<model>/metrics.jsonl` (`ipt.train.metrics.read_metrics`). Evaluation:
`eval/<model>/ipt_results.json` (written by `ipt eval`): held-out response loss in both formats,
bits-per-byte on held-out raw text, and CORE with its per-task rows.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipt.train.metrics import read_metrics

FINAL_LOSS_STEPS = 10  # the final training loss is the mean over this many last steps


@dataclass(frozen=True)
class ModelResults:
    """What the report says about one trained model."""

    steps: list[int]
    losses: list[float]
    tokens_per_s: float  # median over steps after the first (which includes compiling)
    train_seconds: float
    response_cooked: float
    response_plain: float
    bits_per_byte: float
    core: dict[str, Any] | None  # {"tasks": {task: row}, "core": float}, None when skipped

    @property
    def final_loss(self) -> float:
        return statistics.fmean(self.losses[-FINAL_LOSS_STEPS:])


def read_model_results(train_dir: Path, eval_dir: Path) -> ModelResults:
    records = [r for r in read_metrics(train_dir) if "loss" in r]
    if not records:
        raise ValueError(f"{train_dir / 'metrics.jsonl'}: no training loss recorded")
    timed = [r for r in records[1:] if "tokens_per_s" in r]
    evaluation = json.loads((eval_dir / "ipt_results.json").read_text(encoding="utf-8"))
    response = evaluation["response_loss"]
    return ModelResults(
        steps=[r["step"] for r in records],
        losses=[r["loss"] for r in records],
        tokens_per_s=statistics.median(r["tokens_per_s"] for r in timed) if timed else float("nan"),
        train_seconds=sum(r.get("step_time", 0.0) for r in records),
        response_cooked=response["cooked"]["loss"],
        response_plain=response["plain"]["loss"],
        bits_per_byte=evaluation["heldout"]["heldout_raw"]["bits_per_byte"],
        core=evaluation["core"],
    )


def response_counts(eval_dir: Path) -> dict[str, dict[str, float]]:
    """Texts, answers and answer tokens scored per format (the same for every model)."""
    return json.loads((eval_dir / "ipt_results.json").read_text(encoding="utf-8"))["response_loss"]
