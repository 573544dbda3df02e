"""The one read-collection schema: what synthesis writes is what cooking reads, and bad lines are named."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from ipt.collection import COLLECTION_SUFFIXES, Entry, collection_line, iter_collections, parse_collection
from ipt.stage import BadInputError

RELEASED = Path(__file__).parent / "golden" / "released_corpus_lines.jsonl"

CHAIN = [
    Entry("First text.", (("Who?", "A dog."), ("Where?\nOptions:\n- park\n- home", "park")), False, True),
    Entry(
        "Second text, ünïcode.",
        (("Why?\nLet's think step by step.", "R.\nTherefore, the answer is x"),),
        True,
    ),
    Entry("Third text with no pairs."),
]


def _write(path: Path, collections: list[list[Entry]]) -> None:
    """As `ipt synth` writes a chunk."""
    path.write_text("".join(collection_line(c) for c in collections), encoding="utf-8")


def test_to_json_writes_the_on_disk_keys_in_order():
    assert json.dumps(CHAIN[0].to_json()) == (
        '{"context": "First text.", "QA_list": [{"Q": "Who?", "A": "A dog."}, '
        '{"Q": "Where?\\nOptions:\\n- park\\n- home", "A": "park"}], '
        '"inherit_from_prev": false, "followed_by_next": true}'
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_write_then_read_is_identical(tmp_path, suffix):
    plain = tmp_path / "chunk.jsonl"
    _write(plain, [CHAIN, CHAIN[2:]])
    path = tmp_path / f"chunk{suffix}"
    if suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(iter_collections(path)) == [(1, CHAIN), (2, CHAIN[2:])]
    again = tmp_path / "again.jsonl"
    _write(again, [c for _, c in iter_collections(path)])
    assert again.read_bytes() == plain.read_bytes()


def test_released_corpus_lines_round_trip_byte_for_byte(tmp_path):
    read = [c for _, c in iter_collections(RELEASED)]
    assert read and all(isinstance(e, Entry) for c in read for e in c)
    again = tmp_path / "again.jsonl"
    _write(again, read)
    assert again.read_text(encoding="utf-8") == RELEASED.read_text(encoding="utf-8")


def test_optional_link_flags_and_extra_keys():
    entries = parse_collection(
        [
            {"context": "a", "QA_list": [], "id": 7},
            {"context": "b", "QA_list": [], "inherit_from_prev": True},
        ],
        "f:1",
    )
    assert entries == [Entry("a"), Entry("b", (), True)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"context": "x"}, r"^f\.jsonl:3: expected a read collection \(a JSON list of entries\), got dict$"),
        ([], r"^f\.jsonl:3: empty read collection"),
        (["x"], r"^f\.jsonl:3: entry 0: expected an object, got str$"),
        ([{"context": "x"}], r"^f\.jsonl:3: entry 0: missing \['QA_list'\]; the entry has \['context'\]$"),
        ([{"context": 1, "QA_list": []}], r"^f\.jsonl:3: entry 0: `context` must be a string, got int$"),
        ([{"context": "x", "QA_list": {}}], r"^f\.jsonl:3: entry 0: `QA_list` must be a list, got dict$"),
        ([{"context": "x", "QA_list": [{"Q": "q"}]}], r'^f\.jsonl:3: entry 0: `QA_list\[0\]` must be \{"Q"'),
        (
            [{"context": "x", "QA_list": []}, {"context": "y", "QA_list": [{"Q": 3, "A": "a"}]}],
            r"^f\.jsonl:3: entry 1: `QA_list\[0\]\.Q` must be a string, got int$",
        ),
        (
            [{"context": "x", "QA_list": []}, {"context": "y", "QA_list": [], "inherit_from_prev": "yes"}],
            r"^f\.jsonl:3: entry 1: `inherit_from_prev` must be true or false, got 'yes'$",
        ),
        (
            [{"context": "x", "QA_list": []}, {"context": "y", "QA_list": []}],
            r"^f\.jsonl:3: entry 1: `inherit_from_prev` must be true or false, got None$",
        ),
        (
            [{"context": "x", "QA_list": [], "followed_by_next": 1}],
            r"^f\.jsonl:3: entry 0: `followed_by_next` must be true or false, got 1$",
        ),
    ],
)
def test_bad_input_names_file_line_entry_and_key(value, message):
    with pytest.raises(BadInputError, match=message):
        parse_collection(value, "f.jsonl:3")


def test_bad_lines_stop_the_read_or_are_counted_and_skipped(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = collection_line(CHAIN)
    path.write_text(f"{good}\n[{{\n{json.dumps([{'context': 'x'}])}\n{good}", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"bad\.jsonl:3: not valid JSON .*; pass skip_bad=true"):
        list(iter_collections(path))
    stats = Counter()
    assert list(iter_collections(path, skip_bad=True, stats=stats)) == [(1, CHAIN), (5, CHAIN)]
    assert stats["bad_lines"] == 2


def test_other_suffixes_are_refused(tmp_path):
    path = tmp_path / "chunk.parquet"
    path.write_bytes(b"")
    with pytest.raises(BadInputError, match=r"chunk\.parquet: read collections are JSON lines"):
        list(iter_collections(path))
    assert ".jsonl" in COLLECTION_SUFFIXES
