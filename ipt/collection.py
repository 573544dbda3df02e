"""The read-collection schema: what synthesis writes and cooking, tuning data and evaluation read.

A read collection (PAPER.md section 3) is one JSON line holding a list of entries
`{"context": str, "QA_list": [{"Q": str, "A": str}, ...], "inherit_from_prev": bool,
"followed_by_next": bool}`, in that key order. The released corpora use the same form, so
`parse_collection` accepts them: other keys (ids) are ignored, `inherit_from_prev` may be left
out on the first entry and `followed_by_next` anywhere (both then read false). Errors name the
file, the line, the entry and the key. Lines come from the shared `ipt.data.readers.iter_lines`
(decompression, UTF-8 policy). No JAX here: synthesis and cooking both import this module.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipt.data.readers import iter_lines
from ipt.stage import BadInputError

COLLECTION_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json")

QA = tuple[str, str]
"""One (question, answer) pair as the synthesizer wrote it (on disk `{"Q": ..., "A": ...}`)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One text of a chain and the pairs the synthesizer wrote about it."""

    context: str
    pairs: tuple[QA, ...] = ()
    inherit_from_prev: bool = False  # synthesized with the previous entry as context, with >= 1 pair
    followed_by_next: bool = False  # the next entry inherits from this one

    def to_json(self) -> dict[str, Any]:
        """The on-disk object; key order is part of the format (outputs are compared as bytes)."""
        return {
            "context": self.context,
            "QA_list": [{"Q": q, "A": a} for q, a in self.pairs],
            "inherit_from_prev": self.inherit_from_prev,
            "followed_by_next": self.followed_by_next,
        }


def collection_line(entries: Sequence[Entry]) -> str:
    """One collection as synthesis writes it: a JSON line, non-ASCII kept as is (compared as bytes)."""
    return json.dumps([e.to_json() for e in entries], ensure_ascii=False) + "\n"


def _str(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"{where}: `{key}` must be a string, got {type(value).__name__}")
    return value


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise BadInputError(f"{where}: `{key}` must be true or false, got {value!r}")
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
        entries.append(
            Entry(
                context,
                tuple(pairs),
                _bool(raw.get("inherit_from_prev", False if i == 0 else None), at, "inherit_from_prev"),
                _bool(raw.get("followed_by_next", False), at, "followed_by_next"),
            )
        )
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
