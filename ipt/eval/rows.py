"""Laying scoring requests out as rows of a few fixed widths, packing short ones together.

A request is a token window whose last `num_targets` next-token predictions are scored. Each
request goes to a row no wider than the smallest bucket that holds it (buckets are powers of
two up to `max_length`), and shorter requests fill the room left in wider rows (best-fit
decreasing), each as its own segment: `segment_ids` keep packed requests from attending to
each other and positions restart at 0, so a request's score does not depend on its row.
Only scored positions reach the LM head: a row of width w has room for `target_slots(w)`
targets (a share of w, all of it in the widest bucket), and a request whose targets do not fit
its bucket's slots moves up a bucket. Rows of one width are cut into batches of `batch_rows`,
so a whole task compiles at most one program per bucket width.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from ipt.data.packing import MODEL_INPUT_KEYS

TOKEN_KEYS = MODEL_INPUT_KEYS  # [rows, width]
TARGET_KEYS = ("target_index", "target_ids", "target_segment")  # [rows, target slots]


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


def bucket_widths(max_length: int, min_width: int = 32) -> tuple[int, ...]:
    """Powers of two from `min_width` below `max_length`, then `max_length` itself."""
    widths = []
    width = min_width
    while width < max_length:
        widths.append(width)
        width *= 2
    return (*widths, max_length)


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Row widths, and how many scored positions (targets) each width has room for."""

    widths: tuple[int, ...]
    target_share: float = 0.5

    def slots(self, width: int) -> int:
        return width if width == self.widths[-1] else max(1, int(width * self.target_share))

    def fit(self, length: int, targets: int) -> int:
        """The narrowest width that holds `length` tokens and `targets` targets."""
        for width in self.widths:
            if width >= length and self.slots(width) >= targets:
                return width
        raise ValueError(f"request of {length} tokens exceeds the widest bucket ({self.widths[-1]})")


@dataclasses.dataclass
class Row:
    width: int
    members: list[int]
    free: int
    free_targets: int


def plan_rows(
    lengths: Sequence[int],
    targets: Sequence[int],
    buckets: Buckets,
    max_segments: int,
    pack: bool = True,
    candidates: int = 8,
) -> list[Row]:
    """Best-fit decreasing: each request (longest first) joins the open row with the least room
    that still fits its tokens and targets (among the `candidates` tightest), else opens a row
    of its narrowest bucket."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], -targets[i], i))
    rows: list[Row] = []
    open_free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        n, t = lengths[i], targets[i]
        width = buckets.fit(n, t)
        r = None
        if pack:
            start = bisect.bisect_left(open_free, (n, -1))
            for slot in range(start, min(start + candidates, len(open_free))):
                if rows[open_free[slot][1]].free_targets >= t:
                    r = open_free.pop(slot)[1]
                    break
        if r is None:
            r = len(rows)
            rows.append(Row(width, [], width, buckets.slots(width)))
        row = rows[r]
        row.members.append(i)
        row.free -= n
        row.free_targets -= t
        if pack and row.free > 0 and row.free_targets > 0 and len(row.members) < max_segments:
            bisect.insort(open_free, (row.free, r))
    return rows


def fill_rows(
    rows: Sequence[Row], requests: Sequence[Request], width: int, slots: int
) -> dict[str, np.ndarray]:
    """Token arrays [len(rows), width] and target arrays [len(rows), slots]: each target's position
    in its row, its token id and its segment (segment k of a row, 1-based, is its k-th member;
    unused slots have segment 0)."""
    out = {k: np.zeros((len(rows), width), np.int32) for k in TOKEN_KEYS}
    out.update({k: np.zeros((len(rows), slots), np.int32) for k in TARGET_KEYS})
    for r, row in enumerate(rows):
        at = used = 0
        for k, i in enumerate(row.members, start=1):
            req = requests[i]
            n, t = req.length, req.num_targets
            out["inputs"][r, at : at + n] = req.tokens[:-1]
            out["positions"][r, at : at + n] = np.arange(n)
            out["segment_ids"][r, at : at + n] = k
            out["target_index"][r, used : used + t] = np.arange(at + n - t, at + n)
            out["target_ids"][r, used : used + t] = req.tokens[-t:]
            out["target_segment"][r, used : used + t] = k
            at += n
            used += t
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
