"""The training loss curves of the compared models in one PNG (matplotlib, no display needed)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure


def loss_curves_figure(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], title: str) -> Figure:
    """One line per model (label = its name): training loss against step."""
    fig = Figure(figsize=(7, 4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for name, (steps, losses) in curves.items():
        ax.plot(steps, losses, label=name, linewidth=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Render to a temp file beside `path`, then rename (no half-written image)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", metadata={"Software": None})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
