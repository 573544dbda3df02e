"""Metrics of the AdaptLLM domain tasks, and which task is scored with which.

The reference is microsoft/LMOps, `adaptllm/` (the scripts the Instruction Pre-Training README
points to for its domain numbers). Metrics: `adaptllm/src/utils/metric.py`; task -> metric:
`adaptllm/src/dataset_readers/task.py`. See `METRICS` and each metric's docstring. AdaptLLM reports
them x100; here they are fractions.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ipt.eval.domain_tasks import GENERATION, MULTIPLE_CHOICE, DomainItem, DomainTask, DomainTaskError, Kind


def _check_lengths(golds: Sequence[Any], preds: Sequence[Any]) -> None:
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} golds but {len(preds)} predictions")
    if not golds:
        raise ValueError("a metric needs at least one item")


def accuracy(golds: Sequence[int], preds: Sequence[int]) -> float:
    """Fraction of items whose prediction is the gold (AdaptLLM `metric.py: simple_accuracy`)."""
    _check_lengths(golds, preds)
    return float(np.mean(np.asarray(golds) == np.asarray(preds)))


def _per_label_counts(golds: Sequence[Any], preds: Sequence[Any]) -> tuple[np.ndarray, ...]:
    """tp, fp, fn and support per label over the labels seen in golds or preds (sklearn's set)."""
    g, p = np.asarray(golds), np.asarray(preds)
    labels = sorted(set(g.tolist()) | set(p.tolist()))
    tp = np.array([np.sum((g == c) & (p == c)) for c in labels], dtype=np.float64)
    fp = np.array([np.sum((g != c) & (p == c)) for c in labels], dtype=np.float64)
    fn = np.array([np.sum((g == c) & (p != c)) for c in labels], dtype=np.float64)
    return tp, fp, fn, tp + fn


def micro_f1(golds: Sequence[int], preds: Sequence[int]) -> float:
    """sklearn `f1_score(average='micro')` (AdaptLLM `metric.py`, ChemProt and RCT): F1 of the pooled
    counts, 2·ΣTP / (2·ΣTP + ΣFP + ΣFN); for single-label classification this equals accuracy."""
    _check_lengths(golds, preds)
    tp, fp, fn, _ = _per_label_counts(golds, preds)
    denom = 2 * tp.sum() + fp.sum() + fn.sum()
    return float(2 * tp.sum() / denom) if denom else 0.0


def weighted_f1(golds: Sequence[Any], preds: Sequence[Any]) -> float:
    """sklearn `f1_score(average='weighted')` (AdaptLLM `metric.py`, FPB and FiQA-SA): each label's F1,
    2·TP / (2·TP + FP + FN) (0 when undefined, sklearn's zero_division), weighted by the label's
    count among the golds."""
    _check_lengths(golds, preds)
    tp, fp, fn, support = _per_label_counts(golds, preds)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float((f1 * support).sum() / support.sum())


def headline_f1(golds: Sequence[int], preds: Sequence[int], class_ids: Sequence[Any]) -> float:
    """Headline (AdaptLLM `metric.py: compute_headline`): each headline is asked several yes/no
    questions, each question type a `class_id` (9 in the test set); the weighted F1 is computed
    per class_id and the 9 are averaged with equal weight. AdaptLLM divides by the fixed 9; here by
    the number of class_ids present, which is the same on the full test set and stays defined on
    a subset."""
    _check_lengths(golds, preds)
    if len(class_ids) != len(golds):
        raise ValueError(f"{len(golds)} golds but {len(class_ids)} class ids")
    groups: dict[Any, tuple[list, list]] = {}
    for c, g, p in zip(class_ids, golds, preds, strict=True):
        groups.setdefault(c, ([], []))
        groups[c][0].append(g)
        groups[c][1].append(p)
    return float(np.mean([weighted_f1(g, p) for g, p in groups.values()]))


_NER_PATTERN = re.compile(r"([^\s]+[\s]+)(\([^\s]+\))", re.IGNORECASE)


def parse_ner_entities(text: str) -> list[tuple[str, str]]:
    """AdaptLLM's `qa_utils.parse_ner`: every `word (type)` in the text, as (word, type), deduplicated
    in order. Only the single whitespace-free word before `(type)` is the entity's text, one
    trailing whitespace character cut off; entities carry no position (nereval start 0)."""
    out: list[tuple[str, str]] = []
    for word, kind in _NER_PATTERN.findall(text):
        entity = (word[:-1] if len(word) > 1 else "", kind[1:-1] if len(kind) > 2 else "")
        if entity not in out:
            out.append(entity)
    return out


def _nereval_f1(true: Sequence[tuple[str, str]], pred: Sequence[tuple[str, str]]) -> float:
    """jantrienes/nereval `evaluate([true], [pred])` (`nereval.py`) with every start at 0.

    For each gold entity, the first predicted entity matching its text or its type counts one per
    matching axis (text: same text at the same start; type: same type with overlapping text, which
    with start 0 means both texts non-empty); precision = correct / (2·#pred), recall =
    correct / (2·#gold), each 0 when its denominator is 0."""
    correct = 0
    for t_text, t_type in true:
        for p_text, p_type in pred:
            text_match = t_text == p_text
            type_match = t_type == p_type and bool(t_text) and bool(p_text)
            correct += int(text_match) + int(type_match)
            if text_match or type_match:
                break
    precision = correct / (2 * len(pred)) if pred else 0.0
    recall = correct / (2 * len(true)) if true else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def ner_entity_f1(golds: Sequence[str], preds: Sequence[str]) -> float:
    """Finance NER (AdaptLLM `metric.py: compute_ner`): entity-level F1 of `parse_ner_entities(gold)`
    against `parse_ner_entities(prediction)` per item (nereval's MUC-style text+type F1, see
    `_nereval_f1`), averaged over items."""
    _check_lengths(golds, preds)
    scores = [
        _nereval_f1(parse_ner_entities(g), parse_ner_entities(p)) for g, p in zip(golds, preds, strict=True)
    ]
    return float(np.mean(scores))


_NUMBER_PATTERN = re.compile(r"[-+]?[.]?[\d]+(?:,\d\d\d)*[\.]?\d*(?:[eE][-+]?\d+)?[%]*")


def _number_value(match: str) -> float:
    """AdaptLLM's `eval_num`: drop commas, each `%` divides by 100, Python-literal value; anything
    Python would not parse (e.g. `007`, a leading zero) becomes inf. `ast.literal_eval` plus the
    divisions gives what their `eval` gives, without evaluating arbitrary text."""
    body = match.replace(",", "")
    stripped = body.rstrip("%")
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        return math.inf
    for _ in range(len(body) - len(stripped)):
        value = value / 100
    return float(value)


def extract_numbers(text: str) -> list[float]:
    """AdaptLLM's `qa_utils.normalized_num`: the numbers in the text's first line, in order."""
    return [_number_value(m) for m in _NUMBER_PATTERN.findall(text.split("\n")[0].strip())]


def convfinqa_match(golds: Sequence[str], preds: Sequence[str]) -> float:
    """ConvFinQA (AdaptLLM `metric.py: compute_ConvFinQA`): an item is right when ANY number in the
    prediction's first line is within 0.01 (`math.isclose(pred, gold, abs_tol=1e-2)`) of the FIRST
    number in the gold answer; "25%" reads as 0.25 and "1,234" as 1234. Fraction right."""
    _check_lengths(golds, preds)
    right = 0
    for gold, pred in zip(golds, preds, strict=True):
        gold_numbers, pred_numbers = extract_numbers(gold), extract_numbers(pred)
        if gold_numbers and any(math.isclose(p, gold_numbers[0], abs_tol=1e-2) for p in pred_numbers):
            right += 1
    return right / len(golds)


def exact_match(golds: Sequence[Sequence[str]], preds: Sequence[str]) -> float:
    """Default for generation tasks AdaptLLM does not name: the stripped prediction equals any
    stripped gold label (no normalisation beyond whitespace)."""
    _check_lengths(golds, preds)
    return float(np.mean([p.strip() in {g.strip() for g in gs} for gs, p in zip(golds, preds, strict=True)]))


@dataclasses.dataclass(frozen=True)
class DomainMetric:
    """How a task is scored: `compute(task, items, predictions)` -> a fraction in [0, 1]."""

    name: str
    kind: Kind
    compute: Callable[[DomainTask, Sequence[DomainItem], Sequence[Any]], float]
    source: str


def _golds(items: Sequence[DomainItem]) -> list[int]:
    return [int(item.gold_index) for item in items]  # type: ignore[arg-type]


def _first_labels(items: Sequence[DomainItem]) -> list[str]:
    return [item.labels[0] for item in items]  # AdaptLLM scores NER and ConvFinQA against label[0]


def _headline(task: DomainTask, items: Sequence[DomainItem], preds: Sequence[Any]) -> float:
    missing = next((item for item in items if "class_id" not in item.extra), None)
    if missing is not None:
        raise DomainTaskError(f"{task.where(missing)}: missing field `class_id` (Headline's question type)")
    return headline_f1(_golds(items), preds, [item.extra["class_id"] for item in items])


_ACC = DomainMetric(
    "acc", MULTIPLE_CHOICE, lambda t, items, preds: accuracy(_golds(items), preds), "AdaptLLM metric 'acc'"
)
_MICRO_F1 = DomainMetric(
    "micro_f1", MULTIPLE_CHOICE, lambda t, items, preds: micro_f1(_golds(items), preds), "AdaptLLM 'micro_F1'"
)
_WEIGHTED_F1 = DomainMetric(
    "weighted_f1",
    MULTIPLE_CHOICE,
    lambda t, items, preds: weighted_f1(_golds(items), preds),
    "AdaptLLM 'weighted_F1'",
)
_EXACT_MATCH = DomainMetric(
    "exact_match",
    GENERATION,
    lambda t, items, preds: exact_match([item.labels for item in items], preds),
    "this module's default for generation",
)

# Task name -> metric, from adaptllm/src/dataset_readers/task.py (`self.metric` of each task class).
METRICS: dict[str, DomainMetric] = {
    # biomedicine
    "pubmedqa": _ACC,  # PubMedQA: metric "acc" (3 options: no / maybe / yes)
    "chemprot": _MICRO_F1,  # ChemProt: "micro_F1" (13 relation labels)
    "mqp": _ACC,  # MQP: "acc" (2 options)
    "rct": _MICRO_F1,  # RCT: "micro_F1" (5 section labels)
    "usmle": _ACC,  # USMLE: "acc" (4 options in AdaptLLM's file)
    "medqa_en": _ACC,  # MedQA-en test (the 5-option USMLE questions): accuracy, as USMLE
    # finance
    "fpb": _WEIGHTED_F1,  # FPB: "weighted_F1" (3 sentiments)
    "fiqa_sa": _WEIGHTED_F1,  # FiQA_SA: "weighted_F1" (3 sentiments)
    "headline": DomainMetric(
        "headline_weighted_f1", MULTIPLE_CHOICE, _headline, "AdaptLLM 'Headline' (compute_headline)"
    ),
    "ner": DomainMetric(
        "entity_f1",
        GENERATION,
        lambda t, items, preds: ner_entity_f1(_first_labels(items), preds),
        "AdaptLLM 'NER' (compute_ner, nereval)",
    ),
    "convfinqa": DomainMetric(
        "convfinqa_em",
        GENERATION,
        lambda t, items, preds: convfinqa_match(_first_labels(items), preds),
        "AdaptLLM 'ConvFinQA' (compute_ConvFinQA)",
    ),
}


def metric_for(task: DomainTask) -> DomainMetric:
    """The task's metric by name (case and `-`/`_` ignored); unknown names get accuracy (multiple
    choice) or exact match (generation). A known name on the wrong kind of file is an error."""
    metric = METRICS.get(task.name.lower().replace("-", "_"))
    if metric is None:
        return _ACC if task.kind == MULTIPLE_CHOICE else _EXACT_MATCH
    if metric.kind != task.kind:
        raise DomainTaskError(
            f"{task.path or task.name}: task {task.name!r} is scored with {metric.name}, which needs "
            f"{metric.kind.replace('_', ' ')} items, but the file holds {task.kind.replace('_', ' ')} items"
        )
    return metric
