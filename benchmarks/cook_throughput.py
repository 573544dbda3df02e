"""Is cooking ever the bottleneck? `ipt cook` vs `ipt tokenize` in tokens per CPU-second, same text.

Collections are built from the built-in corpus with synthetic pairs (ipt.cook.synthetic: free-
form, multiple choice and chain of thought, 1-6 pairs per text, 2 linked texts per collection
as with M=2). Candidate: `ipt cook` (one process) on those collections, counted in tokens of
the text it writes (Mistral v1 tokenizer, counted once outside the timing). Baseline: `ipt
tokenize` (one worker) on the cooked .jsonl with the same tokenizer. Both are charged their CPU
time (this process plus finished children), so the figure is per core and the 2-core shared
machine's noise in wall time does not enter the ratio; wall-clock rates are printed too. A
third figure, the bare `tokenizers` encode_batch (one thread) on the same texts, is the floor
of any tokenize implementation. Runs alternate A B A B after a warm-up; medians are reported;
the last line is the ratio cook / tokenize.

    python benchmarks/cook_throughput.py [--repeats 3] [--copies 8]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from ipt.cook.run import CookConfig, cook
from ipt.cook.synthetic import synthetic_collections
from ipt.data.tokenize import TokenizeConfig, tokenize
from ipt.data.tokenizer import load_tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "ipt" / "assets" / "corpus.jsonl.gz"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (worker pools)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn()
    return cpu_seconds() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, after one warm-up")
    parser.add_argument("--copies", type=int, default=8, help="passes over the corpus (new pairs each)")
    args = parser.parse_args()

    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    work = Path(tempfile.mkdtemp(prefix="ipt-cook-bench-"))
    try:
        collections = work / "collections.jsonl"
        n_collections = 0
        with open(collections, "w", encoding="utf-8") as f:
            for copy in range(args.copies):
                for c in synthetic_collections(texts, seed=copy, per_collection=2):
                    f.write(json.dumps(c) + "\n")
                    n_collections += 1

        tok = load_tokenizer("mistral-v1")
        backend = tok.backend_tokenizer

        def run_cook() -> None:
            out = work / "cooked"
            shutil.rmtree(out, ignore_errors=True)
            cook(CookConfig(input=str(collections), output_dir=str(out), seed=0))

        run_cook()
        lines = (work / "cooked" / "collections.jsonl").read_text(encoding="utf-8").splitlines()
        cooked = [json.loads(line)["text"] for line in lines]
        tokens = sum(len(e.ids) for e in backend.encode_batch(cooked, add_special_tokens=False))
        chars = sum(map(len, cooked))
        print(
            f"input: {n_collections} collections -> {len(cooked)} texts, {chars / 1e6:.1f}M chars, "
            f"{tokens / 1e6:.2f}M Mistral-v1 tokens (without bos/eos)"
        )

        def run_tokenize() -> None:
            out = work / "tokens"
            shutil.rmtree(out, ignore_errors=True)
            tokenize(
                TokenizeConfig(
                    input=str(work / "cooked" / "collections.jsonl"),
                    output_dir=str(out),
                    tokenizer="mistral-v1",
                    num_workers=1,
                    progress=False,
                )
            )

        def run_encode() -> None:
            backend.encode_batch(cooked, add_special_tokens=False)

        runs = {"ipt cook": run_cook, "ipt tokenize": run_tokenize, "encode_batch": run_encode}
        for fn in runs.values():  # warm-up
            fn()
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        wall: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                c, w = timed(fn)
                cpu[name].append(c)
                wall[name].append(w)

        rate = {}
        for name in runs:
            rate[name] = tokens / statistics.median(cpu[name])
            print(
                f"{name:<13} median CPU {statistics.median(cpu[name]):6.2f} s -> {rate[name] / 1e6:6.2f}M tokens/CPU-s; "
                f"median wall {statistics.median(wall[name]):6.2f} s -> "
                f"{tokens / statistics.median(wall[name]) / 1e6:6.2f}M tokens/s"
            )
        print(f"ratio cook / bare encode_batch (per core): {rate['ipt cook'] / rate['encode_batch']:.2f}")
        print(f"ratio cook / ipt tokenize (per core): {rate['ipt cook'] / rate['ipt tokenize']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
