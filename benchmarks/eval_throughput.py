"""Evaluation throughput: the `ipt` lm-eval model against lm-eval's own `hf` model, same weights.

    python benchmarks/eval_throughput.py [--limit 100] [--repeats 3] [--batch 16]

Both run `lm_eval.simple_evaluate` zero-shot on the same real items (`--limit` documents each of
ARC-Easy, PIQA and HellaSwag from the offline paper tasks), with the same tiny Mistral (the
`tiny` preset, random weights, float32): ipt's through `ipt.eval` (packed bucketed rows, one
program per bucket), transformers' through lm-eval's `hf` model (batches of `--batch`, padded to
the longest). The ipt side is one process on this CPU's one device; torch uses its default
threads. Each side is warmed up once (compiles, caches), then the two alternate `--repeats`
times; medians are reported. Last line: ipt / hf log-likelihood requests per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_offline, "1")

TASKS = ["paper_arc_easy", "paper_piqa", "paper_hellaswag"]


def build_models(root: Path) -> tuple[Path, Path, Path]:
    """The tiny preset with random weights, as an ipt model directory and as an HF export."""
    from ipt.data.tokenizer import builtin_tokenizer_dir
    from ipt.model import create_model, load_model_config
    from ipt.model.hf import export_hf, model_params
    from ipt.model.store import save_model_dir

    tok = builtin_tokenizer_dir("mistral-v1")
    config = load_model_config("tiny")
    params = model_params(create_model(config, seed=0))
    save_model_dir(root / "ipt", config, params)
    export_hf(config, params, root / "hf", dtype="float32", tokenizer_dir=tok)
    return root / "ipt", root / "hf", tok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    import lm_eval
    import torch

    from ipt.eval.run import EvalConfig, build_lm, task_manager

    root = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    ipt_dir, hf_dir, tok = build_models(root)
    manager = task_manager(None, TASKS)
    common = dict(tasks=TASKS, limit=args.limit, task_manager=manager, bootstrap_iters=0, log_samples=False)
    ours = build_lm(
        EvalConfig(model=str(ipt_dir), tokenizer=str(tok), max_length=args.max_length, batch_rows=args.batch)
    )
    hf_args = {"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu", "max_length": args.max_length}
    theirs = lm_eval.api.registry.get_model("hf").create_from_arg_obj(hf_args, {"batch_size": args.batch})

    def timed(lm) -> tuple[float, dict]:
        t = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, **common)
        return time.perf_counter() - t, out["results"]

    timed(ours)
    timed(theirs)
    a, b = [], []
    for _ in range(args.repeats):
        a.append(timed(ours))
        b.append(timed(theirs))
    requests = sum(task_requests(manager, task, args.limit) for task in TASKS)
    med_a, med_b = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
    print(f"tasks {', '.join(TASKS)}; {args.limit} documents each = {requests} log-likelihood requests")
    print(
        f"model: tiny preset (random weights, f32), max_length {args.max_length}, torch threads {torch.get_num_threads()}"
    )
    for task in TASKS:
        ra, rb = a[-1][1][task], b[-1][1][task]
        print(f"  {task}: acc ipt {ra['acc,none']:.4f} hf {rb['acc,none']:.4f}")
    print(
        f"ipt model  (batch_rows {args.batch})  median {med_a:7.2f} s -> {requests / med_a:8.1f} requests/s"
    )
    print(
        f"hf model   (batch_size {args.batch})  median {med_b:7.2f} s -> {requests / med_b:8.1f} requests/s"
    )
    print(f"ratio ipt / hf (requests/s): {med_b / med_a:.3f}")
    sys.stdout.flush()


def task_requests(manager, task: str, limit: int) -> int:
    """Log-likelihood requests of one task's first `limit` documents (one per choice)."""
    loaded = manager.load_task_or_group([task])[task]
    docs = list(loaded.eval_docs)[:limit]
    return sum(len(loaded.doc_to_choice(doc)) for doc in docs)


if __name__ == "__main__":
    main()
