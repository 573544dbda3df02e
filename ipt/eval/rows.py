"""Laying scoring requests out as rows of a few fixed widths, packing short ones together.

A request is a token window whose last `num_targets` next-token predictions are scored. Each
request goes to a row no wider than the smallest bucket that holds it (buckets are powers of
two up to `max_length`), and shorter requests fill the room left in wider rows (best-fit
decreasing), each as its own segment: `segment_ids` keep packed requests from attending to
each other and positions restart at 0, so a request's score does not depend on its row.
Rows of one width are then cut into batches of `batch_rows`, so a whole task compiles at most
one program per bucket width.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

ROW_KEYS = ("inputs", "targets", "positions", "segment_ids", "target_mask")


@dataclasses.dataclass(frozen=True)
class Request:
    """`tokens` [T >= 2]: inputs are tokens[:-1], targets tokens[1:]; the last `num_targets` count."""

    tokens: np.ndarray
    num_targets: int

    @property
    def length(self) -> int:
        return len(self.tokens) - 1


def window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> Request:
    """lm-eval's window: (context + continuation), left-truncated to `max_length` + 1 tokens."""
    if not continuation:
        raise ValueError("a scoring request needs at least one continuation token")
    if len(continuation) > max_length:
        raise ValueError(f"continuation of {len(continuation)} tokens exceeds max_length={max_length}")
    tokens = np.asarray([*context, *continuation][-(max_length + 1) :], np.int32)
    if len(tokens) < 2:
        raise ValueError("a scoring request needs a context token before the continuation")
    return Request(tokens, len(continuation))


def bucket_widths(max_length: int, min_width: int = 32) -> list[int]:
    """Powers of two from `min_width` below `max_length`, then `max_length` itself."""
    widths = []
    width = min_width
    while width < max_length:
        widths.append(width)
        width *= 2
    return [*widths, max_length]


@dataclasses.dataclass
class Row:
    width: int
    members: list[int]
    free: int


def plan_rows(
    lengths: Sequence[int], widths: Sequence[int], max_segments: int, pack: bool = True
) -> list[Row]:
    """Best-fit decreasing: each request (longest first) joins the open row with the least room
    that still fits it (and has a free segment), else opens a row of its smallest bucket."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[Row] = []
    open_free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        n = lengths[i]
        if n > widths[-1]:
            raise ValueError(f"request of {n} tokens exceeds the widest bucket ({widths[-1]})")
        slot = bisect.bisect_left(open_free, (n, -1)) if pack else len(open_free)
        if slot < len(open_free):
            _, r = open_free.pop(slot)
            row = rows[r]
        else:
            r = len(rows)
            width = widths[bisect.bisect_left(widths, n)]
            row = Row(width, [], width)
            rows.append(row)
        row.members.append(i)
        row.free -= n
        if pack and row.free > 0 and len(row.members) < max_segments:
            bisect.insort(open_free, (row.free, r))
    return rows


def fill_rows(rows: Sequence[Row], requests: Sequence[Request], width: int) -> dict[str, np.ndarray]:
    """Arrays [len(rows), width] for the model; segment k of a row (1-based) is its k-th member."""
    out = {k: np.zeros((len(rows), width), np.int32) for k in ROW_KEYS}
    for r, row in enumerate(rows):
        at = 0
        for k, i in enumerate(row.members, start=1):
            req = requests[i]
            n = req.length
            span = slice(at, at + n)
            out["inputs"][r, span] = req.tokens[:-1]
            out["targets"][r, span] = req.tokens[1:]
            out["positions"][r, span] = np.arange(n)
            out["segment_ids"][r, span] = k
            out["target_mask"][r, at + n - req.num_targets : at + n] = 1
            at += n
    return out


def batches(rows: Sequence[Row], batch_rows: int) -> Iterator[tuple[int, list[Row]]]:
    """(width, up to `batch_rows` rows) in order of width, widest first (so failures show early)."""
    by_width: dict[int, list[Row]] = {}
    for row in rows:
        by_width.setdefault(row.width, []).append(row)
    for width in sorted(by_width, reverse=True):
        group = by_width[width]
        for start in range(0, len(group), batch_rows):
            yield width, group[start : start + batch_rows]
