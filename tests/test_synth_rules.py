"""The rule-based miner: task types, determinism, grounding in the text, and the wire format path."""

from __future__ import annotations

from collections import Counter

from ipt.synth import format as wire
from ipt.synth.engines import Sampling
from ipt.synth.rules import RulesEngine, candidates, mine, sentences

TEXT = (
    "A generator is a function that returns an iterator over a sequence of values. "
    "Generators compute their values lazily, one at a time, when the caller asks for them. "
    "Therefore, a generator can describe a very long sequence without holding it in memory. "
    "However, a generator can be iterated over only once by its caller. "
    "For example, calling list on an exhausted generator returns an empty list of values. "
    "The interpreter suspends the generator function because every yield expression hands back one value."
)


def by_task(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    for task, q, a in candidates(text):
        out.setdefault(task, (q, a))
    return out


def test_each_task_type_on_a_crafted_text():
    found = by_task(TEXT)
    assert found["summary"] == (
        "In one sentence, what is this text about?",
        "A generator is a function that returns an iterator over a sequence of values.",
    )
    assert found["definition"] == (
        "What is a generator?",
        "A generator is a function that returns an iterator over a sequence of values.",
    )
    q, a = found["relation"]
    assert q.startswith('First sentence: "Generators compute their values lazily')
    assert 'Second sentence: "A generator can describe a very long sequence' in q  # "Therefore, " removed
    assert "\nOptions:\n- it is a consequence of the first\n- it contrasts with the first\n" in q
    assert a == "it is a consequence of the first"
    q, a = found["conclusion"]
    assert q.endswith("What does the text conclude from this?\nLet's think step by step.")
    assert a.endswith(
        "\nTherefore, the answer is A generator can describe a very long sequence without holding it in memory."
    )
    assert found["example"] == (
        'Give an example from the text for this statement: "However, a generator can be iterated over only once by its caller."',
        "Calling list on an exhausted generator returns an empty list of values.",
    )
    assert found["reason"] == (
        'According to the text, why is the following true: "The interpreter suspends the generator function"?',
        "Because every yield expression hands back one value.",
    )
    q, a = found["keywords"]
    assert q.startswith("Write a sentence that uses these words: ") and "generator" in q
    q, a = found["cloze"]
    options = q.split("\nOptions:\n- ")[1].split("\n- ")
    assert a in options and len(options) == 4 and "____" in q
    q, a = found["completion"]
    sentence = q.split('"')[1].removesuffix(" ...") + " " + a
    assert sentence in sentences(TEXT)


def test_mining_is_deterministic_and_capped(corpus_docs):
    for doc in corpus_docs[:50]:
        first = mine(doc["text"], max_pairs=5)
        assert first == mine(doc["text"], max_pairs=5)
        assert len(first) <= 5
        assert len({p["Q"].lower() for p in first}) == len(first)


def test_on_the_builtin_corpus_pairs_are_grounded_and_diverse(corpus_docs):
    tasks = Counter()
    per_text = []
    for doc in corpus_docs[:300]:
        flat = " ".join(doc["text"].split())
        found = candidates(doc["text"])
        tasks.update({t for t, _, _ in found})
        per_text.append(len(mine(doc["text"])))
        for task, q, a in found:
            assert q.strip() and a.strip()
            if task in ("summary", "keywords", "definition"):
                assert a in flat  # a quoted sentence of the text
            if "\nOptions:\n- " in q and task == "cloze":
                assert a in q.split("\nOptions:\n- ")[1].split("\n- ")
    assert len([t for t, n in tasks.items() if n >= 5]) >= 7
    assert sum(per_text) / len(per_text) >= 3.5


def test_engine_writes_the_wire_format_and_the_parser_reads_it_back(mistral_tokenizer_dir, corpus_docs):
    engine = RulesEngine(str(mistral_tokenizer_dir))
    texts = [d["text"].strip() for d in corpus_docs[:20]]
    prompts = [wire.prompt(t, [(texts[0], mine(texts[0]))]) for t in texts]
    gens = engine.generate(prompts, Sampling())
    for text, gen in zip(texts, gens, strict=True):
        parsed = wire.parse(gen.text)
        assert parsed.pairs == mine(text)  # mined from the last reading part, not the example
        assert (parsed.malformed, parsed.duplicates, parsed.truncated) == (0, 0, False)
        assert gen.prompt_tokens is None  # the chains count prompt tokens themselves
        assert gen.generated_tokens == engine.count_tokens([gen.text])[0]
