"""The instruction synthesizer's wire format: prompt strings and the parser of its outputs.

The released synthesizer was fine-tuned on exactly these strings, so every space matters
(PAPER.md section 2). `<CON>`, `</CON>`, `<QUE>`, `<ANS>`, `</END>` are plain text; `<s>` and
`</s>` are the model's own BOS/EOS written literally, so prompts are tokenized without adding
special tokens. This module is the one home of the wire constants: cooking imports them to
recognise question styles and strip markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

BOS = "<s>"
EOS = "</s>"
CON_OPEN = "<CON>"
CON_CLOSE = "</CON>"
QUE = "<QUE>"
ANS = "<ANS>"
END = "</END>"
PAIR_SEP = "\n\n"
COT_TRIGGER = "\nLet's think step by step."
COT_ANSWER = "\nTherefore, the answer is "
OPTION_SEP = "\n- "
OPTIONS_HEADER = "\nOptions:" + OPTION_SEP

Pair = dict[str, str]


def reading_part(text: str) -> str:
    """`<s> <CON> TEXT </CON>\\n\\n`: what the synthesizer reads before writing pairs."""
    return f"{BOS} {CON_OPEN} {text} {CON_CLOSE}{PAIR_SEP}"


def format_pair(question: str, answer: str) -> str:
    return f"{QUE} {question} {ANS} {answer} {END}"


def format_pairs(pairs: Sequence[Pair]) -> str:
    """Pairs as the synthesizer writes them: each `<QUE> Q <ANS> A </END>`, joined by a blank line."""
    return PAIR_SEP.join(format_pair(p["Q"], p["A"]) for p in pairs)


def example(text: str, pairs: Sequence[Pair]) -> str:
    """One few-shot example: reading part + pairs + `</s>`."""
    return reading_part(text) + format_pairs(pairs) + EOS


def prompt(text: str, examples: Sequence[tuple[str, Sequence[Pair]]] = ()) -> str:
    """Earlier (text, pairs) examples in order, then the reading part of `text` last."""
    return "".join(example(t, p) for t, p in examples) + reading_part(text)


def multiple_choice(question: str, options: Sequence[str]) -> str:
    """The synthesizer's multiple-choice question: `Q\\nOptions:\\n- opt1\\n- opt2 ...`."""
    return question + OPTIONS_HEADER + OPTION_SEP.join(options)


def chain_of_thought(question: str, rationale: str, final: str) -> tuple[str, str]:
    """(question ending with the CoT trigger, `RATIONALE\\nTherefore, the answer is FINAL`)."""
    return question + COT_TRIGGER, rationale + COT_ANSWER + final


def last_reading_text(prompt_text: str) -> str:
    """The TEXT of the last reading part of a prompt (what an engine is asked about)."""
    head = f"{BOS} {CON_OPEN} "
    tail = f" {CON_CLOSE}{PAIR_SEP}"
    start = prompt_text.rfind(head)
    if start < 0 or not prompt_text.endswith(tail):
        raise ValueError(f"not a synthesizer prompt (expected ...{head!r}TEXT{tail!r} at its end)")
    return prompt_text[start + len(head) : len(prompt_text) - len(tail)]


@dataclass
class Parsed:
    """Pairs parsed from one generation, with counts of what was dropped and why."""

    pairs: list[Pair] = field(default_factory=list)
    truncated: bool = False  # the generation did not end with </END>; its last piece was dropped
    malformed: int = 0  # pieces that are not `<QUE> Q <ANS> A` with a non-empty answer
    duplicates: int = 0  # questions already asked (compared case-insensitively)


def parse(generation: str) -> Parsed:
    """Parse a generation into pairs exactly as the reference pipeline does (PAPER.md section 2)."""
    out = Parsed()
    pieces = generation.split(END)
    if not generation.endswith(END):
        out.truncated = bool(pieces[-1].strip())
        pieces = pieces[:-1]
    else:
        pieces = pieces[:-1]  # the empty remainder after the final </END>
    seen: set[str] = set()
    for piece in pieces:
        parts = piece.split(ANS)
        question = parts[0].strip()
        if len(parts) != 2 or not question.startswith(QUE) or not parts[1].strip():
            out.malformed += 1
            continue
        question = question[len(QUE) :].strip()
        if question.lower() in seen:
            out.duplicates += 1
            continue
        seen.add(question.lower())
        out.pairs.append({"Q": question, "A": parts[1].strip()})
    return out
