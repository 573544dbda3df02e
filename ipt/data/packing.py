"""The steps of the input pipeline between grain's own: decode, read in blocks, rows -> batch.

Both packing modes build rows of `seq_len + 1` tokens (grain's ConcatThenSplit in `concat` mode,
`block_packing.PackBlocks` in `pack` mode); a batch of
rows becomes `inputs = row[:-1]` and `targets = row[1:]`, so every position has a target without
a second shifted copy of the data going through the packer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsIndex

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from ipt.data.integrity import opening, read_located
from ipt.data.records import decode_record

TOKENS = "tokens"
MASK = "mask"
# What a batch holds: the model's inputs (training and evaluation rows alike), then the loss's.
MODEL_INPUT_KEYS = ("inputs", "positions", "segment_ids")
BATCH_KEYS = (*MODEL_INPUT_KEYS, "targets", "loss_mask")


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


class ArrayRecordSource(grain.sources.ArrayRecordDataSource):
    """grain's ArrayRecord source with a batched read that grain's `_getitems` path can reach,
    and read errors that name the shard file and record.

    grain looks for `_getitems` on a source, but array_record names its batched read
    `__getitems__`, so grain reads every record with its own call (~50 us each). And
    `__getitems__` starts a thread pool per call, which on a few cores costs more in GIL
    hand-offs than it saves on files already in the page cache. This reads each file's share
    of the indices with one `ArrayRecordReader.read` call, in the calling thread. Every read,
    in the training process or a grain worker, goes through `integrity.read_located`, whose
    `ShardReadError` (picklable) grain re-raises in the training process.
    """

    def __init__(self, paths: Sequence[str]):
        try:
            super().__init__(paths)
        except RuntimeError:  # a file whose index cannot be read: find which
            for path in paths:
                with opening(path):
                    ArrayRecordReader(path).close()
            raise

    def records_per_file(self) -> list[int]:
        return [ri.num_records for ri in self._read_instructions]

    def _ensure_reader_exists(self, reader_idx: int) -> None:
        with opening(self._read_instructions[reader_idx].filename):
            super()._ensure_reader_exists(reader_idx)

    def __getitem__(self, record_key: SupportsIndex) -> bytes:
        return self._getitems([record_key])[0]

    def _getitems(self, indices: Sequence[int]) -> list[bytes]:
        records = [b""] * len(indices)
        for reader_idx, pairs in self._split_keys_per_reader(indices).items():
            self._ensure_reader_exists(reader_idx)
            positions, where = zip(*pairs, strict=True)
            path = self._read_instructions[reader_idx].filename
            read = read_located(self._readers[reader_idx].read, path, list(positions))
            for i, record in zip(where, read, strict=True):
                records[i] = record
        return records


class ReadInBlocks(grain.MapDataset):
    """Element `b` is the list of the parent's elements `[b * size, (b + 1) * size)`.

    It fetches them with one `_getitems` call, grain's batched-read path: shuffle and mix map the
    indices in bulk and ArrayRecord reads all records in one call. Read one at a time (what
    `to_iter_dataset` does), each record costs ~50 us of per-call overhead in ArrayRecord's
    Python binding, several times the cost of the rest of the pipeline. The order of documents
    is unchanged, so this changes speed only.
    """

    def __init__(self, parent: grain.MapDataset, size: int):
        super().__init__(parent)
        self._size = size

    def __len__(self) -> int:
        return math.ceil(len(self._parent) / self._size)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        start = index * self._size
        return list(self._parent._getitems(range(start, min(start + self._size, len(self._parent)))))

    def __str__(self) -> str:
        return f"ReadInBlocks(size={self._size})"


@dataclass(frozen=True)
class ConcatBlock(grain.transforms.Map):
    """Concat mode: a block of documents becomes one long document (their concatenation).

    ConcatThenSplit concatenates its input anyway, so feeding it blocks gives the same rows
    while its per-element work runs once per block instead of once per document.
    """

    def map(self, docs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.concatenate([d[k] for d in docs]) for k in docs[0]}


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
