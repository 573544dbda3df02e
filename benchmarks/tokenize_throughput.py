"""Tokens/s of `ipt tokenize` end to end vs raw `tokenizers` encode_batch on the same texts.

Candidate: `ipt.data.tokenize.tokenize` into a fresh directory: tokenizer load, worker spawn,
reading and parsing the .jsonl, tokenizing, writing ArrayRecord shards, sha256, manifest.
Baseline: the same texts already in memory, cut into the same chunks, sent to an already
started pool of the same number of processes, each running `encode_batch_fast` (the fastest
raw call, no offsets) in the same batch size, single-threaded like ipt's workers; nothing is
written. Both rates count the text's tokens (without bos/eos). Runs alternate A B A B after
a warm-up of each; medians are reported and the last line is the ratio ipt / raw. Each run
also reports tokens per CPU-second (this process + its finished children; the raw pool is
started per run and its startup is counted in CPU but not in wall time), which other jobs on a
shared machine disturb much less than wall-clock time.

    python benchmarks/tokenize_throughput.py [--repeat 40] [--workers N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "ipt" / "assets" / "corpus.jsonl.gz"
_tok = None


def _init(tokenizer_json: str) -> None:
    global _tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _tok = Tokenizer.from_str(tokenizer_json)
    _tok.encode_special_tokens = True


def _encode_chunk(texts: list[str]) -> int:
    from ipt.data.shard_writer import BATCH_DOCS

    n = 0
    for start in range(0, len(texts), BATCH_DOCS):
        n += sum(
            len(e.ids)
            for e in _tok.encode_batch_fast(texts[start : start + BATCH_DOCS], add_special_tokens=False)
        )
    return n


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def chunks(texts: list[str], shard_chars: int) -> list[list[str]]:
    """The same cut as ipt tokenize: close a chunk at the first document after shard_chars."""
    out, cur, chars = [], [], 0
    for t in texts:
        cur.append(t)
        chars += len(t)
        if chars >= shard_chars:
            out.append(cur)
            cur, chars = [], 0
    return out + ([cur] if cur else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40, help="copies of the built-in corpus (1.5 MB each)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--shard-chars", type=int, default=1_500_000)
    parser.add_argument("--tokenizer", default="mistral-v1")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from ipt.data.tokenize import TokenizeConfig, tokenize
    from ipt.data.tokenizer import load_tokenizer

    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f] * args.repeat
    work = Path(tempfile.mkdtemp(prefix="ipt-tokbench-"))
    src = work / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    print(
        f"{len(docs):,} docs, {src.stat().st_size / 1e6:.1f} MB, {args.workers} processes, tokenizer {args.tokenizer}"
    )

    tokenizer_json = load_tokenizer(args.tokenizer).backend_tokenizer.to_str()
    ctx = multiprocessing.get_context("spawn")
    pieces = chunks(docs, args.shard_chars)

    def raw() -> tuple[float, int]:
        with ctx.Pool(args.workers, initializer=_init, initargs=(tokenizer_json,)) as pool:
            pool.map(_encode_chunk, [["warm"]] * args.workers, chunksize=1)
            t = time.perf_counter()
            n = sum(pool.map(_encode_chunk, pieces, chunksize=1))
            elapsed = time.perf_counter() - t
            pool.close()
            pool.join()
        return elapsed, n

    def ipt(i: int) -> tuple[float, int]:
        out = work / f"out-{i}"
        cfg = TokenizeConfig(
            input=str(src),
            output_dir=str(out),
            tokenizer=args.tokenizer,
            shard_chars=args.shard_chars,
            num_workers=args.workers,
            progress=False,
        )
        t = time.perf_counter()
        manifest = tokenize(cfg)
        elapsed = time.perf_counter() - t
        shutil.rmtree(out)
        return elapsed, manifest.num_tokens - manifest.num_docs * (
            int(manifest.add_bos) + int(manifest.add_eos)
        )

    rates: dict[str, list[float]] = {"ipt": [], "raw": []}
    per_cpu: dict[str, list[float]] = {"ipt": [], "raw": []}
    for i in range(args.reps + 1):
        for name, fn in (("ipt", lambda i=i: ipt(i)), ("raw", raw)):
            cpu = cpu_seconds()
            elapsed, n_tokens = fn()
            cpu = cpu_seconds() - cpu
            print(
                f"{'warm-up' if i == 0 else f'rep {i}'} {name}: {n_tokens:,} tokens in {elapsed:.2f} s = "
                f"{n_tokens / elapsed:,.0f} tokens/s; {cpu:.1f} CPU-s = {n_tokens / cpu:,.0f} tokens/CPU-s"
            )
            if i:
                rates[name].append(n_tokens / elapsed)
                per_cpu[name].append(n_tokens / cpu)
    shutil.rmtree(work)
    med = {k: statistics.median(v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v) for k, v in per_cpu.items()}
    print(f"median tokens/CPU-s: ipt tokenize {med_cpu['ipt']:,.0f}, raw encode_batch {med_cpu['raw']:,.0f}")
    print(f"ratio ipt/raw tokens/CPU-s: {med_cpu['ipt'] / med_cpu['raw']:.3f}")
    print(f"median tokens/s: ipt tokenize {med['ipt']:,.0f}, raw encode_batch {med['raw']:,.0f}")
    print(f"ratio ipt/raw tokens/s: {med['ipt'] / med['raw']:.3f}")


if __name__ == "__main__":
    main()
