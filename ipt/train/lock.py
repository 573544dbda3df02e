"""One `ipt train` per run directory: a lock file naming the host and process that hold it.

Two runs writing one directory would interleave `metrics.jsonl` and overwrite each other's
checkpoints, both exiting 0. The lock is `<run_dir>/.ipt-train.lock`, created atomically
(`O_CREAT | O_EXCL`) by process 0 and removed when training ends. A lock left by a process
that died (kill -9, a crashed host) is stale: on the same host, a holder that no longer exists
is replaced; a holder on another host cannot be checked from here, so the refusal says which
host and pid to look at and which file to delete. The lock guards the local run directory
(config, metrics); a `gs://` checkpoint directory shared by runs with different run
directories is not covered (local-only, see docs/training.md).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".ipt-train.lock"


class RunLockedError(RuntimeError):
    """The run directory is in use by another live `ipt train`."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(run_dir):` holds the directory for this process, or raises RunLockedError."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    self.path.unlink(missing_ok=True)  # its process is gone: a stale lock
                    continue
                raise RunLockedError(
                    f"{self.path.parent} is in use by another `ipt train` (host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, since {holder.get('since')}); if that run is gone, "
                    f"delete {self.path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunLockedError(f"{self.path}: could not take the lock")

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # being written right now, or unreadable: treated as held by an unknown host

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
