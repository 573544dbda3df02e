"""The human-readable and the machine-readable summary of one `ipt eval` run."""

from __future__ import annotations

import math
from typing import Any


def _fmt(x: float) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"


def markdown(report: dict[str, Any]) -> str:
    """lm-eval's own results table, then CORE (centered accuracy), domain tasks, bits-per-byte,
    held-out response loss."""
    from lm_eval.utils import make_table

    parts = [f"# Evaluation of {report['model']}", ""]
    harness = report.get("harness")
    if harness is not None:
        parts += ["## lm-eval tasks", "", make_table(harness)]
        if "groups" in harness:
            parts += [make_table(harness, "groups")]
        core = report["core"]
        if core["tasks"]:
            parts += [
                "## Centered accuracy (CORE: (acc - chance) / (1 - chance))",
                "",
                "| task | metric | accuracy | chance | centered |",
                "|---|---|---:|---:|---:|",
                *(
                    f"| {t} | {r['metric']} | {_fmt(r['accuracy'])} | {_fmt(r['chance'])} | {_fmt(r['centered'])} |"
                    for t, r in sorted(core["tasks"].items())
                ),
                f"| **CORE** (mean of {len(core['tasks'])}) | | | | **{_fmt(core['core'])}** |",
                "",
            ]
    if report.get("domain"):
        parts += [
            "## Domain tasks (AdaptLLM scoring)",
            "",
            "| task | items | metric | value |",
            "|---|---:|---|---:|",
        ]
        for name, result in sorted(report["domain"].items()):
            for metric, value in result.metrics.items():
                parts.append(f"| {name} | {len(result.samples)} | {metric} | {_fmt(value)} |")
        parts.append("")
    if report.get("heldout"):
        parts += [
            "## Held-out text",
            "",
            "| source | documents | tokens | bits/byte | loss/token |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {n} | {int(r['documents'])} | {int(r['tokens'])} | {_fmt(r['bits_per_byte'])} | {_fmt(r['loss'])} |"
                for n, r in sorted(report["heldout"].items())
            ),
            "",
        ]
    if report.get("response_loss"):
        parts += [
            "## Held-out response loss (answer tokens only)",
            "",
            "| format | texts | answers | answer tokens | loss/token |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {n} | {int(r['texts'])} | {int(r['answers'])} | {int(r['tokens'])} | {_fmt(r['loss'])} |"
                for n, r in report["response_loss"].items()
            ),
            "",
        ]
    return "\n".join(parts)


def ipt_results(report: dict[str, Any]) -> dict[str, Any]:
    """What lm-eval's results JSON does not hold: CORE, domain scores, bits-per-byte, response loss."""
    return {
        "model": report["model"],
        "core": report.get("core"),
        "domain": {
            name: {"metrics": r.metrics, "samples": len(r.samples)}
            for name, r in report.get("domain", {}).items()
        },
        "heldout": report.get("heldout", {}),
        "response_loss": report.get("response_loss", {}),
    }


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """`eval/<task>/<metric>` scalars, for the training metrics sinks."""
    out: dict[str, float] = {}
    harness = report.get("harness")
    if harness is not None:
        for task, metrics in harness["results"].items():
            for key, value in metrics.items():
                name, _, filt = key.partition(",")
                if isinstance(value, int | float) and not name.endswith("_stderr") and filt == "none":
                    out[f"eval/{task}/{name}"] = float(value)
        if report["core"]["tasks"]:
            out["eval/core"] = report["core"]["core"]
    for name, result in report.get("domain", {}).items():
        out.update({f"eval/{name}/{k}": float(v) for k, v in result.metrics.items()})
    for name, r in report.get("heldout", {}).items():
        out[f"eval/{name}/bits_per_byte"] = r["bits_per_byte"]
    for name, r in report.get("response_loss", {}).items():
        out[f"eval/response_loss/{name}"] = r["loss"]
    return out
