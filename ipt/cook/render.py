"""A read collection -> pre-training texts (PAPER.md section 4), with every choice drawn per collection.

Reproducibility: each collection gets its own `random.Random`, seeded from the run's `seed`
and a BLAKE2b hash of the collection's *content* (every context, question, answer and link
flag). The key is content, not a line number, on purpose: the same collection renders to the
same bytes wherever it sits (any file, any position, any shard, inputs re-split or re-ordered,
a file cooked alone), and Python's Mersenne Twister seeded with an int is the same on every
machine. All draws happen in a fixed order, so a collection's text depends only on its content,
the seed and the pools.

Layout: one uniform draw per collection picks the mode, read against the reference weights
(classic 80, dialog 5, numbered 5, inline 5, next-turn 5); a segment in which any entry that
keeps pairs has fewer than 2 reads the same draw against classic 95 / dialog 5 (entries left
with no pairs are written raw and do not count). Inversion (5 vs 95) is a
separate draw and applies to any mode: the pairs, then an instruction to write the text, then
the text.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

from ipt.collection import Entry
from ipt.cook.pairs import OptionStyle, Pair, item_labels, parse_pair, render_pair, strip_markers
from ipt.cook.pools import (
    MODES,
    CotPattern,
    InlineFrame,
    NumberedFrame,
    NumberedStyle,
    Pools,
    QAPattern,
    Speakers,
)


@dataclass(frozen=True, slots=True)
class Style:
    """Every phrasing choice for one collection."""

    mode_u: float
    inverted: bool
    qa: QAPattern
    pair_separator: str
    lead_in: str | None
    options: OptionStyle
    cot: CotPattern
    speakers: Speakers
    opener: str
    next_turn_prompt: str
    turn_separator: str
    numbered: NumberedFrame
    numbered_style: NumberedStyle
    inline: InlineFrame
    inversion: str
    example_separator: str


@dataclass
class Cooked:
    """The texts of one collection, the layout of each, and counts for the run's manifest."""

    texts: list[str] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)


def collection_key(seed: int, entries: list[Entry]) -> int:
    """A 64-bit RNG seed from the run seed and the collection's content (length-prefixed, unambiguous)."""
    h = hashlib.blake2b(digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    for e in entries:
        h.update(b"\x01" if e.inherit_from_prev else b"\x00")
        for text in (e.context, *(s for pair in e.pairs for s in pair)):
            raw = text.encode("utf-8", "surrogatepass")
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
        h.update(b"\xff")
    return int.from_bytes(h.digest(), "little")


def draw_style(rng: random.Random, pools: Pools) -> Style:
    """All draws for a collection, in a fixed order (changing the order changes every output)."""
    inv = pools.inversion_weights
    return Style(
        mode_u=rng.random(),
        inverted=rng.random() * (inv["inverted"] + inv["plain"]) < inv["inverted"],
        qa=rng.choice(pools.qa_patterns),
        pair_separator=rng.choice(pools.pair_separators),
        lead_in=rng.choice(pools.lead_ins) if rng.random() < pools.lead_in_probability else None,
        options=OptionStyle(
            header=rng.choice(pools.option_headers),
            item=rng.choice(pools.item_styles),
            delimiter=rng.choice(pools.option_delimiters),
            answer_form=rng.choice(pools.answer_forms),
        ),
        cot=rng.choice(pools.cot_patterns),
        speakers=rng.choice(pools.speakers),
        opener=rng.choice(pools.dialog_openers),
        next_turn_prompt=rng.choice(pools.next_turn_prompts),
        turn_separator=rng.choice(pools.turn_separators),
        numbered=rng.choice(pools.numbered_frames),
        numbered_style=rng.choice(pools.numbered_styles),
        inline=rng.choice(pools.inline_frames),
        inversion=rng.choice(pools.inversion_instructions),
        example_separator=rng.choice(pools.example_separators),
    )


def pick_mode(u: float, weights: dict[str, float]) -> str:
    """The mode whose cumulative share (in `MODES` order) first exceeds `u` in [0, 1)."""
    modes = [m for m in MODES if weights.get(m, 0) > 0]
    total = sum(weights[m] for m in modes)
    acc = 0.0
    for m in modes:
        acc += weights[m] / total
        if u < acc:
            return m
    return modes[-1]


def _dialog(qa: list[tuple[str, str]], style: Style) -> str:
    sp, sep = style.speakers, style.turn_separator
    return sep.join(sp.asker + q + sep + sp.answerer + a for q, a in qa)


def _with_opener(text: str, opener: str) -> str:
    return f"{opener}\n{text}" if opener else text


def render_body(mode: str, qa: list[tuple[str, str]], style: Style) -> str:
    """The pairs of one entry in one layout (without the text)."""
    if mode == "classic":
        p = style.qa
        return style.pair_separator.join(
            p.question.fill({"question": q}) + p.join + p.answer.fill({"answer": a}) for q, a in qa
        )
    if mode == "dialog":
        return _with_opener(_dialog(qa, style), style.opener)
    if mode == "next_turn":
        history = _with_opener(_dialog(qa[:-1], style), style.opener)
        return f"{history}\n\n{style.next_turn_prompt}\n{_dialog(qa[-1:], style)}"
    if mode == "numbered":
        ns = style.numbered_style
        labels = [{"label": lab} for lab in item_labels(ns.labels, len(qa))]
        questions = "\n".join(f"{ns.question.fill(n)} {q}" for n, (q, _) in zip(labels, qa, strict=True))
        answers = "\n".join(f"{ns.answer.fill(n)} {a}" for n, (_, a) in zip(labels, qa, strict=True))
        return f"{style.numbered.questions}\n{questions}\n\n{style.numbered.answers}\n{answers}"
    if mode == "inline":
        frame = style.inline
        parts = [frame.example.fill({"question": q, "answer": a}) for q, a in qa[:-1]]
        q, a = qa[-1]
        parts.append(frame.task.fill({"question": q, "answer": a}))
        return (f"{frame.intro}\n\n" if frame.intro else "") + "\n\n".join(parts)
    raise ValueError(f"unknown layout mode {mode!r}; expected one of {MODES}")


def render_entry(context: str, qa: list[tuple[str, str]], mode: str, style: Style) -> str:
    body = render_body(mode, qa, style)
    if style.inverted:
        return f"{body}\n\n{style.inversion}\n\n{context}"
    if mode == "classic" and style.lead_in:
        return f"{context}\n\n{style.lead_in}\n{body}"
    return f"{context}\n\n{body}"


def _clean(text: str, stats: Counter) -> str:
    text, n = strip_markers(text)
    if n:
        stats["markers_removed"] += n
    return text


def cook_collection(entries: list[Entry], seed: int, pools: Pools) -> Cooked:
    """Render one read collection: one few-shot text per connected segment, raw text for pairless entries."""
    out = Cooked()
    stats = out.stats
    rng = random.Random(collection_key(seed, entries))
    style = draw_style(rng, pools)
    stats["collections"] += 1

    parsed: list[tuple[str, list[Pair]]] = []
    for entry in entries:
        pairs = []
        for q, a in entry.pairs:
            stats["pairs_in"] += 1
            result = parse_pair(_clean(q, stats), _clean(a, stats))
            if isinstance(result, str):
                stats[f"dropped_{result}"] += 1
            else:
                pairs.append(result)
        parsed.append((_clean(entry.context, stats), pairs))

    segments: list[list[int]] = []
    for i, entry in enumerate(entries):
        if i == 0 or not entry.inherit_from_prev:
            segments.append([])
        segments[-1].append(i)

    for segment in segments:
        members = [i for i in segment if parsed[i][1]]
        if members:
            few = min(len(parsed[i][1]) for i in members) < 2
            mode = pick_mode(style.mode_u, pools.few_pair_mode_weights if few else pools.mode_weights)
            layout = mode + ("+inversion" if style.inverted else "")
        placed = False
        for i in segment:
            context, pairs = parsed[i]
            if not pairs:
                if not context.strip():
                    stats["empty_texts_skipped"] += 1
                    continue
                out.texts.append(context)
                out.layouts.append("raw")
                stats["raw_texts"] += 1
                continue
            if placed:
                continue
            rendered = []
            for j in members:
                qa = [render_pair(p, style.options, style.cot, rng) for p in parsed[j][1]]
                rendered.append(render_entry(parsed[j][0], qa, mode, style))
                stats["pairs_out"] += len(qa)
            out.texts.append(style.example_separator.join(rendered))
            out.layouts.append(layout)
            stats[f"layout_{layout}"] += 1
            stats["fewshot_texts"] += 1
            placed = True
    return out
