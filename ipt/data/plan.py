"""`ipt data plan CONFIG`: what a token budget draws from each source of a data config, in epochs.

Mixture weights are shares of training tokens, so whether a recipe repeats a source 4 times
(the paper's synthesizer fine-tuning data) or 40 times (a mistake) depends on the budget and on
each source's size. This reads the manifests and prints, per source, the tokens drawn and the
epochs that means, and warns when one would repeat more than `max_epochs` times, before any
compute is spent.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from pydantic import Field, field_validator

from ipt.data.pipeline import DataConfig
from ipt.data.sources import open_sources
from ipt.stage import BadInputError, run_stage

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_COUNT = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_count(value: object) -> int:
    """`100B`, `2.5e9`, `300M`, `1_000` or a number -> an int (B = billion, T = trillion)."""
    if isinstance(value, bool):
        raise ValueError("expected a token count, got a boolean")
    if isinstance(value, int | float):
        return int(value)
    match = _COUNT.match(str(value))
    if not match:
        raise ValueError(f"expected a token count like 100B, 2.5e9 or 300M, got {value!r}")
    return int(float(match.group(1).replace("_", "")) * _SUFFIX[match.group(2).lower()])


class PlanConfig(DataConfig):
    """Tokens drawn per source of a data config for a token budget, and the epochs that means."""

    budget_tokens: int = Field(gt=0, description="training tokens to plan for, e.g. 100B or 2.5e9")
    max_epochs: float = Field(4.0, gt=0, description="warn when a source would be read more times than this")

    @field_validator("budget_tokens", mode="before")
    @classmethod
    def _count(cls, v: object) -> int:
        return parse_count(v)


def _human(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def plan(cfg: PlanConfig) -> list[dict]:
    """One row per source: weight share, tokens it holds, tokens drawn, epochs."""
    try:
        manifests = open_sources(cfg.sources)
    except ValueError as e:  # an invalid manifest, tokenizers that differ, an empty source
        raise BadInputError(str(e)) from None
    total_weight = sum(s.weight for s in cfg.sources)
    rows = []
    for src, m in zip(cfg.sources, manifests, strict=True):
        share = src.weight / total_weight
        drawn = cfg.budget_tokens * share
        rows.append(
            {
                "name": src.name,
                "path": src.path,
                "share": share,
                "source_tokens": m.num_tokens,
                "source_docs": m.num_docs,
                "drawn_tokens": drawn,
                "epochs": drawn / m.num_tokens if m.num_tokens else float("inf"),
            }
        )
    return rows


def format_plan(cfg: PlanConfig, rows: list[dict]) -> tuple[str, list[str]]:
    """The table to print and the warnings (sources read more than `max_epochs` times)."""
    header = f"{'source':<20} {'share':>8} {'holds':>10} {'drawn':>10} {'epochs':>8}"
    lines = [f"budget: {_human(cfg.budget_tokens)} tokens ({cfg.budget_tokens:,})", header, "-" * len(header)]
    warnings = []
    for r in rows:
        lines.append(
            f"{r['name']:<20} {r['share']:>8.2%} {_human(r['source_tokens']):>10} "
            f"{_human(r['drawn_tokens']):>10} {r['epochs']:>8.2f}"
        )
        if r["epochs"] > cfg.max_epochs:
            warnings.append(
                f"warning: source {r['name']!r} ({r['path']}) would be read {r['epochs']:.2f} times, "
                f"more than max_epochs={cfg.max_epochs:g}; lower its weight, add data or raise max_epochs"
            )
    return "\n".join(lines), warnings


def _run(cfg: PlanConfig) -> int:
    table, warnings = format_plan(cfg, plan(cfg))
    print(table)
    for w in warnings:
        print(w, file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`ipt data plan CONFIG budget_tokens=100B` (CONFIG may also be given as --config CONFIG)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-") and "=" not in args[0]:
        args = ["--config", args[0], *args[1:]]
    return run_stage(PlanConfig, _run, args, prog="ipt data plan")
