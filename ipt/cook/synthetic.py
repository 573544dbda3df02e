"""Synthetic read collections from plain documents, for tests, benchmarks and demos.

The pairs are made up from the document's own sentences in the three styles the synthesizer
writes (free-form, multiple choice, chain of thought), with realistic lengths, so the cooking
stage can be exercised and timed without running a synthesizer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from typing import Any

from ipt.collection import QA, Entry
from ipt.synth import format as wire

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if len(s.split()) >= 4]


def synthetic_pairs(text: str, rng: random.Random, n: int) -> list[QA]:
    """`n` pairs about `text`: about 60% free-form, 25% multiple choice, 15% chain of thought."""
    sentences = _sentences(text) or [text.strip() or "This text is empty."]
    pairs = []
    for _ in range(n):
        sent = rng.choice(sentences)
        words = sent.rstrip(".!?").split()
        topic = " ".join(words[: min(len(words), rng.randint(2, 4))])
        kind = rng.random()
        if kind < 0.6:
            pairs.append((f"What does the text say about {topic}?", sent))
        elif kind < 0.85:
            pool = sorted({w.strip(",;:()") for s in sentences for w in s.split() if len(w) > 3})
            answer = rng.choice(words).strip(",;:()") or "none"
            distractors = [w for w in rng.sample(pool, min(len(pool), 4)) if w != answer][:3]
            options = [answer, *distractors]
            rng.shuffle(options)
            q = wire.multiple_choice(f"Which word appears in the sentence starting with '{topic}'?", options)
            pairs.append((q, answer))
        else:
            pairs.append(
                wire.chain_of_thought(f"Does the text discuss {topic}?", f"The text states: {sent}", "yes")
            )
    return pairs


def synthetic_collections(
    texts: Iterable[str], *, seed: int = 0, per_collection: int = 2, min_pairs: int = 1, max_pairs: int = 6
) -> Iterator[list[dict[str, Any]]]:
    """Read collections of `per_collection` linked entries; every 10th entry gets no pairs (a broken link)."""
    rng = random.Random(seed)
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) < per_collection:
            continue
        entries: list[Entry] = []
        for i, context in enumerate(batch):
            n = 0 if rng.random() < 0.1 else rng.randint(min_pairs, max_pairs)
            linked = i > 0 and n > 0 and bool(entries[-1].pairs)
            pairs = tuple(synthetic_pairs(context, rng, n))
            entries.append(Entry(context, pairs, linked, followed_by_next=i < len(batch) - 1))
        yield [e.to_json() for e in entries]
        batch = []
