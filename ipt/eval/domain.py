"""Domain-specific tasks scored the way AdaptLLM / Instruction Pre-Training score them.

The task files (`DomainTask`) are read by `ipt.eval.domain_tasks`; the metrics are in
`ipt.eval.domain_metrics`.

What the reference code does, and what this module copies. The reference is microsoft/LMOps,
`adaptllm/` (the scripts the Instruction Pre-Training README points to for its domain numbers;
`adaptllm/scripts/README.md`: "Evaluate AdaptLLM and Instruction-Pretrain on domain-specific tasks"):

* Option tokenization (`adaptllm/src/dataset_readers/task.py`, `Base_Task.get_answers`: every option
  is `' ' + option`; `adaptllm/src/dataset_readers/inference_dsr.py`, `text_to_instance_choice`):
  the prompt and the option are joined with ONE space and tokenized TOGETHER,
  `encode(input + ' ' + option)`; the prompt alone is tokenized too, `encode(input)`, and only its
  LENGTH is used: the scored (answer) tokens are the joint encoding's tokens after the first
  `len(encode(input))`, conditioned on the joint encoding's first `len(encode(input))` tokens. (With
  SentencePiece the prompt's tokens are almost always a prefix of the joint encoding; on MedQA-en,
  20 of 6365 prompt/option pairs differ at the seam when a question ends in whitespace, which
  `domain_tasks.medqa_task_file` strips.) Both encodings use `add_special_tokens=add_bos_token`,
  i.e. a BOS in front for Llama-family tokenizers; here BOS is prepended explicitly (`add_bos`).
* Multiple-choice decision (`adaptllm/inference.py`, `Inferencer.choice_losses`): per option the
  summed token NLL over the answer tokens divided by their count (the MEAN answer-token NLL), then
  `argmin` (torch's argmin: the first minimum, so ties go to the lowest index).
* Generation (`adaptllm/inference.py`, `completion_losses`; `adaptllm/configs/inference.yaml`):
  greedy (`do_sample=False`), at most `generate_max_len=100` new tokens, stopping once the decoded
  answer contains `'\\n'`, decoded with `skip_special_tokens=True`. The prompt is left-truncated
  (`truncation_side="left"`) to `n_tokens - generate_max_len = 2048 - 100` tokens, BOS kept in front
  (HF adds special tokens after truncating). The metrics then read the first line
  (`qa_utils.normalized_num` splits at `'\\n'`); here every prediction is cut at its first newline
  and stripped.
* Truncation of multiple-choice prompts: AdaptLLM does NOT truncate them (`truncation=False` in
  `text_to_instance_choice`). Here the context is left-truncated (BOS kept) so that context plus
  option fits `max_length`, which only matters for prompts that AdaptLLM would have fed past 2048.
* BOS: `add_bos_token` is a required setting there; `adaptllm/scripts/README.md` sets it False for
  the AdaptLLM (Llama-1) models and True for the Instruction Pre-Training (Llama-3) models.
* Metrics: `ipt.eval.domain_metrics` (AdaptLLM's `adaptllm/src/utils/metric.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Protocol

from ipt.eval.domain_metrics import accuracy, metric_for
from ipt.eval.domain_tasks import MULTIPLE_CHOICE, DomainItem, DomainTask, DomainTaskError, Kind

# ----------------------------------------------------------------------------- the scorer protocol


class ScoreLike(Protocol):
    """What `TokenScorer.loglikelihood` returns per request (`ipt.eval.scorer.Score` fits)."""

    @property
    def logprob(self) -> float: ...  # summed log-probability of the continuation tokens

    @property
    def num_tokens(self) -> int: ...  # number of continuation tokens scored


class TokenScorer(Protocol):
    """A model behind token ids: log-likelihoods of continuations and greedy continuations."""

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Sequence[ScoreLike]:
        """One score per `(context_ids, continuation_ids)`."""
        ...

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Sequence[Sequence[int]]:
        """Greedy new token ids per prompt (eos included when produced)."""
        ...


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class DomainResult:
    """A task's score and its per-item samples (JSON-ready dicts, one JSONL line each)."""

    task: str
    kind: Kind
    metric: str
    score: float
    metrics: dict[str, float]
    num_items: int
    samples: list[dict[str, Any]]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos(tokenizer: Any, add_bos: bool) -> list[int]:
    if not add_bos:
        return []
    if tokenizer.bos_token_id is None:
        raise DomainTaskError("add_bos=True but the tokenizer has no BOS token; pass add_bos=False")
    return [int(tokenizer.bos_token_id)]


def left_truncate(prefix: Sequence[int], body: Sequence[int], budget: int) -> list[int]:
    """`prefix + body` cut from the left to at most `budget` tokens, `prefix` (the BOS) always kept:
    what HF's `truncation_side="left"` does before adding special tokens."""
    keep = budget - len(prefix)
    if keep < 0:
        raise ValueError(f"a budget of {budget} tokens leaves no room for the prompt")
    ids = [*prefix, *body[len(body) - keep :]] if len(body) > keep else [*prefix, *body]
    if not ids:
        raise ValueError("the prompt has no tokens (an empty input needs add_bos=True)")
    return ids


def choose_option(scores: Sequence[ScoreLike]) -> int:
    """The option with the lowest MEAN answer-token NLL, -logprob / num_tokens (AdaptLLM
    `choice_losses`), not the lowest sum, so long options are not penalised for their length; ties
    go to the lowest index (torch.argmin's first minimum)."""
    nlls = [-s.logprob / s.num_tokens for s in scores]
    if any(math.isnan(n) for n in nlls):
        raise ValueError(f"NaN option NLL in {nlls}")
    return min(range(len(nlls)), key=nlls.__getitem__)


def option_requests(
    tokenizer: Any, prompt: str, options: Sequence[str], *, add_bos: bool, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """One `(context, continuation)` per option, AdaptLLM's way: `prompt + ' ' + option` tokenized as
    one text, the continuation being its tokens after `len(encode(prompt))`; the context is
    left-truncated (BOS kept) so context + continuation fits `max_length`."""
    bos = _bos(tokenizer, add_bos)
    prompt_len = len(_encode(tokenizer, prompt))
    requests = []
    for k, option in enumerate(options):
        joint = _encode(tokenizer, f"{prompt} {option}")
        context, continuation = joint[:prompt_len], joint[prompt_len:]
        if not continuation:
            raise ValueError(f"option {k} ({option!r}) adds no tokens after the prompt")
        if max_length - len(continuation) < max(1, len(bos)):
            raise ValueError(
                f"option {k} has {len(continuation)} tokens, too many for max_length={max_length}"
            )
        requests.append((left_truncate(bos, context, max_length - len(continuation)), continuation))
    return requests


def generation_prompt(tokenizer: Any, prompt: str, *, add_bos: bool, budget: int) -> list[int]:
    """The prompt's ids, BOS in front, left-truncated to `budget` = max_length - max_new_tokens."""
    return left_truncate(_bos(tokenizer, add_bos), _encode(tokenizer, prompt), budget)


def first_line(text: str) -> str:
    """A generated answer is its first line, stripped (AdaptLLM stops generating at '\\n')."""
    return text.split("\n", 1)[0].strip()


def _evaluate_choice(
    task: DomainTask,
    items: Sequence[DomainItem],
    scorer: TokenScorer,
    tokenizer: Any,
    add_bos: bool,
    max_length: int,
) -> tuple[list[int], list[dict[str, Any]]]:
    requests: list[tuple[list[int], list[int]]] = []
    for item in items:
        try:
            requests.extend(
                option_requests(tokenizer, item.input, item.options, add_bos=add_bos, max_length=max_length)
            )
        except ValueError as e:
            raise DomainTaskError(f"{task.where(item)}: {e}") from None
    scores = list(scorer.loglikelihood(requests))
    if len(scores) != len(requests):
        raise ValueError(f"the scorer returned {len(scores)} scores for {len(requests)} requests")
    preds, samples, at = [], [], 0
    for index, item in enumerate(items):
        item_scores = scores[at : at + len(item.options)]
        at += len(item.options)
        try:
            pred = choose_option(item_scores)
        except ValueError as e:
            raise DomainTaskError(f"{task.where(item)}: {e}") from None
        preds.append(pred)
        samples.append(
            {
                "index": index,
                "line": item.line,
                **({"extra": dict(item.extra)} if item.extra else {}),
                "input": item.input,
                "options": list(item.options),
                "gold": item.gold_index,
                "prediction": pred,
                "correct": pred == item.gold_index,
                "nll": [-s.logprob / s.num_tokens for s in item_scores],  # mean answer-token NLL
                "num_tokens": [int(s.num_tokens) for s in item_scores],
            }
        )
    return preds, samples


def _evaluate_generation(
    task: DomainTask,
    items: Sequence[DomainItem],
    scorer: TokenScorer,
    tokenizer: Any,
    add_bos: bool,
    max_length: int,
    max_new_tokens: int,
) -> tuple[list[str], list[dict[str, Any]]]:
    prompts = []
    for item in items:
        try:
            prompts.append(
                generation_prompt(tokenizer, item.input, add_bos=add_bos, budget=max_length - max_new_tokens)
            )
        except ValueError as e:
            raise DomainTaskError(f"{task.where(item)}: {e}") from None
    outputs = list(scorer.generate(prompts, max_new_tokens))
    if len(outputs) != len(prompts):
        raise ValueError(f"the scorer returned {len(outputs)} generations for {len(prompts)} prompts")
    preds, samples = [], []
    for index, (item, prompt, new_ids) in enumerate(zip(items, prompts, outputs, strict=True)):
        raw = tokenizer.decode(list(new_ids), skip_special_tokens=True)
        pred = first_line(raw)
        preds.append(pred)
        samples.append(
            {
                "index": index,
                "line": item.line,
                **({"extra": dict(item.extra)} if item.extra else {}),
                "input": item.input,
                "gold": list(item.labels),
                "prediction": pred,
                "raw": raw,
                "prompt_tokens": len(prompt),
                "new_tokens": len(new_ids),
            }
        )
    return preds, samples


def evaluate_domain_task(
    task: DomainTask,
    scorer: TokenScorer,
    tokenizer: Any,
    *,
    add_bos: bool = True,
    max_length: int = 2048,
    max_new_tokens: int = 100,
    limit: int | None = None,
) -> DomainResult:
    """Score a task: multiple choice by the lowest mean answer-token NLL, generation by greedy
    decoding cut at the first newline; `limit` keeps the first items only. The metric comes from
    `metric_for(task)`; multiple-choice results also report plain accuracy."""
    if max_new_tokens < 1 or max_length <= max_new_tokens:
        raise ValueError(f"need 1 <= max_new_tokens < max_length, got {max_new_tokens} and {max_length}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    metric = metric_for(task)
    items = task.items[:limit] if limit is not None else task.items
    if task.kind == MULTIPLE_CHOICE:
        preds, samples = _evaluate_choice(task, items, scorer, tokenizer, add_bos, max_length)
    else:
        preds, samples = _evaluate_generation(
            task, items, scorer, tokenizer, add_bos, max_length, max_new_tokens
        )
    score = metric.compute(task, items, preds)
    metrics = {metric.name: score}
    if task.kind == MULTIPLE_CHOICE:
        metrics.setdefault("acc", accuracy([int(item.gold_index) for item in items], preds))  # type: ignore[arg-type]
    return DomainResult(task.name, task.kind, metric.name, score, metrics, len(items), samples)
