"""Multi-round (M-shot) synthesis chains (PAPER.md section 3).

The texts of one chunk are cut into M contiguous rounds of ceil(n/M). Chain i holds text i of
every round. In round r, text i is synthesized with the connected tail of chain i as few-shot
examples: the earlier entries joined by `inherit_from_prev`, each written as reading part +
pairs + `</s>`, with the current reading part last. A link breaks when the previous entry
produced no pair, or when examples plus the current reading part would not fit in
`budget` tokens (= max_model_len - max_new_tokens, counted with the real tokenizer); then the
text is synthesized zero-shot. Each round is one engine call, so the engine can batch it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ipt.collection import Entry
from ipt.synth import format as wire
from ipt.synth.engines import Engine, Sampling


@dataclass
class _Tail:
    """The connected end of a chain: examples usable as context for its next entry."""

    examples: list[str] = field(default_factory=list)
    tokens: int = 0


def round_ranges(n: int, rounds: int) -> list[range]:
    """Indices of each round: M contiguous slices of ceil(n/M) texts (the last may be shorter)."""
    size = math.ceil(n / rounds) if n else 0
    return [range(r * size, min(n, (r + 1) * size)) for r in range(rounds) if r * size < n]


def synthesize_chains(
    texts: Sequence[str],
    rounds: int,
    engine: Engine,
    sampling: Sampling,
    budget: int,
    stats: Counter,
    on_round: Callable[[int, int, int, int], None] | None = None,
) -> list[list[Entry]]:
    """Synthesize `texts` in `rounds` rounds; return one chain (list of entries) per text of round 0.

    `stats` gains: texts, pairs, zero_pair_texts, parse_failures, duplicate_questions,
    truncated_generations, prompt_tokens, generated_tokens, inherited_entries,
    chains_broken_by_zero_pairs, chains_broken_by_length. `on_round(texts, pairs, prompt_tokens,
    generated_tokens)` is called after each round (for progress display).
    """
    ranges = round_ranges(len(texts), rounds)
    chains: list[list[Entry]] = [[] for _ in ranges[0]] if ranges else []
    tails = [_Tail() for _ in chains]
    for r, indices in enumerate(ranges):
        readings = [wire.reading_part(texts[j]) for j in indices]
        reading_tokens = engine.count_tokens(readings)
        prompts, with_context, prompt_tokens = [], [], []
        for i, (reading, n_read) in enumerate(zip(readings, reading_tokens, strict=True)):
            tail = tails[i]
            use = bool(tail.examples) and tail.tokens + n_read <= budget
            if r > 0 and not tail.examples:
                stats["chains_broken_by_zero_pairs"] += 1
            elif tail.examples and not use:
                stats["chains_broken_by_length"] += 1
            prompts.append("".join(tail.examples) + reading if use else reading)
            with_context.append(use)
            prompt_tokens.append(tail.tokens + n_read if use else n_read)  # exact: pieces split at <s>
        generations = engine.generate(prompts, sampling)
        new_examples = []
        round_pairs = 0
        for i, (j, gen) in enumerate(zip(indices, generations, strict=True)):
            parsed = wire.parse(gen.text)
            pairs = tuple((p["Q"], p["A"]) for p in parsed.pairs)
            entry = Entry(texts[j], pairs, inherit_from_prev=with_context[i] and bool(pairs))
            if chains[i]:
                chains[i][-1] = replace(chains[i][-1], followed_by_next=entry.inherit_from_prev)
            chains[i].append(entry)
            stats["texts"] += 1
            stats["pairs"] += len(parsed.pairs)
            stats["zero_pair_texts"] += not parsed.pairs
            stats["parse_failures"] += parsed.malformed
            stats["duplicate_questions"] += parsed.duplicates
            stats["truncated_generations"] += parsed.truncated
            stats["prompt_tokens"] += prompt_tokens[i]
            stats["generated_tokens"] += gen.generated_tokens
            stats["inherited_entries"] += entry.inherit_from_prev
            round_pairs += len(parsed.pairs)
            new_examples.append(wire.example(entry.context, parsed.pairs) if parsed.pairs else "")
        example_tokens = engine.count_tokens([e for e in new_examples if e])
        counts = iter(example_tokens)
        for i, ex in enumerate(new_examples):
            entry = chains[i][-1]
            if not ex:
                tails[i] = _Tail()
            elif entry.inherit_from_prev:
                tails[i].examples.append(ex)
                tails[i].tokens += next(counts)
            else:
                tails[i] = _Tail([ex], next(counts))
        if on_round is not None:
            on_round(
                len(indices),
                round_pairs,
                sum(prompt_tokens),
                sum(g.generated_tokens for g in generations),
            )
    return chains
