"""One synthesized pair -> its parts (stem, options, rationale, final answer) -> rendered strings.

The synthesizer writes three question styles (PAPER.md section 2): free-form; multiple choice
(`Q\\nOptions:\\n- opt1\\n- opt2`, the answer being one option's text); and chain of thought
(`Q\\nLet's think step by step.`, answered `RATIONALE\\nTherefore, the answer is FINAL`).
Parsing keeps the parts so a layout can re-render them; a pair that cannot be parsed is
dropped with a reason, never emitted half-formed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ipt.cook.pools import CotPattern, ItemStyle, OptionDelimiter, Template
from ipt.synth import format as wire

# Matched without the surrounding whitespace the synthesizer writes, so stray spacing still parses.
COT_SUFFIX = wire.COT_TRIGGER.strip()
COT_SPLIT = wire.COT_ANSWER.strip()
_WIRE_MARKERS = (wire.CON_OPEN, wire.CON_CLOSE, wire.QUE, wire.ANS, wire.END, wire.BOS, wire.EOS)
MARKERS = re.compile(r"[ \t]*(?:" + "|".join(map(re.escape, _WIRE_MARKERS)) + r")[ \t]*")
_MARKER_HINT = re.compile(r"</?(?:CON|QUE|ANS|END|s)>")


@dataclass(frozen=True, slots=True)
class Pair:
    """A parsed pair. For multiple choice, `answer` is the original option text."""

    question: str
    answer: str
    options: tuple[str, ...] | None = None
    answer_index: int | None = None
    rationale: str | None = None


@dataclass(frozen=True, slots=True)
class OptionStyle:
    header: str
    item: ItemStyle
    delimiter: OptionDelimiter
    answer_form: Template


def strip_markers(text: str) -> tuple[str, int]:
    """Remove wire-format markers (`<CON>`, `<QUE>`, `<s>`, ...); returns the text and how many."""
    if "<" not in text or not _MARKER_HINT.search(text):
        return text, 0
    cleaned, n = MARKERS.subn(" ", text)
    return cleaned.strip(), n


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold().rstrip(".").strip()


def parse_pair(question: str, answer: str) -> Pair | str:
    """A `Pair`, or the reason it is dropped: `empty`, `cot_unsplit` or `mc_no_match`."""
    question, answer = question.strip(), answer.strip()
    rationale = None
    is_cot = question.endswith(COT_SUFFIX) or COT_SPLIT in answer
    if is_cot:
        if question.endswith(COT_SUFFIX):
            question = question[: -len(COT_SUFFIX)].strip()
        head, sep, tail = answer.rpartition(COT_SPLIT)
        rationale = head.strip().removesuffix(".").strip()
        answer = tail.strip().lstrip(":").strip().removesuffix(".").strip()
        if not sep or not rationale or not answer:
            return "cot_unsplit"
    if not question or not answer:
        return "empty"
    if wire.OPTIONS_HEADER not in question:
        return Pair(question, answer, rationale=rationale)
    stem, _, block = question.partition(wire.OPTIONS_HEADER)
    stem = stem.strip()
    options: list[str] = []
    seen: set[str] = set()
    for opt in block.split(wire.OPTION_SEP):
        opt = opt.strip()
        if opt and _norm(opt) not in seen:
            seen.add(_norm(opt))
            options.append(opt)
    if not stem or not options:
        return "empty"
    target = _norm(answer)
    index = next((i for i, opt in enumerate(options) if _norm(opt) == target), None)
    if index is None:
        return "mc_no_match"
    return Pair(stem, options[index], tuple(options), index, rationale)


_ROMAN = (
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
)


def _roman(n: int) -> str:
    out = []
    for value, numeral in _ROMAN:
        count, n = divmod(n, value)
        out.append(numeral * count)
    return "".join(out)


def item_labels(kind: str, n: int) -> list[str]:
    """The first `n` labels of a naming scheme; letters fall back to numbers past 26 items."""
    if kind in ("letters", "lower") and n > 26:
        kind = "numbers"
    if kind == "letters":
        return [chr(ord("A") + i) for i in range(n)]
    if kind == "lower":
        return [chr(ord("a") + i) for i in range(n)]
    if kind == "roman":
        return [_roman(i + 1) for i in range(n)]
    if kind == "lower_roman":
        return [_roman(i + 1).lower() for i in range(n)]
    return [str(i + 1) for i in range(n)]


def render_options(pair: Pair, style: OptionStyle, rng: random.Random) -> tuple[str, str]:
    """(question with shuffled, labelled options; answer naming the option that holds the answer)."""
    assert pair.options is not None and pair.answer_index is not None
    order = list(range(len(pair.options)))
    rng.shuffle(order)
    labels = item_labels(style.item.labels, len(order))
    items = [
        style.item.format.fill({"label": label}) + " " + pair.options[j]
        for label, j in zip(labels, order, strict=True)
    ]
    pos = order.index(pair.answer_index)
    delim = style.delimiter
    question = (
        pair.question + delim.after_stem + style.header + delim.after_header + delim.between.join(items)
    )
    return question, style.answer_form.fill({"label": labels[pos], "item": items[pos]})


def render_pair(pair: Pair, options: OptionStyle, cot: CotPattern, rng: random.Random) -> tuple[str, str]:
    """The question and answer strings of one pair, before any layout wraps them."""
    if pair.options is not None:
        question, answer = render_options(pair, options, rng)
    else:
        question, answer = pair.question, pair.answer
    if pair.rationale is None:
        return question, answer
    return (
        cot.question.fill({"question": question}),
        cot.answer.fill({"rationale": pair.rationale, "answer": answer}),
    )
