"""Metrics that move before accuracy does: bits-per-byte on held-out text, centered accuracy.

Bits-per-byte divides the summed negative log-likelihood (in bits) of every token of a document
after its first by the UTF-8 bytes of the document's text, so models with different tokenizers
compare on one scale. Documents longer than `max_length` are scored in disjoint windows (each
token predicted once), exactly as lm-eval's rolling log-likelihood. Centered accuracy rescales
accuracy so chance is 0 and perfect is 1, `(acc - chance) / (1 - chance)`, and CORE averages it
over tasks (DCLM, Li et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader
from lm_eval import utils as lm_utils

from ipt.data.records import decode_record, read_manifest, shard_paths
from ipt.eval.rows import window
from ipt.eval.scorer import Scorer


def read_documents(directory: str | Path, limit: int | None = None) -> tuple[list[np.ndarray], Any]:
    """The first `limit` documents of a shard directory (token ids), in record order, and its manifest."""
    manifest = read_manifest(directory)
    docs: list[np.ndarray] = []
    for path in shard_paths(directory, manifest):
        reader = ArrayRecordReader(str(path))
        try:
            for i in range(reader.num_records()):
                if limit is not None and len(docs) >= limit:
                    return docs, manifest
                docs.append(decode_record(reader.read([i])[0], manifest.dtype, manifest.has_loss_mask)[0])
        finally:
            reader.close()
    return docs, manifest


def bits_per_byte(
    scorer: Scorer, tokenizer: Any, directory: str | Path, limit: int | None = None
) -> dict[str, float]:
    """Bits per UTF-8 byte over the documents of one tokenized source (see the module docstring)."""
    docs, _ = read_documents(directory, limit)
    windows, num_bytes = [], 0
    for ids in docs:
        ids = [int(t) for t in ids]
        if len(ids) < 2:
            continue
        num_bytes += len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
        for ctx, cont in map(
            lm_utils.make_disjoint_window,
            lm_utils.get_rolling_token_windows(ids[1:], ids[0], scorer.cfg.max_length, context_len=1),
        ):
            windows.append(window(ctx, cont, scorer.cfg.max_length))
    scores = scorer.score_windows(windows)
    nll = -sum(s.logprob for s in scores)
    tokens = sum(s.num_tokens for s in scores)
    return {
        "bits_per_byte": nll / math.log(2) / max(num_bytes, 1),
        "loss": nll / max(tokens, 1),
        "tokens": float(tokens),
        "bytes": float(num_bytes),
        "documents": float(len(docs)),
    }


def centered_accuracy(accuracy: float, chance: float) -> float:
    return (accuracy - chance) / (1.0 - chance)


def task_chance(samples: Sequence[Mapping[str, Any]]) -> float:
    """Expected accuracy of a uniform guess: the mean over documents of 1 / number of choices."""
    return float(np.mean([1.0 / len(s["arguments"]) for s in samples])) if samples else float("nan")


def _accuracy_key(metrics: Mapping[str, Any]) -> str | None:
    return next((k for k in ("acc_norm,none", "acc,none") if isinstance(metrics.get(k), int | float)), None)


def core_units(
    results: Mapping[str, Mapping[str, Any]],
    group_subtasks: Mapping[str, Sequence[str]],
    chance: Mapping[str, float],
    num_docs: Mapping[str, int],
) -> dict[str, float]:
    """The units CORE averages, with their chance level: a group that reports its own accuracy
    (MMLU) counts once, with its tasks' chance weighted by documents; a group that does not (`paper`)
    is replaced by its members; a task counts when it is multiple choice (has a chance level)."""
    members = {t for subs in group_subtasks.values() for t in subs}
    units: dict[str, float] = {}

    def leaves(name: str) -> list[str]:
        subs = group_subtasks.get(name)
        return [leaf for s in subs for leaf in leaves(s)] if subs else [name]

    def visit(name: str) -> None:
        if name in group_subtasks and _accuracy_key(results.get(name, {})) is None:
            for sub in group_subtasks[name]:
                visit(sub)
            return
        parts = [t for t in leaves(name) if t in chance]
        if parts and _accuracy_key(results.get(name, {})) is not None:
            weights = [num_docs.get(t, 1) for t in parts]
            units[name] = float(np.average([chance[t] for t in parts], weights=weights))

    for name in results:
        if name not in members:
            visit(name)
    return units


def core_table(
    results: Mapping[str, Mapping[str, Any]], units: Mapping[str, float]
) -> tuple[dict[str, dict[str, Any]], float]:
    """Per unit (see `core_units`): the metric used (acc_norm where the task has it, else acc),
    accuracy, chance and centered accuracy; and CORE, their mean."""
    rows: dict[str, dict[str, Any]] = {}
    for name, chance in units.items():
        key = _accuracy_key(results[name])
        acc = float(results[name][key])
        rows[name] = {
            "metric": key.split(",")[0],
            "accuracy": acc,
            "chance": chance,
            "centered": centered_accuracy(acc, chance),
        }
    core = float(np.mean([r["centered"] for r in rows.values()])) if rows else float("nan")
    return rows, core
