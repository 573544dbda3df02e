"""Reading input documents from .jsonl(.gz/.zst), .parquet and .txt files, with located errors.

Every stage that reads user text (synthesize, cook, tokenize) goes through `iter_records`, so
bad input is reported the same way everywhere: the file, the 1-based line (or parquet row),
and what was expected. Policies:
- a line that is not a JSON object is an error, or with `skip_bad` is counted and skipped;
- bytes that are not UTF-8 are replaced with U+FFFD and counted as `non_utf8_lines`
  (one bad byte in a web page should not stop a 100B-token job, but it should be visible);
- a JSON string holding a lone surrogate (`"\\ud800"`, valid JSON but not valid Unicode, and
  fatal to tokenizers) has it replaced with U+FFFD, counted as `lone_surrogate_lines`;
- a compressed file that ends early or is not what its suffix says, and a damaged parquet file,
  are errors that name the file (and the last line read);
- a `.txt` file is one document, `{"text": <the whole file>}`.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipt.stage import BadInputError
from ipt.stage.completion import expand_paths, warn_if_unfinished

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".parquet", ".txt")


@dataclass(frozen=True)
class Document:
    path: str
    line: int
    record: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def expand_inputs(patterns: str | Sequence[str]) -> list[Path]:
    """Globs, files or complete stage output directories -> the sorted, de-duplicated files.

    A pattern that matches nothing, an unfinished stage directory and an unsupported suffix
    are errors; files globbed out of an unfinished stage directory draw a warning."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise BadInputError("no input given")
    files: list[Path] = []
    for pattern in patterns:
        matches = expand_paths(pattern)
        if not matches:
            raise BadInputError(f"input {pattern!r} matches no file")
        for m in matches:
            if not m.name.endswith(SUFFIXES):
                raise BadInputError(f"{m}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
        files.extend(matches)
    warn_if_unfinished(files)
    return list(dict.fromkeys(files))


def _open_text_lines(path: Path) -> Iterator[bytes]:
    name = path.name
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            yield from f
    elif name.endswith(".zst"):
        yield from _split_lines(_zstd_chunks(path))
    else:
        with open(path, "rb") as f:
            yield from f


def _zstd_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """The decompressed bytes of every frame; a last frame cut short is an EOFError (zstandard's
    stream reader returns nothing for it, so a truncated file would read as an empty one)."""
    import zstandard

    frame, inside = zstandard.ZstdDecompressor().decompressobj(), False
    with open(path, "rb") as raw:
        while chunk := raw.read(size):
            while chunk:
                yield frame.decompress(chunk)
                inside, chunk = True, b""
                if frame.eof:
                    chunk, inside = frame.unused_data, False
                    frame = zstandard.ZstdDecompressor().decompressobj()
    if inside:
        raise EOFError("the zstd stream ended inside a frame")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    tail = b""
    for chunk in chunks:
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            yield line + b"\n"
    if tail:
        yield tail


def _decode(raw: bytes, stats: Counter) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats["non_utf8_lines"] += 1
        return raw.decode("utf-8", errors="replace")


def iter_lines(path: str | Path, stats: Counter) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of each non-blank line of a plain/.gz/.zst text file."""
    lineno = 0
    try:
        for lineno, raw in enumerate(_open_text_lines(Path(path)), start=1):
            text = _decode(raw, stats).strip()
            if text:
                yield lineno, text
    except (EOFError, gzip.BadGzipFile, _zstd_error()) as e:
        raise BadInputError(
            f"{path}: cannot be decompressed after line {lineno} ({e}); is it truncated, or not {Path(path).suffix}?"
        ) from None


def _zstd_error() -> type[Exception]:
    import zstandard

    return zstandard.ZstdError


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {k: _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _iter_jsonl(path: Path, skip_bad: bool, stats: Counter) -> Iterator[Document]:
    for lineno, text in iter_lines(path, stats):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            error = f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})"
        else:
            if isinstance(record, dict):
                if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(record):
                    record = _without_lone_surrogates(record)
                    stats["lone_surrogate_lines"] += 1
                yield Document(str(path), lineno, record)
                continue
            error = f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
        if not skip_bad:
            raise BadInputError(error + "; pass skip_bad=true to count and skip such lines")
        stats["bad_lines"] += 1


def _iter_parquet(path: Path) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield Document(str(path), row, record)
    except (pa.ArrowException, OSError) as e:
        raise BadInputError(f"{path}: not a readable parquet file after row {row} ({e})") from None


def iter_records(
    paths: Sequence[str | Path], *, skip_bad: bool = False, stats: Counter | None = None
) -> Iterator[Document]:
    """Every document of every file, in order. `stats` (if given) collects counts of skipped input."""
    stats = Counter() if stats is None else stats
    for path in map(Path, paths):
        if path.name.endswith(".parquet"):
            yield from _iter_parquet(path)
        elif path.name.endswith(".txt"):
            yield Document(str(path), 1, {"text": _decode(path.read_bytes(), stats)})
        else:
            yield from _iter_jsonl(path, skip_bad, stats)


def get_field(doc: Document, field: str) -> Any:
    """`doc.record[field]`, or an error that names the file, the line and the keys that were found."""
    try:
        return doc.record[field]
    except KeyError:
        keys = ", ".join(sorted(doc.record)) or "(none)"
        raise BadInputError(f"{doc.where}: no field {field!r}; the record has: {keys}") from None
