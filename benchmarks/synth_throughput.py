"""Synthesis throughput: the rules engine per core, and vLLM (CPU build) against the hf engine.

    python benchmarks/synth_throughput.py rules [--repeats 3] [--copies 2]
        Candidate: `synthesize_chains` with the rules engine (M=2) over the built-in corpus
        repeated `--copies` times: mining, wire format, parsing, chains and the real-token length
        guard. Baseline: tokenizing the same texts' reading parts once (Mistral v1, no special
        tokens), the floor that every engine pays for the length guard. Both are charged this
        process's CPU time, so the figures are per core. Last line: rules / tokenize texts per CPU-s.

    <vllm venv>/bin/python benchmarks/synth_throughput.py vllm-vs-hf [--repeats 3] [--prompts 32]
        Run with the venv built by .ci/vllm.sh. The same tiny random Mistral (ipt.synth.tiny, f32)
        and the same reading-part prompts, greedy, `--new-tokens` each: VLLMEngine (one generate
        call, continuous batching) against HFEngine (all prompts in one left-padded batch). Both
        compute on one thread (vLLM's CPU worker takes one core and sets one torch thread; the
        hf engine is set to one thread too, as two threads on a shared 2-core machine measured
        5-8x slower). Wall time, engine start-up excluded. Last line: vllm / hf generated tokens/s.

Trials alternate candidate and baseline after a warm-up; medians are reported.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from ipt.synth import format as wire
from ipt.synth.engines import Sampling

CORPUS = Path(__file__).resolve().parents[1] / "ipt" / "assets" / "corpus.jsonl.gz"


def corpus_texts() -> list[str]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"].strip() for line in f]


def cpu_seconds() -> float:
    return time.process_time()


def bench_rules(args: argparse.Namespace) -> None:
    from ipt.synth.rounds import synthesize_chains
    from ipt.synth.rules import RulesEngine

    texts = corpus_texts() * args.copies
    engine = RulesEngine("mistral-v1")
    budget = 4096 - 400

    def rules() -> tuple[float, Counter]:
        stats: Counter = Counter()
        t = cpu_seconds()
        synthesize_chains(texts, 2, engine, Sampling(), budget, stats)
        return cpu_seconds() - t, stats

    def tokenize() -> float:
        t = cpu_seconds()
        engine.count_tokens([wire.reading_part(x) for x in texts])
        return cpu_seconds() - t

    rules()
    tokenize()
    a, b = [], []
    for _ in range(args.repeats):
        dt, stats = rules()
        a.append(dt)
        b.append(tokenize())
    ra, rb = len(texts) / statistics.median(a), len(texts) / statistics.median(b)
    print(f"input: {len(texts)} texts (built-in corpus x {args.copies}), M=2, Mistral v1 tokenizer")
    print(f"rules engine  median CPU {statistics.median(a):6.2f} s -> {ra:8.1f} texts/CPU-s", end="")
    print(
        f"  ({stats['pairs'] / stats['texts']:.2f} pairs/text, {stats['prompt_tokens'] / stats['texts']:.0f} prompt tokens/text)"
    )
    print(f"tokenize only median CPU {statistics.median(b):6.2f} s -> {rb:8.1f} texts/CPU-s")
    print(f"ratio rules / tokenize (texts per CPU-s): {ra / rb:.3f}")


def bench_vllm_vs_hf(args: argparse.Namespace) -> None:
    import torch

    from ipt.synth.engines import HFEngine, VLLMEngine
    from ipt.synth.tiny import build_tiny_mistral

    torch.set_num_threads(1)

    os.environ.setdefault("IPT_CACHE", tempfile.mkdtemp(prefix="ipt-cache-"))
    model = str(build_tiny_mistral(Path(tempfile.mkdtemp(prefix="tiny-")) / "mistral"))
    prompts = [wire.reading_part(t[:1200]) for t in corpus_texts()[: args.prompts]]
    sampling = Sampling(max_new_tokens=args.new_tokens)
    hf = HFEngine(model, device="cpu", dtype="float32", batch_size=len(prompts))
    vl = VLLMEngine(model, dtype="float32", gpu_memory_utilization=0.3, max_model_len=4096)

    def timed(engine) -> tuple[float, int, int]:
        t = time.perf_counter()
        gens = engine.generate(prompts, sampling)
        return (
            time.perf_counter() - t,
            sum(g.generated_tokens for g in gens),
            sum(g.prompt_tokens for g in gens),
        )

    timed(vl)
    timed(hf)
    a, b = [], []
    for _ in range(args.repeats):
        a.append(timed(vl))
        b.append(timed(hf))
    med_a, med_b = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
    gen_a, gen_b = a[0][1], b[0][1]
    print(
        "model: tiny random Mistral (2 layers, d 128, head_dim 64, vocab 32000), f32, CPU, one compute thread each"
    )
    print(
        f"prompts: {len(prompts)} reading parts, {a[0][2]} prompt tokens in all, {args.new_tokens} new tokens each, greedy"
    )
    print(f"vllm  median {med_a:7.2f} s -> {gen_a / med_a:8.1f} generated tokens/s")
    print(f"hf    median {med_b:7.2f} s -> {gen_b / med_b:8.1f} generated tokens/s")
    vl.close()
    print(f"ratio vllm / hf (generated tokens/s): {(gen_a / med_a) / (gen_b / med_b):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=["rules", "vllm-vs-hf"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=2, help="rules: passes over the built-in corpus")
    parser.add_argument("--prompts", type=int, default=32, help="vllm-vs-hf: number of prompts")
    parser.add_argument("--new-tokens", type=int, default=128, help="vllm-vs-hf: new tokens per prompt")
    args = parser.parse_args()
    (bench_rules if args.which == "rules" else bench_vllm_vs_hf)(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
