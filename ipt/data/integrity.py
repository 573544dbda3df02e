"""Is each shard the file its manifest describes? Checks at start, in the background, and on every read.

Damage to a shard (a bad disk, a truncated copy) used to show up mid-training as array_record's
`chunk data hash mismatch`, with no file named. Three checks now find it, cheapest first:

- `check_sources` (called by `ipt train` at start): every shard exists and has the size the
  manifest records (one `stat` per file), else a `ShardError` before the model is built.
- `check_sources` also starts hashing, in one daemon thread, the shards of every source that
  `data.verify_checksums` selects (`auto`: sources of at most `data.verify_max_bytes`).
  `make_batch_iterator` waits for it, so no training record is read before its shard's sha256
  matched, and a mismatch ends the run at start (exit 2), before any checkpoint. The hash
  overlaps building the model and optimizer, not the state's initialization: a wait at the first
  batch would hide more of it, but would then raise from inside the training loop.
- every read: a record that array_record cannot read raises `ShardReadError` naming the shard
  file and the record's index within it (found by re-reading the failed batch one record at a time).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ipt.data.records import MANIFEST, Manifest, read_manifest, shard_paths
from ipt.data.shard_writer import file_sha256

if TYPE_CHECKING:
    from ipt.data.pipeline import DataConfig
    from ipt.data.sources import SourceConfig

log = logging.getLogger(__name__)

VerifyPolicy = Literal["auto", "always", "never"]

_checks: dict[Path, ChecksumCheck] = {}  # source directory -> its running or finished hash
_checks_lock = threading.Lock()


class ShardError(ValueError):
    """A shard that is missing, of the wrong size or checksum, or unreadable; names the file."""


class ShardReadError(ShardError):
    """A shard or record that cannot be read; names the shard file and the record's index in it.

    `detail` is the located error, the second argument the source directory (for the remedy);
    both are in `args`, so the error pickles from a grain worker to the training process."""

    def __init__(self, detail: str, directory: str | Path):
        super().__init__(detail, str(directory))
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.detail}; {remedy(self.args[1])}"


def remedy(directory: str | Path) -> str:
    return (
        f"re-tokenize the source, or run `ipt data inspect --verify {directory}` to list every damaged shard"
    )


def size_problems(directory: str | Path, manifest: Manifest) -> list[str]:
    """Shards that are missing or whose size differs from the manifest's (stat only)."""
    problems = []
    for shard, path in zip(manifest.shards, shard_paths(directory, manifest), strict=True):
        if not path.is_file():
            problems.append(f"{path}: missing (listed in {MANIFEST})")
        elif shard.bytes is not None and path.stat().st_size != shard.bytes:
            problems.append(f"{path}: {path.stat().st_size:,} bytes, but {MANIFEST} says {shard.bytes:,}")
    return problems


def source_bytes(directory: str | Path, manifest: Manifest) -> int:
    return sum(p.stat().st_size for p in shard_paths(directory, manifest))


def wants_checksums(policy: VerifyPolicy, max_bytes: int, n_bytes: int) -> bool:
    """`always`, `never`, or (auto) only sources small enough to hash in a few seconds."""
    return policy == "always" or (policy == "auto" and n_bytes <= max_bytes)


@dataclass
class ChecksumCheck:
    """The sha256 of every shard of one source, computed in a daemon thread; `wait` raises on a mismatch."""

    label: str
    directory: Path
    manifest: Manifest
    _problems: list[str] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ChecksumCheck:
        threading.Thread(target=self._run, name=f"sha256-{self.label}", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            for shard, path in zip(
                self.manifest.shards, shard_paths(self.directory, self.manifest), strict=True
            ):
                actual = file_sha256(path)
                if actual != shard.sha256:
                    self._problems.append(f"{path}: sha256 {actual}, but {MANIFEST} says {shard.sha256}")
        except OSError as e:
            self._problems.append(f"cannot read {e.filename}: {e.strerror}")
        finally:
            self._done.set()

    def wait(self) -> None:
        self._done.wait()
        if self._problems:
            raise ShardError(
                f"source {self.label}: shards differ from {MANIFEST} (changed or damaged after "
                f"`ipt tokenize` wrote them):\n  "
                + "\n  ".join(self._problems)
                + f"\n{remedy(self.directory)}"
            )


def check_sources(cfg: DataConfig) -> None:
    """Refuse missing or resized shards now; start the sha256 of the sources the policy selects."""
    sources = [*cfg.sources, *cfg.eval_sources]
    for src in sources:
        manifest = read_manifest(src.path)
        label = f"{src.name!r} ({src.path})"
        problems = size_problems(src.path, manifest)
        if problems:
            raise ShardError(f"source {label}:\n  " + "\n  ".join(problems) + f"\n{remedy(src.path)}")
        n_bytes = source_bytes(src.path, manifest)
        if not wants_checksums(cfg.verify_checksums, cfg.verify_max_bytes, n_bytes):
            log.info(
                "source %s: %d bytes; sha256 not checked (verify_checksums=%s)",
                label,
                n_bytes,
                cfg.verify_checksums,
            )
            continue
        check = ChecksumCheck(label, Path(src.path), manifest).start()
        with _checks_lock:
            _checks[Path(src.path).absolute()] = check


def wait_for_checksums(sources: Sequence[SourceConfig]) -> None:
    """Block until the sha256 checks `check_sources` started for these sources are done; raise on a mismatch."""
    for src in sources:
        with _checks_lock:
            check = _checks.pop(Path(src.path).absolute(), None)
        if check is not None:
            check.wait()


@contextlib.contextmanager
def opening(path: str) -> Iterator[None]:
    """Turn array_record's error on opening `path` into a `ShardReadError` that names it."""
    try:
        yield
    except (RuntimeError, OSError) as e:
        raise ShardReadError(
            f"{path}: cannot be opened as an ArrayRecord file ({e})", Path(path).parent
        ) from None


def read_located(read: Callable[[list[int]], list[bytes]], path: str, positions: list[int]) -> list[bytes]:
    """`read(positions)`, or a `ShardReadError` naming `path` and the first record that fails."""
    if not positions:
        return []
    try:
        return read(positions)
    except (RuntimeError, OSError) as batch_error:
        for position in positions:
            try:
                read([position])
            except (RuntimeError, OSError) as e:
                raise ShardReadError(
                    f"{path}: record {position} (0-based) cannot be read ({e})", Path(path).parent
                ) from None
        raise ShardReadError(  # the batch failed, no single record does: report the batch
            f"{path}: records {positions[0]}..{positions[-1]} cannot be read ({batch_error})",
            Path(path).parent,
        ) from None
