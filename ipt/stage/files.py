"""Writing stage outputs so that no reader ever sees half a file.

Every output is written under a temp name in its own directory (`.NAME.<unique>.tmp`), flushed,
fsynced, given the mode a plain `open()` would give it, and renamed into place. A run killed
mid-write leaves only such temps; `remove_stale_temps` clears the ones of the outputs a stage
owns when it starts again (only those, so concurrent shards in one directory keep theirs).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def new_temp_path(path: Path) -> Path:
    """A unique, not yet existing temp name beside `path` (for writers that open by name)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: Path, path: Path) -> None:
    """fsync `tmp`, give it a plain file's mode and rename it to `path`."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    os.replace(tmp, path)


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path`; on a clean exit it replaces `path`, on an error it vanishes."""
    path = Path(path)
    tmp = new_temp_path(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        commit_temp(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_writer(path) as f:
        f.write(text)


def remove_stale_temps(directory: Path, owns: Callable[[Path], bool]) -> int:
    """Delete the temps under `directory` whose target (a path relative to it) `owns` accepts.

    Killed writers leave such temps; a stage clears those of its own outputs when it starts
    again, never another shard's. Returns how many were removed."""
    removed = 0
    for parent, _, names in os.walk(directory):
        for name in names:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3:
                target = Path(parent, name[1:].rsplit(".", 2)[0]).relative_to(directory)
                if owns(target):
                    Path(parent, name).unlink(missing_ok=True)
                    removed += 1
    return removed
