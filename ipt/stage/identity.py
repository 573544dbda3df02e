"""A stage run's identity, recorded in its output directory and checked on every rerun.

The identity is the config keys that decide the output plus each input's content: size and a
sha256 of the whole file, or, for a file over `FULL_HASH_BYTES`, of its first and last
`EDGE_BYTES` (hashing a 10 TB corpus on every start would cost hours; an edit in the middle of
such a file that keeps its size is the one change this misses). The mtime is kept as a cache
key only: an input whose size and mtime match the record is not hashed again, so a resume
costs nothing, while an edit in place (same size, new mtime) is hashed and seen. Touching a
file without changing it is not a change.

When the identity changes, `on_change=refuse` (the default) stops with the differences and
how to start fresh; `on_change=redo` discards the directory's earlier outputs and starts again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ipt.config import Config
from ipt.stage import BadInputError
from ipt.stage.files import atomic_write_text

RUN_FILE = "ipt_run.json"
COMPLETE_FILE = "ipt_complete.json"
FULL_HASH_BYTES = 256 << 20  # about 0.2 s of sha256 here (1.1-1.25 GB/s)
EDGE_BYTES = 8 << 20
_BLOCK = 4 << 20


class RerunConfig(Config):
    """What a stage does when its output directory holds a run of other settings or inputs."""

    on_change: Literal["refuse", "redo"] = Field(
        "refuse", description="output_dir holds a run of other settings/inputs: refuse | redo (discard it)"
    )


class RunChangedError(BadInputError):
    """The output directory holds a run whose settings or inputs differ from this one's."""


def content_hash(path: Path, size: int) -> str:
    """sha256 of the file, or `edges:` + sha256 of its first and last EDGE_BYTES when it is huge."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            while block := f.read(_BLOCK):
                digest.update(block)
            return digest.hexdigest()
        digest.update(f.read(EDGE_BYTES))
        f.seek(size - EDGE_BYTES)
        digest.update(f.read(EDGE_BYTES))
    return "edges:" + digest.hexdigest()


def input_identity(path: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """{path, bytes, mtime_ns, sha256}; the hash is taken from `known` when size and mtime match."""
    st = path.stat()
    record = {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if known and all(known.get(k) == record[k] for k in record) and "sha256" in known:
        record["sha256"] = known["sha256"]
    else:
        record["sha256"] = content_hash(path, st.st_size)
    return record


def _same_input(a: dict, b: dict) -> bool:
    return (a["path"], a["bytes"], a["sha256"]) == (b["path"], b["bytes"], b["sha256"])


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two identities, one short phrase each (mtimes alone are no change)."""
    found = []
    before, after = old.get("settings", {}), new["settings"]
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            found.append(f"{key}: {json.dumps(before.get(key))} -> {json.dumps(after.get(key))}")
    old_inputs = {r["path"]: r for r in old.get("inputs", [])}
    new_inputs = {r["path"]: r for r in new["inputs"]}
    for path in sorted(old_inputs.keys() - new_inputs.keys()):
        found.append(f"input {path}: no longer given")
    for path in sorted(new_inputs.keys() - old_inputs.keys()):
        found.append(f"input {path}: new")
    for path in sorted(old_inputs.keys() & new_inputs.keys()):
        if not _same_input(old_inputs[path], new_inputs[path]):
            found.append(f"input {path}: content changed since the recorded run")
    if not found and [r["path"] for r in old.get("inputs", [])] != [r["path"] for r in new["inputs"]]:
        found.append("input order")
    return found


def identity_digest(identity: dict[str, Any]) -> str:
    """A digest of what decides the output (settings, input paths, sizes, hashes; not mtimes)."""
    basis = {
        "stage": identity["stage"],
        "settings": identity["settings"],
        "inputs": [{k: r[k] for k in ("path", "bytes", "sha256")} for r in identity["inputs"]],
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when the file is missing or not a complete JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def check_apart(out: Path, files: Sequence[Path]) -> None:
    """Refuse an output directory that holds one of the stage's inputs (it would overwrite it)."""
    root = out.resolve()
    for f in files:
        if f.resolve().is_relative_to(root):
            raise BadInputError(
                f"output_dir {out} holds the input {f}: the stage would overwrite its own input; "
                "give it an output_dir of its own"
            )


def claim_output_dir(
    out: Path,
    stage: str,
    settings: dict[str, Any],
    files: Sequence[Path],
    on_change: str,
    discard: Callable[[], None],
) -> dict[str, Any]:
    """Record this run's identity in `out`, or check it against the one recorded there.

    Returns the identity. A different stage's directory is always refused; a changed identity
    is refused or, with on_change=redo, `discard()`ed (the stage removes its outputs)."""
    check_apart(out, files)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    old = read_json(path)
    known = {r["path"]: r for r in old.get("inputs", [])} if old else {}
    new = {"stage": stage, "settings": settings}
    new["inputs"] = [input_identity(f, known.get(str(f))) for f in files]
    if old is not None:
        if old.get("stage") != stage:
            raise BadInputError(
                f"{out} holds the output of `ipt {old.get('stage')}` ({path}); "
                f"give `ipt {stage}` an output_dir of its own"
            )
        changed = differences(old, new)
        if changed and on_change == "refuse":
            raise RunChangedError(
                f"{out} holds an `ipt {stage}` run that differs ({'; '.join(changed)}; recorded in {path}); "
                "use a new output_dir, or pass on_change=redo to discard that run's outputs and start again"
            )
        if changed:
            (out / COMPLETE_FILE).unlink(missing_ok=True)
            discard()
        elif old == new:
            return new
    atomic_write_text(path, json.dumps(new, indent=1, ensure_ascii=False) + "\n")
    return new
