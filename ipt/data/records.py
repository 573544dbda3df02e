"""The token record format and the shard manifest: the contract between tokenizing and training.

A shard directory holds ArrayRecord files (`group_size:1`, one tokenized document per record)
and a `manifest.json`. A record is the document's token ids as little-endian unsigned ints of
the manifest's `dtype`; when the manifest says `has_loss_mask`, the ids are followed by one
uint8 (0 or 1) per token. So a reader needs only `array_record` and `numpy`:

    n = len(rec) // (itemsize + has_loss_mask)
    ids = np.frombuffer(rec, dtype, count=n)
    mask = np.frombuffer(rec, np.uint8, offset=n * itemsize) if has_loss_mask else None
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ipt.stage.files import atomic_write_text

FORMAT = "ipt.tokens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenizerInfo(_Frozen):
    name: str
    vocab_size: int
    vocab_hash: str
    bos_id: int | None
    eos_id: int | None


class ShardInfo(_Frozen):
    file: str
    num_docs: int
    num_tokens: int
    sha256: str
    bytes: int | None = None  # the file's size; None in manifests written before ipt recorded it


class Manifest(_Frozen):
    format: Literal["ipt.tokens"] = FORMAT
    format_version: int = FORMAT_VERSION
    tokenizer: TokenizerInfo
    add_bos: bool
    add_eos: bool
    dtype: Literal["uint16", "uint32"]
    has_loss_mask: bool
    shards: list[ShardInfo]
    num_docs: int
    num_tokens: int
    inputs: list[dict[str, Any]] = []
    stats: dict[str, int] = {}
    config: dict[str, Any] = {}
    ipt_version: str = ""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (halves the storage of 32k/64k vocabularies)."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def encode_record(ids: np.ndarray, dtype: np.dtype, mask: np.ndarray | None = None) -> bytes:
    data = np.asarray(ids).astype(dtype, casting="unsafe").tobytes()
    if mask is None:
        return data
    if len(mask) != len(ids):
        raise ValueError(f"loss mask has {len(mask)} entries for {len(ids)} tokens")
    return data + np.asarray(mask, dtype=np.uint8).tobytes()


def decode_record(rec: bytes, dtype: np.dtype, has_loss_mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
    dtype = np.dtype(dtype).newbyteorder("<")
    n = len(rec) // (dtype.itemsize + int(has_loss_mask))
    ids = np.frombuffer(rec, dtype, count=n)
    mask = np.frombuffer(rec, np.uint8, offset=n * dtype.itemsize) if has_loss_mask else None
    return ids, mask


def write_manifest(directory: Path, manifest: Manifest) -> None:
    atomic_write_text(Path(directory) / MANIFEST, manifest.model_dump_json(indent=2) + "\n")


def read_manifest(directory: str | Path) -> Manifest:
    """Load and check a shard directory's manifest; errors name the directory and the problem."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no {MANIFEST}; is this an `ipt tokenize` output directory?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {raw.get('format')!r} version {raw.get('format_version')!r}; "
            f"this ipt reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"{path}: invalid manifest: {e}") from None


def shard_paths(directory: str | Path, manifest: Manifest) -> list[Path]:
    return [Path(directory) / s.file for s in manifest.shards]
