"""Test helper: kill a stage at a random point, resume it, and compare with an uninterrupted run.

`kill_and_resume` runs the stage's command to completion into `out_dir` (the reference), clears
it, runs it again in its own process group and kills it (SIGKILL unless told otherwise) once
a seeded random number of its work units are on disk, waits for the processes it started to
go, reruns it to completion and returns both directories' files as bytes, and apart from them
the temp files the rerun left. Both runs write to the same path, so everything that records
it (run identities, completion records) must match too; only files named `volatile`
(timings) are left out of the comparison.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.005
CHILDREN_GRACE_SECONDS = 5.0  # ipt.stage.workers polls its parent every 0.5 s


@dataclass
class KillResult:
    clean: dict[str, bytes]  # the uninterrupted run's files (relative path -> bytes)
    resumed: dict[str, bytes]  # the killed-and-resumed run's files, but temps
    temps: list[str]  # temp files (`.NAME.<unique>.tmp`) left in the resumed run's directory
    total: int  # work units of the whole run
    at_kill: int  # units done when the kill landed
    children: list[int]  # processes the killed one had started, seen at the kill
    survivors: list[int]  # those still alive CHILDREN_GRACE_SECONDS after it


def snapshot(out_dir: Path, volatile: Sequence[str] = ()) -> dict[str, bytes]:
    """Every file under `out_dir` (hidden ones and temps included) but those matching `volatile`."""
    files = sorted(p for p in Path(out_dir).rglob("*") if p.is_file())
    rel = {str(p.relative_to(out_dir)): p for p in files}
    return {k: p.read_bytes() for k, p in rel.items() if not any(fnmatch.fnmatch(k, v) for v in volatile)}


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _run(cmd: Sequence[str], env: dict[str, str] | None, timeout: float) -> None:
    done = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}"


def kill_and_resume(
    cmd: Sequence[str],
    out_dir: Path,
    *,
    progress: Callable[[Path], int],
    seed: int,
    volatile: Sequence[str] = (),
    env: dict[str, str] | None = None,
    sig: int = signal.SIGKILL,
    main_only: bool = False,
    clean_cmd: Sequence[str] | None = None,
    resume_cmd: Sequence[str] | None = None,
    timeout: float = 300,
) -> KillResult:
    """Clean run, then a run killed after a random number of `progress(out_dir)` units, then a rerun.

    The kill goes to the whole process group, or with `main_only` to the main process alone
    (its workers must then exit by themselves). `clean_cmd`/`resume_cmd` default to `cmd`."""
    out_dir = Path(out_dir)
    _run(clean_cmd or cmd, env, timeout)
    clean, total = snapshot(out_dir, volatile), progress(out_dir)
    assert total >= 2, f"the run has {total} work units: too few to be killed between two"
    shutil.rmtree(out_dir)

    rng = random.Random(seed)
    target, extra = rng.randint(1, max(1, total * 3 // 4)), rng.uniform(0, 0.03)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(cmd), env=env, stdout=log, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline and progress(out_dir) < target:
                time.sleep(POLL_SECONDS)
            time.sleep(extra)  # land anywhere in the next unit, mid-write included
            children = _children(proc.pid)
            if proc.poll() is None and main_only:
                os.kill(proc.pid, sig)
            elif proc.poll() is None:
                os.killpg(proc.pid, sig)
            proc.wait(timeout=60)
            deadline = time.monotonic() + CHILDREN_GRACE_SECONDS
            while any(_alive(c) for c in children) and time.monotonic() < deadline:
                time.sleep(0.05)
            survivors = [c for c in children if _alive(c)]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
            proc.wait()
        log.seek(0)
        output = log.read().decode(errors="replace")
    assert proc.returncode == -sig, (
        f"the run ended (exit {proc.returncode}) before the kill:\n{output[-3000:]}"
    )
    at_kill = progress(out_dir)

    _run(resume_cmd or cmd, env, timeout)
    resumed = snapshot(out_dir, volatile)
    temps = [name for name in resumed if name.endswith(".tmp")]
    resumed = {k: v for k, v in resumed.items() if k not in temps}
    return KillResult(clean, resumed, temps, total, at_kill, children, survivors)
