"""The sweep's results: `summary.csv` and `summary.md` (one row per point), seed statistics, a loss plot.

Final train loss is the mean of the last `final_loss_window` logged train losses (3 by
default), which damps the step-to-step noise of one batch; held-out losses are the last
`eval/<source>/loss` record of each source; evaluation scores come from `ipt eval`'s
`<run_dir>/eval/ipt_results.json`. Points that differ only in a seed key (`seed_keys`) form one
group with the mean, the sample standard deviation and n of each number. Every file is written
to a temp name and renamed, so a reader never sees half a summary.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ipt.stage.files import atomic_write_text
from ipt.sweep.grid import canonical, value_text
from ipt.sweep.markers import DONE, point_done
from ipt.sweep.plan import Plan, Point
from ipt.train.metrics import read_metrics

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SEEDS_CSV = "summary_seeds.csv"
PLOT = "loss.png"


def point_status(point: Point) -> str:
    if point_done(point):
        return "done"
    if (point.run_dir / DONE).exists() or (point.run_dir / "metrics.jsonl").exists():
        return "incomplete"
    return "not run"


def eval_scores(run_dir: Path) -> dict[str, float]:
    """Flat numbers from ipt_results.json: core, domain/<task>/<metric>, heldout/<source>/bits_per_byte,
    response_loss/<format>."""
    path = run_dir / "eval" / "ipt_results.json"
    if not path.is_file():
        return {}
    results = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, float] = {}
    if results.get("core"):
        out["core"] = results["core"]["core"]
    for task, result in results.get("domain", {}).items():
        out.update(
            {f"domain/{task}/{k}": v for k, v in result["metrics"].items() if isinstance(v, int | float)}
        )
    for source, result in results.get("heldout", {}).items():
        out[f"heldout/{source}/bits_per_byte"] = result["bits_per_byte"]
    for fmt, result in results.get("response_loss", {}).items():
        out[f"response_loss/{fmt}"] = result["loss"]
    return out


def point_numbers(point: Point, window: int) -> dict[str, Any]:
    """steps, final_train_loss and held-out losses from metrics.jsonl, plus eval scores."""
    records = read_metrics(point.run_dir)
    losses = [r["loss"] for r in records if "loss" in r]
    out: dict[str, Any] = {}
    if losses:
        out["steps"] = max(r["step"] for r in records if "loss" in r)
        out["final_train_loss"] = statistics.fmean(losses[-window:])
    for record in records:
        out.update({k: v for k, v in record.items() if k.startswith("eval/") and k.endswith("/loss")})
    out.update(eval_scores(point.run_dir))
    return out


def summary_rows(plan: Plan) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and one row per point, in the sweep's order."""
    rows = []
    for point in plan.points:
        row = {"name": point.name, "status": point_status(point)}
        row.update({k: value_text(v) for k, v in point.values.items()})
        row.update(point_numbers(point, plan.sweep.final_loss_window))
        rows.append(row)
    fixed = ["name", "status", *plan.keys, "steps", "final_train_loss"]
    extra = sorted({k for row in rows for k in row} - set(fixed))
    return fixed + extra, rows


def seed_groups(plan: Plan, rows: list[dict[str, Any]], columns: list[str]) -> list[dict[str, Any]]:
    """Mean, std and n of every number over points that differ only in a seed key."""
    seeds = [k for k in plan.keys if k in plan.sweep.seed_keys]
    if not seeds:
        return []
    numeric = [
        c
        for c in columns
        if c == "final_train_loss" or c.startswith(("eval/", "core", "domain/", "heldout/", "response_loss/"))
    ]
    groups: dict[str, list[tuple[Point, dict]]] = {}
    for point, row in zip(plan.points, rows, strict=True):
        rest = {k: v for k, v in point.values.items() if k not in seeds}
        groups.setdefault(canonical(rest), []).append((point, row))
    out = []
    for members in groups.values():
        first = members[0][0]
        group = {k: value_text(v) for k, v in first.values.items() if k not in seeds}
        group["points"] = " ".join(p.name for p, _ in members)
        for column in numeric:
            values = [row[column] for _, row in members if isinstance(row.get(column), int | float)]
            group[f"{column} n"] = len(values)
            group[f"{column} mean"] = statistics.fmean(values) if values else None
            group[f"{column} std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(group)
    return out


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else _cell(row[c]) for c in columns})
    return buf.getvalue()


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _md_cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def _md_table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def markdown(plan: Plan, columns: list[str], rows: list[dict], groups: list[dict]) -> str:
    sweep = plan.sweep
    lines = [f"# Sweep {sweep.sweep_dir}", "", f"{len(rows)} points; experiment(s): "
             + ", ".join(f"{label} = {spec.config}" for label, spec in sweep.experiment.items()), "",
             f"final_train_loss: mean of the last {sweep.final_loss_window} logged train losses.", ""]  # fmt: skip
    lines += _md_table(columns, rows)
    if groups:
        seeds = ", ".join(k for k in plan.keys if k in sweep.seed_keys)
        group_columns = [k for k in groups[0] if not k.endswith((" n", " mean", " std"))]
        stats = [c.removesuffix(" mean") for c in groups[0] if c.endswith(" mean")]
        table = [{**{c: g[c] for c in group_columns}, **{s: _mean_std(g, s) for s in stats}} for g in groups]
        lines += ["", f"## Over {seeds}: mean ± std (n)", "", *_md_table(group_columns + stats, table)]
    lines += ["", f"![loss curves]({PLOT})", ""]
    return "\n".join(lines)


def _mean_std(group: dict, stat: str) -> str:
    mean, std, n = group[f"{stat} mean"], group[f"{stat} std"], group[f"{stat} n"]
    if mean is None:
        return ""
    return f"{mean:.4f} ± {std:.4f} ({n})" if std is not None else f"{mean:.4f} ({n})"


def loss_curves(plan: Plan) -> tuple[dict[str, tuple[list, list]], dict[str, tuple[list, list]]]:
    """Per point: (steps, train losses); per point and held-out source: (steps, losses)."""
    train: dict[str, tuple[list, list]] = {}
    heldout: dict[str, tuple[list, list]] = {}
    for point in plan.points:
        for record in read_metrics(point.run_dir):
            for key, value in record.items():
                if key == "loss":
                    label = point.name
                    target = train
                elif key.startswith("eval/") and key.endswith("/loss"):
                    label = f"{point.name} {key.removeprefix('eval/').removesuffix('/loss')}"
                    target = heldout
                else:
                    continue
                steps, values = target.setdefault(label, ([], []))
                steps.append(record["step"])
                values.append(value)
    return train, heldout


def loss_figure(title: str, train: dict, heldout: dict) -> Figure:
    """Train loss of every point (and held-out loss, if logged) against the step."""
    fig = Figure(figsize=(11, 5) if heldout else (7, 5), dpi=100)
    panels = [("train loss", train)] + ([("held-out loss", heldout)] if heldout else [])
    for i, (ylabel, curves) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for label, (steps, values) in curves.items():
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if curves:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        fig.savefig(f, format="png")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the plot is meant to be read
    os.replace(tmp, path)


def write_summary(plan: Plan) -> list[Path]:
    """summary.csv, summary.md, summary_seeds.csv (when the grid has seeds) and loss.png."""
    root = Path(plan.sweep.sweep_dir)
    root.mkdir(parents=True, exist_ok=True)
    columns, rows = summary_rows(plan)
    groups = seed_groups(plan, rows, columns)
    atomic_write_text(root / SUMMARY_CSV, _csv_text(columns, rows))
    written = [root / SUMMARY_CSV]
    if groups:
        atomic_write_text(root / SEEDS_CSV, _csv_text(list(groups[0]), groups))
        written.append(root / SEEDS_CSV)
    atomic_write_text(root / SUMMARY_MD, markdown(plan, columns, rows, groups))
    train, heldout = loss_curves(plan)
    save_png(loss_figure(f"ipt sweep: {root.name}", train, heldout), root / PLOT)
    return [*written, root / SUMMARY_MD, root / PLOT]
