"""Completion markers: how a stage knows which of its work units (chunks, files, shards) are done.

A unit's output is written atomically first, then its marker, a small JSON object naming the
output and its size plus the unit's own fields (counts, hashes). A unit is done only if its
marker parses and its output exists with that size, so a kill between the two writes, a
truncated marker or a damaged output all mean "redo this unit", never "use it".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ipt.stage.files import atomic_write_text
from ipt.stage.identity import read_json

MARKER_KEYS = ("output", "bytes")


def write_marker(marker: Path, output: Path, **fields: Any) -> dict[str, Any]:
    """Mark `output` (already in place) done; returns the marker."""
    record = {"output": output.name, "bytes": output.stat().st_size, **fields}
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def read_marker(marker: Path, output: Path) -> dict[str, Any] | None:
    """The marker of `output` if the unit is done: the marker parses, the output has its size."""
    record = read_json(marker)
    if record is None or record.get("output") != output.name:
        return None
    if not output.is_file() or output.stat().st_size != record.get("bytes"):
        return None
    return record


def unit_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A marker's own fields, without the output name and size."""
    return {k: v for k, v in record.items() if k not in MARKER_KEYS}
