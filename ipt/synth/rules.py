"""The rule-based reading-comprehension miner: pairs mined from a text with patterns, no LM.

This is the paper's rule-based ablation (PAPER.md section 7, after "Adapting LLMs to domains
via reading comprehension") and ipt's CPU synthesizer. It answers the same prompts as the LM
engines and writes its pairs in the synthesizer's wire format, so the same parser and chain
code run on its output. Task types, each mined only where its pattern is found:
- summary: the lead sentence as a one-sentence summary;
- keywords (word-to-text): write a sentence using given frequent domain words;
- definition: "X is a/an/the ..." -> "What is X?";
- relation (NLI-style, multiple choice): how a sentence opening with a connective
  ("Therefore", "However", "For example", "In addition", ...) relates to the one before;
- conclusion (chain of thought): what follows from a sentence, answered by the one after
  "Therefore/Thus/Hence/As a result";
- reason: "X because Y" -> the reason for X;
- example: a statement and the "For example, ..." sentence that illustrates it;
- completion: the second half of a sentence;
- cloze (multiple choice): the keyword that fills a blank.
Everything is drawn from a random generator seeded by the text's hash: deterministic.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence

from ipt.synth import format as wire
from ipt.synth.engines import Generation, Sampling, TokenCounter

RESULT = ("Therefore", "Thus", "Hence", "As a result", "Consequently", "So")
CONTRAST = ("However", "But", "In contrast", "On the other hand", "Nevertheless", "Instead")
EXAMPLE = ("For example", "For instance")
ADDITION = ("In addition", "Also", "Moreover", "Furthermore", "Additionally")
RELATIONS = {
    "it is a consequence of the first": RESULT,
    "it contrasts with the first": CONTRAST,
    "it gives an example of the first": EXAMPLE,
    "it adds information to the first": ADDITION,
}
STOPWORDS = frozenset(
    """a about above after again against all also an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having here how if in into is it its itself just may might more most must no nor not now of off
    on once only or other our out over own same should so some such than that the their them then there
    these they this those through to too under until up used uses using very was we were what when where
    which while who whom why will with would you your one two example following instead however therefore
    thus hence many much often well like also see provides provide allows allow following make makes
    given takes take need needs called useful""".split()  # noqa: SIM905
)
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z\"'(])")
_PRONOUNS = frozenset({"It", "This", "That", "They", "These", "Those", "He", "She", "Its", "Their"})
_LIST_ITEM = re.compile(r"\s[*\-•]\s|\s#\.(?:\s|$)")  # bullets glued into the flattened text
_MARKUP = re.compile(r"[#*|`<>{}\[\]=]|>>>")
_PROSE = re.compile(r"[^\W\d_]|\s")  # letters and spaces
_WORD = re.compile(r"(?<![\w.])[A-Za-z][a-z\-]{3,}(?![\w(])")
_DEFINITION = re.compile(r"^((?:[A-Z][\w.\-]*|[\w.\-]+)(?: [\w.\-]+){0,4}) (is|are) (an?|the) \w")


def sentences(text: str) -> list[str]:
    """Sentences of `text` fit to quote: prose, 6 to 60 words, not leading into code or lists."""
    flat = " ".join(text.split())
    out = []
    for block in _LIST_ITEM.split(flat):
        for s in _SENTENCE_END.split(block):
            s = s.strip()
            words = s.split()
            if not 6 <= len(words) <= 60 or s[-1] not in ".!?" or _MARKUP.search(s):
                continue
            if len(_PROSE.findall(s)) < 0.85 * len(s):
                continue
            if s.count("(") != s.count(")") or s.count('"') % 2:  # a fragment of a larger aside
                continue
            out.append(s)
    return out


def keywords(text: str, n: int) -> list[str]:
    """The `n` most frequent content words (ties: first seen first), lower-cased."""
    counts = Counter(w.lower() for w in _WORD.findall(text) if w.lower() not in STOPWORDS)
    out: list[str] = []
    stems: set[str] = set()
    for w, _ in counts.most_common():
        stem = w.removesuffix("s")
        if stem not in stems:  # "application" and "applications" are one keyword
            stems.add(stem)
            out.append(w)
        if len(out) == n:
            break
    return out


def _strip_connective(sentence: str, connectives: Sequence[str]) -> str | None:
    for c in connectives:
        if sentence.startswith(c + ",") or (c in ("But", "So") and sentence.startswith(c + " ")):
            rest = sentence[len(c) :].lstrip(", ")
            return rest[:1].upper() + rest[1:] if rest else None
    return None


def _summary(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    lead = [s for s in sents if s.split()[0] not in _PRONOUNS]  # "It does ..." cannot stand alone
    return [("In one sentence, what is this text about?", lead[0])] if lead else []


def _keywords(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    top = keywords(text, 8)
    for s in sents:
        used = [w for w in top if re.search(rf"\b{re.escape(w)}\b", s, re.IGNORECASE)]
        if len(used) >= 3:
            return [(f"Write a sentence that uses these words: {', '.join(used[:3])}.", s)]
    return []


def _definition(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for s in sents:
        m = _DEFINITION.match(s)
        if m and m.group(1).split()[0].lower() not in {"this", "it", "there", "that", "here"}:
            subject, verb = m.group(1), m.group(2)
            first = subject.split()[0]
            if first in ("A", "An", "The") or (first.istitle() and first.lower() in text):
                subject = subject[0].lower() + subject[1:]
            out.append((f"What {verb} {subject}?", s))
    return out[:1]


def _relation(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    for prev, s in itertools.pairwise(sents):
        for label, connectives in RELATIONS.items():
            rest = _strip_connective(s, connectives)
            if rest:
                options = list(RELATIONS)
                question = (
                    f'First sentence: "{prev}"\nSecond sentence: "{rest}"\n'
                    "How does the second sentence relate to the first?"
                )
                return [(wire.multiple_choice(question, options), label)]
    return []


def _conclusion(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    for prev, s in itertools.pairwise(sents):
        rest = _strip_connective(s, RESULT)
        if rest:
            premise = _strip_connective(prev, (*RESULT, *CONTRAST, *EXAMPLE, *ADDITION)) or prev
            q, a = wire.chain_of_thought(
                f'The text states: "{premise}" What does the text conclude from this?',
                f"The text first says that {premise[0].lower() + premise[1:]} It draws a conclusion from that.",
                rest,
            )
            return [(q, a)]
    return []


def _reason(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    for s in sents:
        head, sep, tail = s.partition(" because ")
        if sep and len(head.split()) >= 4 and len(tail.split()) >= 3:
            return [
                (
                    f'According to the text, why is the following true: "{head.rstrip(",")}"?',
                    f"Because {tail}",
                )
            ]
    return []


def _example(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    for prev, s in itertools.pairwise(sents):
        rest = _strip_connective(s, EXAMPLE)
        if rest:
            return [(f'Give an example from the text for this statement: "{prev}"', rest)]
    return []


def _completion(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    long = [s for s in sents if len(s.split()) >= 12]
    if not long:
        return []
    words = rng.choice(long).split()
    cut = len(words) // 2
    return [(f'Complete the sentence from the text: "{" ".join(words[:cut])} ..."', " ".join(words[cut:]))]


def _cloze(sents: list[str], text: str, rng: random.Random) -> list[tuple[str, str]]:
    top = keywords(text, 6)
    if len(top) < 4:
        return []
    for s in rng.sample(sents, len(sents)):
        for w in top:
            pattern = re.compile(rf"\b{re.escape(w)}\b", re.IGNORECASE)
            if len(pattern.findall(s)) == 1:
                options = [w, *rng.sample([o for o in top if o != w], 3)]
                rng.shuffle(options)
                blanked = pattern.sub("____", s)
                return [(wire.multiple_choice(f'Which word fills the blank? "{blanked}"', options), w)]
    return []


TASKS: dict[str, Callable[[list[str], str, random.Random], list[tuple[str, str]]]] = {
    "summary": _summary,
    "keywords": _keywords,
    "definition": _definition,
    "relation": _relation,
    "conclusion": _conclusion,
    "reason": _reason,
    "example": _example,
    "completion": _completion,
    "cloze": _cloze,
}


def candidates(text: str) -> list[tuple[str, str, str]]:
    """Every (task type, question, answer) the patterns find in `text`, in task order."""
    rng = random.Random(hashlib.sha256(text.encode("utf-8")).digest())
    sents = sentences(text)
    return [(name, q, a) for name, task in TASKS.items() for q, a in task(sents, text, rng)]


def mine(text: str, max_pairs: int = 5) -> list[wire.Pair]:
    """Up to `max_pairs` of the candidates, drawn deterministically from the text's hash."""
    found = candidates(text)
    rng = random.Random(hashlib.sha256(b"pick" + text.encode("utf-8")).digest())
    keep = sorted(rng.sample(range(len(found)), min(max_pairs, len(found))))
    return [{"Q": found[i][1], "A": found[i][2]} for i in keep]


class RulesEngine(TokenCounter):
    """The miner behind the engine interface; it reads the last reading part of each prompt."""

    def __init__(
        self, tokenizer: str = "mistral-v1", *, max_model_len: int = 4096, max_pairs: int = 5
    ) -> None:
        from ipt.data.tokenizer import load_tokenizer

        super().__init__(load_tokenizer(tokenizer))
        self.max_model_len = max_model_len
        self.max_pairs = max_pairs

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        texts = [wire.format_pairs(mine(wire.last_reading_text(p), self.max_pairs)) for p in prompts]
        return [Generation(t, None, n) for t, n in zip(texts, self.count_tokens(texts), strict=True)]

    def close(self) -> None:
        pass
