"""Held-out response loss: how well a model predicts the answers of pairs synthesized from unseen text.

Each entry of the held-out read collections (one text and its instruction-response pairs) is
written out in two formats:

* `cooked`: exactly the text `ipt cook` renders for it as a one-entry collection (the same seed,
  template pools and draws, through `ipt.cook.render`): the format the instruction-augmented model
  trained on;
* `plain`: `TEXT`, a blank line, then `Q: QUESTION` / `A: ANSWER` pairs separated by blank lines: a
  format neither model saw.

Both keep only the pairs `ipt cook` keeps (those `parse_pair` accepts), so they score the same pairs.
A text is tokenized as `ipt tokenize` tokenizes a document (BOS in front, the `tokenizers` backend,
markup in the text never becomes a control token), and its answer tokens are marked by the rule of
a `{text, train}` loss mask (`ipt.data.shard_writer.token_mask`: a token counts when it covers any
character of an answer). Each answer's tokens are scored given every token before them, left-truncated
to `max_length`. The result is the mean negative log-likelihood per answer token, in nats.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ipt.collection import Entry, iter_collections
from ipt.cook.pairs import Pair, parse_pair, render_pair, strip_markers
from ipt.cook.pools import Pools, default_pools
from ipt.cook.render import collection_key, draw_style, pick_mode, render_entry
from ipt.data.readers import expand_inputs
from ipt.data.shard_writer import Segments, token_mask
from ipt.eval.rows import Request, window
from ipt.eval.scorer import Scorer

FORMATS = ("cooked", "plain")
_SENTINEL = "\x00answer\x00"


@dataclass(frozen=True, slots=True)
class AnsweredText:
    """A text and the character spans `[start, end)` of its answers, in order."""

    text: str
    answers: tuple[tuple[int, int], ...]


def kept_pairs(entry: Entry) -> list[tuple[str, str, Pair]]:
    """(question, answer, parsed pair) for each pair `ipt cook` keeps, markers stripped as cook does."""
    kept = []
    for q, a in entry.pairs:
        question, answer = strip_markers(q)[0], strip_markers(a)[0]
        parsed = parse_pair(question, answer)
        if not isinstance(parsed, str):
            kept.append((question.strip(), answer.strip(), parsed))
    return kept


def _locate(render, qa: list[tuple[str, str]]) -> AnsweredText:
    """`render(qa)` with each answer's span found by rendering it once more with a sentinel answer."""
    text = render(qa)
    spans = []
    for k, (question, answer) in enumerate(qa):
        marked = render([*qa[:k], (question, _SENTINEL), *qa[k + 1 :]])
        start = marked.find(_SENTINEL)
        rebuilt = marked[:start] + answer + marked[start + len(_SENTINEL) :]
        if marked.count(_SENTINEL) != 1 or rebuilt != text:
            raise ValueError(f"the layout does not place answer {k} exactly once: {text[:120]!r}")
        spans.append((start, start + len(answer)))
    return AnsweredText(text, tuple(spans))


def cooked_text(entry: Entry, seed: int, pools: Pools) -> AnsweredText | None:
    """The entry as `ipt cook` renders a one-entry collection (the draws of `cook_collection`, in its
    order), with its answers' spans; None when no pair is kept."""
    single = [Entry(entry.context, entry.pairs)]
    rng = random.Random(collection_key(seed, single))
    style = draw_style(rng, pools)
    pairs = [p for _, _, p in kept_pairs(entry)]
    if not pairs:
        return None
    weights = pools.few_pair_mode_weights if len(pairs) < 2 else pools.mode_weights
    mode = pick_mode(style.mode_u, weights)
    qa = [render_pair(p, style.options, style.cot, rng) for p in pairs]
    context = strip_markers(entry.context)[0]
    return _locate(lambda rendered: render_entry(context, rendered, mode, style), qa)


def plain_text(entry: Entry) -> AnsweredText | None:
    """`TEXT\\n\\nQ: question\\nA: answer\\n\\nQ: ...` over the kept pairs; None when none is kept."""
    qa = [(q, a) for q, a, _ in kept_pairs(entry)]
    if not qa:
        return None
    context = strip_markers(entry.context)[0]
    return _locate(lambda pairs: "\n\n".join([context, *(f"Q: {q}\nA: {a}" for q, a in pairs)]), qa)


def read_entries(inputs: str | Sequence[str]) -> list[Entry]:
    """Every entry of every read collection in the input files (globs allowed), in order."""
    entries = [e for path in expand_inputs(inputs) for _, chain in iter_collections(path) for e in chain]
    if not entries:
        raise ValueError(f"response_loss={inputs}: the files hold no read-collection entries")
    return entries


def answer_requests(
    example: AnsweredText, encoder: Any, bos_id: int | None, max_length: int
) -> list[Request]:
    """One scoring window per run of answer tokens: the answer given every token before it (runs
    longer than half of `max_length` go in pieces, so each answer token is predicted exactly once)."""
    enc = encoder.encode(example.text, add_special_tokens=False)
    bounds = sorted({0, len(example.text), *(i for span in example.answers for i in span)})
    in_answer = [any(s <= lo < e for s, e in example.answers) for lo in bounds[:-1]]
    segments = Segments(ends=np.array(bounds[1:], np.int64), train=np.array(in_answer, bool))
    mask = token_mask(np.array(enc.offsets, np.int64).reshape(-1, 2), len(example.text), segments)
    head = [] if bos_id is None else [bos_id]
    ids, mask = head + list(enc.ids), np.concatenate([np.zeros(len(head), np.uint8), mask])
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]]))).reshape(-1, 2)
    piece = max(1, max_length // 2)  # a longer answer is scored in pieces, each token once
    return [
        window(ids[:at], ids[at : min(at + piece, stop)], max_length)
        for start, stop in edges
        for at in range(int(start), int(stop), piece)
    ]


def backend_encoder(tokenizer: Any) -> Any:
    """The tokenizer's `tokenizers` backend as `ipt tokenize` uses it (markup stays text)."""
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    encoder.encode_special_tokens = True
    return encoder


def response_loss(
    scorer: Scorer, tokenizer: Any, entries: Sequence[Entry], seed: int = 0, pools: Pools | None = None
) -> dict[str, dict[str, float]]:
    """Per format: the mean answer-token NLL (`loss`), answer tokens, answers and texts scored."""
    pools = default_pools() if pools is None else pools
    encoder, bos = backend_encoder(tokenizer), tokenizer.bos_token_id
    out = {}
    for name in FORMATS:
        texts = [cooked_text(e, seed, pools) if name == "cooked" else plain_text(e) for e in entries]
        texts = [t for t in texts if t is not None]
        requests = [r for t in texts for r in answer_requests(t, encoder, bos, scorer.cfg.max_length)]
        scores = scorer.score_windows(requests)
        tokens = sum(s.num_tokens for s in scores)
        out[name] = {
            "loss": -sum(s.logprob for s in scores) / max(tokens, 1),
            "tokens": float(tokens),
            "answers": float(sum(len(t.answers) for t in texts)),
            "texts": float(len(texts)),
        }
    return out
