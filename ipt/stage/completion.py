"""The completion record every stage writes last, and how a later stage reads a directory.

A stage's output directory holds `ipt_run.json` (its identity, written first) and, once all
of its work is done (by every shard), `ipt_complete.json`: the stage, the digest of the run
it completes, each output file with its size, and the run's counts. A later stage given the
directory reads its outputs from that record, and refuses a directory whose run is not
complete, or whose outputs changed size since. An explicit glob into an unfinished directory
is still allowed (a user may want the chunks that are done), with a warning.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipt.stage import BadInputError
from ipt.stage.files import atomic_write_text
from ipt.stage.identity import COMPLETE_FILE, RUN_FILE, identity_digest, read_json


def write_completion(
    out: Path, identity: dict[str, Any], outputs: Sequence[str | Path], counts: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """Record that the run `identity` in `out` is complete, with its outputs (relative paths)."""
    record = {
        "stage": identity["stage"],
        "run": identity_digest(identity),
        "outputs": [{"path": str(p), "bytes": (out / p).stat().st_size} for p in outputs],
        "counts": counts,
        **extra,
    }
    atomic_write_text(out / COMPLETE_FILE, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def completion_problem(directory: Path) -> str | None:
    """Why `directory` is not a complete stage output, or None when it is."""
    run = read_json(directory / RUN_FILE)
    done = read_json(directory / COMPLETE_FILE)
    if run is None:
        return f"{directory} is a directory with no {RUN_FILE}: not the output of an ipt stage"
    stage = run.get("stage")
    if done is None:
        return (
            f"{directory} holds an unfinished `ipt {stage}` run (no {COMPLETE_FILE}); "
            f"finish it by rerunning `ipt {stage}` with the same settings, or name its files explicitly"
        )
    if done.get("run") != identity_digest(run):
        return f"{directory}/{COMPLETE_FILE} belongs to an earlier run than {RUN_FILE}; rerun `ipt {stage}`"
    for o in done["outputs"]:
        path = directory / o["path"]
        if not path.is_file() or path.stat().st_size != o["bytes"]:
            return f"{path}: listed in {directory / COMPLETE_FILE} with {o['bytes']} bytes, now missing or changed"
    return None


def completed_outputs(directory: Path) -> list[Path]:
    """The output files of the complete stage run in `directory` (BadInputError if incomplete)."""
    problem = completion_problem(directory)
    if problem:
        raise BadInputError(problem)
    done = read_json(directory / COMPLETE_FILE)
    return [directory / o["path"] for o in done["outputs"]]


def warn_if_unfinished(files: Sequence[Path]) -> None:
    """Warn once per directory when files come from a stage output that is not complete."""
    for parent in dict.fromkeys(Path(f).parent for f in files):
        if (parent / RUN_FILE).exists() and completion_problem(parent):
            stage = (read_json(parent / RUN_FILE) or {}).get("stage")
            print(
                f"warning: {parent} holds an unfinished `ipt {stage}` run; using the files named anyway",
                file=sys.stderr,
            )


def expand_paths(pattern: str) -> list[Path]:
    """One input pattern -> files: a glob's matches, a file, or a complete stage output directory.

    A file named or globbed that is empty (0 bytes) is an error: it holds no record, and is
    more often a copy or download that failed than a shard meant to be empty. The outputs a
    completion record lists are exempt (a chunk may rightly hold nothing)."""
    if glob.has_magic(pattern):
        files = [Path(m) for m in sorted(glob.glob(pattern, recursive=True)) if Path(m).is_file()]
    else:
        path = Path(pattern)
        if path.is_dir():
            return completed_outputs(path)
        files = [path] if path.is_file() else []
    for f in files:
        if f.stat().st_size == 0:
            raise BadInputError(f"{f}: empty file (0 bytes); nothing to read (remove it from the input)")
    return files
