"""The built-in corpus split by document into training and held-out text, the same on every machine.

A document is held out when the SHA-256 of its id, read as a number, is divisible by `every`:
the choice depends on the document alone (not on its position or the corpus order), so the two
files are the same bytes wherever the quickstart runs. `split.json` is written last and marks the
split complete; a rerun with the same corpus and `every` reuses it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from ipt.stage.files import atomic_write_text

MARKER = "split.json"


def is_heldout(doc_id: str, every: int) -> bool:
    return int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") % every == 0


def split_corpus(corpus: Path, out_dir: Path, every: int) -> dict[str, int]:
    """Write `train.jsonl` and `heldout.jsonl` under `out_dir` (unless done); return document counts."""
    marker = out_dir / MARKER
    identity = {"corpus": corpus.name, "corpus_bytes": corpus.stat().st_size, "every": every}
    if marker.exists():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done["identity"] == identity:
            return done["documents"]
    lines: dict[str, list[str]] = {"train": [], "heldout": []}
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            lines["heldout" if is_heldout(doc["id"], every) else "train"].append(line.rstrip("\n") + "\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in lines.items():
        atomic_write_text(out_dir / f"{name}.jsonl", "".join(part))
    counts = {name: len(part) for name, part in lines.items()}
    atomic_write_text(marker, json.dumps({"identity": identity, "documents": counts}, indent=1) + "\n")
    return counts
