"""Pack mode's packer: a block of documents at a time becomes rows of whole documents, in numpy.

grain's packers (`FirstFitPackIterDataset`, `BestFitPackIterDataset`) place one document per
Python step (tree mapping, numpy checks over the bins, a copy into the row), about 40 us per
document: more than reading it. Here a whole read block (`docs_per_read` documents) is packed at
once: documents longer than a row are cut into pieces overlapping by one token, the pieces are
placed by best-fit decreasing (a loop over integers only), and the rows are laid out with one
numpy concatenation of views per feature. Sorting a block's pieces by length before placing
them also leaves less padding than grain's first-fit over a stream.

The state is the parent's state before the current block, the rows of it already emitted and the
count of blocks packed (it seeds the row shuffle); restoring re-reads and re-packs that one block.
"""

from __future__ import annotations

import bisect
from typing import Any

import grain
import numpy as np

from ipt.data.packing import MASK, TOKENS

SEGMENT_IDS = f"{TOKENS}_segment_ids"
POSITIONS = f"{TOKENS}_positions"

_ROW_BITS = 32  # a free slot is encoded as (free tokens << _ROW_BITS) | row, so a sorted list finds best fits


def split_into_pieces(lengths: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut documents of `lengths` into pieces of at most `row_len` tokens; longer ones overlap by one.

    Returns per piece: its document, its first token within the document and its length. A
    piece of a long document ends with the token the next piece starts with, so every token
    after a document's first is a target exactly once. Empty documents give no piece.
    """
    lengths = np.asarray(lengths, np.int64)
    stride = row_len - 1
    n_pieces = np.where(lengths > row_len, -(-(lengths - 1) // stride), (lengths > 0).astype(np.int64))
    doc = np.repeat(np.arange(len(lengths)), n_pieces)
    first_piece = np.cumsum(n_pieces) - n_pieces
    start = (np.arange(len(doc)) - first_piece[doc]) * stride
    return doc, start, np.minimum(row_len, lengths[doc] - start)


def best_fit_decreasing(lengths: np.ndarray, row_len: int) -> tuple[np.ndarray, int]:
    """The row of each piece: longest first, each into the fullest row it fits, else a new row.

    Returns the row per piece and the number of rows. Every length must be in [1, row_len].
    """
    rows = np.empty(len(lengths), np.int64)
    free: list[int] = []  # sorted slots: (free tokens << _ROW_BITS) | row
    n_rows = 0
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for piece, n in zip(order.tolist(), np.asarray(lengths)[order].tolist(), strict=True):
        i = bisect.bisect_left(free, n << _ROW_BITS)
        if i == len(free):
            row, left = n_rows, row_len - n
            n_rows += 1
        else:
            slot = free.pop(i)
            row, left = slot & ((1 << _ROW_BITS) - 1), (slot >> _ROW_BITS) - n
        rows[piece] = row
        if left:
            bisect.insort(free, (left << _ROW_BITS) | row)
    return rows, n_rows


def pack_block(
    docs: list[dict[str, np.ndarray]], row_len: int, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Documents -> rows [n, row_len]: `tokens`, `tokens_segment_ids`, `tokens_positions` (+ `mask`).

    Within a row, segments 1, 2, ... follow the documents' order in the block and padding (0)
    comes last. `rng` shuffles the rows (the placement sorts by length, so unshuffled rows run
    from long documents to short ones).
    """
    lengths = np.fromiter((len(d[TOKENS]) for d in docs), np.int64, len(docs))
    doc, start, piece_len = split_into_pieces(lengths, row_len)
    row, n_rows = best_fit_decreasing(piece_len, row_len)
    features = [TOKENS, MASK] if MASK in docs[0] else [TOKENS]
    if not n_rows:  # only empty documents
        rows = {k: np.zeros((0, row_len), docs[0][k].dtype) for k in features}
        return {
            **rows,
            SEGMENT_IDS: np.zeros((0, row_len), np.int32),
            POSITIONS: np.zeros((0, row_len), np.int32),
        }
    if rng is not None:
        row = rng.permutation(n_rows)[row]
    # The rows laid end to end are pieces in row order, then block order, each row's padding after
    # its last piece: one concatenation of views per feature, with no per-token index arrays.
    order = np.lexsort((np.arange(len(row)), row))
    row, doc, start, piece_len = row[order], doc[order], start[order], piece_len[order]
    padding = row_len - np.bincount(row, weights=piece_len, minlength=n_rows).astype(np.int64)
    ends_row = np.ones(len(row), bool)
    ends_row[:-1] = row[1:] != row[:-1]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in features}
    zeros = {k: np.zeros(row_len, docs[0][k].dtype) for k in features}
    position_parts, segment_ids, part_lengths = [], [], []
    arange, no_positions = np.arange(row_len, dtype=np.int32), np.zeros(row_len, np.int32)
    segment = 0
    for d, s, n, last, pad in zip(
        doc.tolist(),
        start.tolist(),
        piece_len.tolist(),
        ends_row.tolist(),
        padding[row].tolist(),
        strict=True,
    ):
        segment += 1
        for k in features:
            parts[k].append(docs[d][k][s : s + n])
        position_parts.append(arange[:n])
        segment_ids.append(segment)
        part_lengths.append(n)
        if last:
            for k in features:
                parts[k].append(zeros[k][:pad])
            position_parts.append(no_positions[:pad])
            segment_ids.append(0)
            part_lengths.append(pad)
            segment = 0
    rows = {k: np.concatenate(parts[k]).reshape(n_rows, row_len) for k in features}
    rows[POSITIONS] = np.concatenate(position_parts).reshape(n_rows, row_len)
    rows[SEGMENT_IDS] = np.repeat(np.asarray(segment_ids, np.int32), part_lengths).reshape(n_rows, row_len)
    return rows


class PackBlocks(grain.IterDataset):
    """Blocks (lists of documents) -> packed rows of `row_len` tokens, one row per element."""

    def __init__(self, parent: grain.IterDataset, row_len: int, *, seed: int, shuffle_rows: bool):
        super().__init__(parent)
        self._row_len = row_len
        self._seed = seed
        self._shuffle_rows = shuffle_rows

    def __iter__(self) -> grain.DatasetIterator:
        return _PackBlocksIterator(
            self._parent.__iter__(), self._row_len, seed=self._seed, shuffle_rows=self._shuffle_rows
        )

    def __str__(self) -> str:
        return f"PackBlocks(row_len={self._row_len}, shuffle_rows={self._shuffle_rows})"


class _PackBlocksIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, row_len: int, *, seed: int, shuffle_rows: bool):
        super().__init__(parent)
        self._row_len = row_len
        self._seed = seed
        self._shuffle_rows = shuffle_rows
        self._reset(parent.get_state(), next_row=0, blocks=0)

    def _reset(self, parent_state: Any, *, next_row: int, blocks: int) -> None:
        self._block_parent_state = parent_state  # the parent's state before the current block
        self._rows: dict[str, np.ndarray] | None = None
        self._n_rows = 0
        self._next_row = next_row  # rows of the current block already emitted
        self._blocks = blocks  # blocks packed before the current one

    def _pack_next_block(self) -> None:
        if self._rows is not None:
            self._reset(self._parent.get_state(), next_row=0, blocks=self._blocks + 1)
        docs = next(self._parent)
        rng = np.random.default_rng([self._seed, self._blocks]) if self._shuffle_rows else None
        self._rows = pack_block(docs, self._row_len, rng)
        self._n_rows = len(self._rows[TOKENS])

    def __next__(self) -> dict[str, np.ndarray]:
        while self._rows is None or self._next_row >= self._n_rows:
            self._pack_next_block()
        i = self._next_row
        self._next_row += 1
        return {k: v[i] for k, v in self._rows.items()}

    def get_state(self) -> dict[str, Any]:
        if self._rows is not None and self._next_row >= self._n_rows:  # block done: no need to re-read it
            return {"parent": self._parent.get_state(), "next_row": 0, "blocks": self._blocks + 1}
        return {"parent": self._block_parent_state, "next_row": self._next_row, "blocks": self._blocks}

    def set_state(self, state: dict[str, Any]) -> None:
        if not {"parent", "next_row", "blocks"} <= set(state):
            raise ValueError(
                f"pack-mode iterator state has keys {sorted(state)}, expected parent, next_row and blocks: "
                "it was saved by another packer (e.g. an ipt version that packed with grain's first-fit)"
            )
        self._parent.set_state(state["parent"])
        self._reset(state["parent"], next_row=int(state["next_row"]), blocks=int(state["blocks"]))
