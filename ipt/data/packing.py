"""The per-element steps of the input pipeline: record -> document, long document -> pieces, rows -> batch.

Both packing modes build rows of `seq_len + 1` tokens (grain's packers do the placing); a batch of
rows becomes `inputs = row[:-1]` and `targets = row[1:]`, so every position has a target without
a second shifted copy of the data going through the packer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grain
import numpy as np

from ipt.data.records import decode_record

TOKENS = "tokens"
MASK = "mask"


@dataclass(frozen=True)
class DecodeDocument(grain.transforms.Map):
    """ArrayRecord bytes -> {"tokens": ids, "mask": 0/1 per token (when any source has masks)}.

    `append_eos` adds the end-of-document id for sources written without one, so concatenated
    documents are always separated.
    """

    dtype: str
    has_loss_mask: bool
    with_mask: bool
    append_eos: int | None = None

    def map(self, record: bytes) -> dict[str, np.ndarray]:
        ids, mask = decode_record(record, np.dtype(self.dtype), self.has_loss_mask)
        if self.append_eos is not None:
            ids = np.append(ids, np.asarray(self.append_eos, ids.dtype))
            if mask is not None:
                mask = np.append(mask, np.uint8(1))
        doc = {TOKENS: ids}
        if self.with_mask:
            doc[MASK] = mask if mask is not None else np.ones(len(ids), np.uint8)
        return doc


@dataclass(frozen=True)
class SplitLongDocument(grain.experimental.FlatMapTransform):
    """Pack mode: a document longer than a row becomes pieces of at most `row_len` tokens.

    Consecutive pieces overlap by one token, so every token after the first is still a target
    exactly once (the last token of a piece is the first input of the next).
    """

    row_len: int
    max_fan_out: int = 1 << 20

    def flat_map(self, doc: dict[str, np.ndarray]) -> Sequence[dict[str, np.ndarray]]:
        n = len(doc[TOKENS])
        if n <= self.row_len:
            return [doc]
        step = self.row_len - 1
        return [
            {k: v[start : start + self.row_len] for k, v in doc.items()} for start in range(0, n - 1, step)
        ]


@dataclass(frozen=True)
class RowsToBatch(grain.transforms.Map):
    """Packed rows [B, seq_len + 1] -> the training batch dict, each array [B, seq_len].

    `loss_mask` is 0 where the target is padding, where the record's own mask is 0, and in pack
    mode where the target belongs to another document (that target is also set to 0).
    """

    pack: bool

    def map(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens = rows[TOKENS].astype(np.int32)
        row_segments = rows[f"{TOKENS}_segment_ids"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        real_target = row_segments[:, 1:] > 0
        if self.pack:
            segment_ids = row_segments[:, :-1]
            positions = rows[f"{TOKENS}_positions"][:, :-1]
            same_doc = real_target & (row_segments[:, 1:] == segment_ids)
            targets = np.where(same_doc, targets, 0)
            keep = same_doc
        else:
            # One attention span per row, as in GPT-3; only the tail of a finite epoch is padding.
            segment_ids = (row_segments[:, :-1] > 0).astype(np.int32)
            positions = np.where(segment_ids > 0, np.arange(inputs.shape[1], dtype=np.int32), 0)
            keep = real_target
        if MASK in rows:
            keep = keep & (rows[MASK][:, 1:] > 0)
        return {
            "inputs": np.ascontiguousarray(inputs),
            "targets": np.ascontiguousarray(targets),
            "segment_ids": np.ascontiguousarray(segment_ids, dtype=np.int32),
            "positions": np.ascontiguousarray(positions, dtype=np.int32),
            "loss_mask": keep.astype(np.int32),
        }
