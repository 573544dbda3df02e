"""Reading read collections: one JSON list of entries per line, ours or the released corpora's.

An entry is `{"context": str, "QA_list": [{"Q": str, "A": str}, ...], "inherit_from_prev": bool,
...}` (PAPER.md section 3); other keys (`followed_by_next`, ids) are ignored. Errors name the
file, the line, the entry and the key. Lines come from the shared `ipt.data.readers.iter_lines`
(decompression, UTF-8 policy); list-valued JSON is decoded here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ipt.cook.render import Entry
from ipt.data.readers import iter_lines
from ipt.stage import BadInputError

COLLECTION_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json")


def _str(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"{where}: `{key}` must be a string, got {type(value).__name__}")
    return value


def parse_collection(value: Any, where: str) -> list[Entry]:
    """A decoded JSON line -> entries; `where` is `file:line` for error messages."""
    if not isinstance(value, list):
        raise BadInputError(
            f"{where}: expected a read collection (a JSON list of entries), got {type(value).__name__}"
        )
    if not value:
        raise BadInputError(f"{where}: empty read collection (a JSON list with no entries)")
    entries = []
    for i, raw in enumerate(value):
        at = f"{where}: entry {i}"
        if not isinstance(raw, dict):
            raise BadInputError(f"{at}: expected an object, got {type(raw).__name__}")
        missing = [k for k in ("context", "QA_list") if k not in raw]
        if missing:
            raise BadInputError(f"{at}: missing {missing}; the entry has {sorted(raw)}")
        context = _str(raw["context"], at, "context")
        qa_list = raw["QA_list"]
        if not isinstance(qa_list, list):
            raise BadInputError(f"{at}: `QA_list` must be a list, got {type(qa_list).__name__}")
        pairs = []
        for j, qa in enumerate(qa_list):
            if not isinstance(qa, dict) or "Q" not in qa or "A" not in qa:
                raise BadInputError(f'{at}: `QA_list[{j}]` must be {{"Q": str, "A": str}}, got {qa!r:.80}')
            pairs.append((_str(qa["Q"], at, f"QA_list[{j}].Q"), _str(qa["A"], at, f"QA_list[{j}].A")))
        inherit = raw.get("inherit_from_prev", False if i == 0 else None)
        if not isinstance(inherit, bool):
            raise BadInputError(f"{at}: `inherit_from_prev` must be true or false, got {inherit!r}")
        entries.append(Entry(context, tuple(pairs), inherit))
    return entries


def iter_collections(
    path: str | Path, *, skip_bad: bool = False, stats: Counter | None = None
) -> Iterator[tuple[int, list[Entry]]]:
    """(line number, entries) for each non-blank line of one collection file."""
    path = Path(path)
    if not path.name.endswith(COLLECTION_SUFFIXES):
        raise BadInputError(
            f"{path}: read collections are JSON lines; expected {', '.join(COLLECTION_SUFFIXES)}"
        )
    stats = Counter() if stats is None else stats
    for lineno, text in iter_lines(path, stats):
        where = f"{path}:{lineno}"
        try:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise BadInputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            entries = parse_collection(value, where)
        except BadInputError as e:
            if not skip_bad:
                raise BadInputError(f"{e}; pass skip_bad=true to count and skip such lines") from None
            stats["bad_lines"] += 1
            continue
        yield lineno, entries
