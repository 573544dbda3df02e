"""The worker side of `ipt tokenize`: one chunk of documents -> one complete ArrayRecord shard.

Runs in a worker process with only `tokenizers`, `numpy` and `array_record` loaded. A shard is
written under a temp name, renamed into place, and only then given its completion marker
(`<state>/<shard>.json` with counts, size and sha256), so a kill at any moment leaves either a
finished shard with its marker or nothing that a resumed run would trust.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipt.data.records import WRITER_OPTIONS, encode_record
from ipt.stage.files import commit_temp, new_temp_path
from ipt.stage.markers import read_marker as read_unit_marker
from ipt.stage.markers import write_marker
from ipt.stage.workers import exit_with_parent

BATCH_DOCS = 256
_state: dict = {}


@dataclass(frozen=True)
class Segments:
    """Where a document's loss-mask segments end (character offsets) and which are trained."""

    ends: np.ndarray
    train: np.ndarray


@dataclass(frozen=True)
class ShardTask:
    name: str
    output_dir: str
    state_dir: str
    dtype: str
    bos_id: int | None
    eos_id: int | None
    with_mask: bool
    texts: list[str]
    segments: list[Segments | None]


def init_worker(tokenizer_json: str, docs_done, tokens_done, control_tokens: bool) -> None:
    """Pool initializer: one single-threaded tokenizer per process (processes give the parallelism).

    By default "</s>" in the text is text and control ids come only from add_bos/eos (pre-training
    text must not forge them); with `control_tokens` the text's special-token strings become
    their ids, as the engines tokenize a synthesizer prompt."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    exit_with_parent()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = not control_tokens
    _state.update(tokenizer=tok, docs_done=docs_done, tokens_done=tokens_done)


def token_mask(offsets: np.ndarray, text_len: int, segments: Segments | None) -> np.ndarray:
    """1 for tokens that cover any character of a trained segment, else 0 (plain text: all 1)."""
    if segments is None:
        return np.ones(len(offsets), np.uint8)
    lengths = np.diff(segments.ends, prepend=0)
    trained_chars = np.concatenate([[0], np.cumsum(np.repeat(segments.train.astype(np.int64), lengths))])
    starts = np.minimum(offsets[:, 0], text_len - 1)
    ends = np.clip(offsets[:, 1], starts + 1, text_len)  # a zero-width token takes its position's flag
    return (trained_chars[ends] > trained_chars[starts]).astype(np.uint8)


def _records(task: ShardTask, start: int, stop: int) -> tuple[list[bytes], int]:
    tok = _state["tokenizer"]
    texts = task.texts[start:stop]
    if task.with_mask:
        encodings = tok.encode_batch(texts, add_special_tokens=False)
    else:
        encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    head = [task.bos_id] if task.bos_id is not None else []
    tail = [task.eos_id] if task.eos_id is not None else []
    records, n_tokens = [], 0
    for text, enc, segments in zip(texts, encodings, task.segments[start:stop], strict=True):
        ids = np.array(head + enc.ids + tail, dtype=np.int64)
        mask = None
        if task.with_mask:
            body = token_mask(np.array(enc.offsets, np.int64).reshape(-1, 2), len(text), segments)
            last = body[-1:] if len(body) else np.ones(1, np.uint8)
            mask = np.concatenate([np.zeros(len(head), np.uint8), body, np.repeat(last, len(tail))])
        records.append(encode_record(ids, np.dtype(task.dtype), mask))
        n_tokens += len(ids)
    return records, n_tokens


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_shard(task: ShardTask) -> dict:
    """Tokenize `task.texts`, write the shard atomically and its completion marker; return the marker."""
    from array_record.python.array_record_module import ArrayRecordWriter

    final = Path(task.output_dir) / task.name
    tmp = new_temp_path(final)
    writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    n_tokens = 0
    try:
        for start in range(0, len(task.texts), BATCH_DOCS):
            stop = min(start + BATCH_DOCS, len(task.texts))
            records, batch_tokens = _records(task, start, stop)
            for rec in records:
                writer.write(rec)
            n_tokens += batch_tokens
            with _state["docs_done"].get_lock():
                _state["docs_done"].value += stop - start
            with _state["tokens_done"].get_lock():
                _state["tokens_done"].value += batch_tokens
    finally:
        writer.close()
    sha256 = file_sha256(tmp)
    commit_temp(tmp, final)
    marker = Path(task.state_dir) / f"{task.name}.json"
    return write_marker(
        marker, final, file=task.name, num_docs=len(task.texts), num_tokens=n_tokens, sha256=sha256
    )


def read_marker(state_dir: Path, output_dir: Path, name: str) -> dict | None:
    """The completion marker of shard `name` if the shard is complete (marker valid, size matches)."""
    return read_unit_marker(Path(state_dir) / f"{name}.json", Path(output_dir) / name)
