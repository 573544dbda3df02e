"""Chain semantics of multi-round synthesis, with a scripted engine (the only fake: the LM)."""

from __future__ import annotations

from collections import Counter

import pytest

from ipt.synth import format as wire
from ipt.synth.engines import Generation, Sampling, TokenCounter
from ipt.synth.rounds import round_ranges, synthesize_chains


class ScriptedEngine(TokenCounter):
    """Answers each prompt with the output prepared for its last text; records every call."""

    def __init__(self, tokenizer, outputs: dict[str, str]) -> None:
        super().__init__(tokenizer)
        self.outputs = outputs
        self.max_model_len = 4096
        self.calls: list[list[str]] = []

    def generate(self, prompts, sampling):
        self.calls.append(list(prompts))
        counts = self.count_tokens(prompts)
        return [
            Generation(self.outputs[wire.last_reading_text(p)], n, 7)
            for p, n in zip(prompts, counts, strict=True)
        ]

    def close(self):
        pass


@pytest.fixture(scope="module")
def tokenizer(mistral_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(mistral_tokenizer_dir)


def pairs(*qs: str) -> list[dict]:
    return [{"Q": q, "A": f"answer to {q}"} for q in qs]


TEXTS = [f"Text number {i} is about topic {i}." for i in range(9)]
PAIRS = {
    0: pairs("q0a", "q0b"),
    1: [],
    2: pairs("q2"),
    3: pairs("q3"),
    4: pairs("q4"),
    5: [],
    6: pairs("q6"),
    7: pairs("q7"),
    8: pairs("q8"),
}
GARBAGE = {1: "I cannot find any question here", 5: "<QUE> unfinished question <ANS> and no end"}


def outputs() -> dict[str, str]:
    return {TEXTS[i]: GARBAGE.get(i) or wire.format_pairs(p) for i, p in PAIRS.items()}


def test_round_ranges_cut_contiguous_rounds_of_ceil_n_over_m():
    assert round_ranges(9, 3) == [range(0, 3), range(3, 6), range(6, 9)]
    assert round_ranges(10, 3) == [range(0, 4), range(4, 8), range(8, 10)]
    assert round_ranges(3, 2) == [range(0, 2), range(2, 3)]
    assert round_ranges(1, 3) == [range(0, 1)]
    assert round_ranges(0, 2) == []


def test_three_rounds_context_links_and_collections(tokenizer):
    engine = ScriptedEngine(tokenizer, outputs())
    stats = Counter()
    chains = synthesize_chains(TEXTS, 3, engine, Sampling(), budget=4096 - 400, stats=stats)

    # one generate call per round, in order
    assert len(engine.calls) == 3
    ex = {i: wire.example(TEXTS[i], PAIRS[i]) for i in PAIRS if PAIRS[i]}
    read = {i: wire.reading_part(t) for i, t in enumerate(TEXTS)}
    assert engine.calls[0] == [read[0], read[1], read[2]]
    # round 1: chain 0 sees text 0; chain 1's text 1 gave no pair (link broken); chain 2 sees text 2
    assert engine.calls[1] == [ex[0] + read[3], read[4], ex[2] + read[5]]
    # round 2: chain 0 sees its whole connected tail; chain 1 restarts from text 4; chain 2 broke at text 5
    assert engine.calls[2] == [ex[0] + ex[3] + read[6], ex[4] + read[7], read[8]]

    def entry(i, inherit, followed):
        return {
            "context": TEXTS[i],
            "QA_list": PAIRS[i],
            "inherit_from_prev": inherit,
            "followed_by_next": followed,
        }

    assert [[e.to_json() for e in c] for c in chains] == [
        [entry(0, False, True), entry(3, True, True), entry(6, True, False)],
        [entry(1, False, False), entry(4, False, True), entry(7, True, False)],
        # text 5 was synthesized with text 2 as context but produced no pair: not inherited
        [entry(2, False, False), entry(5, False, False), entry(8, False, False)],
    ]
    assert stats["texts"] == 9
    assert stats["pairs"] == 8
    assert stats["zero_pair_texts"] == 2
    assert stats["chains_broken_by_zero_pairs"] == 2  # text 4 and text 8 started over
    assert stats["chains_broken_by_length"] == 0
    assert stats["inherited_entries"] == 3
    assert stats["truncated_generations"] == 2  # texts 1 and 5: output without a final </END>
    assert stats["generated_tokens"] == 9 * 7
    assert stats["prompt_tokens"] == sum(
        len(tokenizer(p, add_special_tokens=False)["input_ids"]) for c in engine.calls for p in c
    )


def test_length_guard_counts_real_tokens_and_breaks_the_link(tokenizer):
    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    ex0, ex3 = wire.example(TEXTS[0], PAIRS[0]), wire.example(TEXTS[3], PAIRS[3])
    need = count(ex0 + ex3 + wire.reading_part(TEXTS[6]))
    assert need == count(ex0) + count(ex3) + count(wire.reading_part(TEXTS[6]))

    exact = ScriptedEngine(tokenizer, outputs())
    synthesize_chains(TEXTS, 3, exact, Sampling(), budget=need, stats=Counter())
    assert exact.calls[2][0] == ex0 + ex3 + wire.reading_part(TEXTS[6])  # fits exactly: used

    short = ScriptedEngine(tokenizer, outputs())
    stats = Counter()
    chains = synthesize_chains(TEXTS, 3, short, Sampling(), budget=need - 1, stats=stats)
    assert short.calls[1][0] == ex0 + wire.reading_part(TEXTS[3])  # round 1 still fits
    assert short.calls[2][0] == wire.reading_part(TEXTS[6])  # zero-shot: the link breaks
    assert stats["chains_broken_by_length"] == 1
    c0 = chains[0]
    assert [e.inherit_from_prev for e in c0] == [False, True, False]
    assert [e.followed_by_next for e in c0] == [True, False, False]


def test_a_zero_shot_entry_with_pairs_starts_a_new_tail(tokenizer):
    # text 3 is zero-shot (budget too small for text 0 + text 3) but has a pair: text 6 then
    # sees text 3 alone, and links to it
    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    budget = count(wire.example(TEXTS[3], PAIRS[3]) + wire.reading_part(TEXTS[6]))
    assert count(wire.example(TEXTS[0], PAIRS[0]) + wire.reading_part(TEXTS[3])) > budget
    engine = ScriptedEngine(tokenizer, outputs())
    chains = synthesize_chains(TEXTS, 3, engine, Sampling(), budget=budget, stats=Counter())
    assert engine.calls[2][0] == wire.example(TEXTS[3], PAIRS[3]) + wire.reading_part(TEXTS[6])
    assert [(e.inherit_from_prev, e.followed_by_next) for e in chains[0]] == [
        (False, False),
        (False, True),
        (True, False),
    ]


def test_uneven_last_round_leaves_short_chains(tokenizer):
    texts = TEXTS[:5]  # rounds of 2: [0,1] [2,3] [4]
    engine = ScriptedEngine(tokenizer, outputs())
    chains = synthesize_chains(texts, 3, engine, Sampling(), budget=3696, stats=Counter())
    assert [[e.context for e in c] for c in chains] == [[texts[0], texts[2], texts[4]], [texts[1], texts[3]]]
    assert [len(c) for c in engine.calls] == [2, 2, 1]
