"""Tokens/s of the grain input pipeline against reading the same records raw with ArrayRecordReader.

Candidate: `make_batch_iterator` over three sources (global shuffle + weighted mix + packing to
`seq_len` + batching), counting the real (non-padding) input tokens it delivers. Baseline: the
same shard files read with `ArrayRecordReader.read(positions)` alone, in the pipeline's access
pattern (blocks of `docs_per_read` random documents, one call per file), decoded to numpy.
The sources are the built-in corpus tokenized with the real Mistral v1 tokenizer, its records
repeated until each source holds `--docs-per-source` documents, so the global shuffle works on
a realistically large index space. Trials alternate candidate and
baseline after a warm-up; medians of tokens per wall second and per CPU second of this process
are reported, and the last line is candidate / baseline (per CPU second without workers, so
other jobs on a shared machine stay out of it).

    python benchmarks/loader_throughput.py [--packing concat|pack] [--seq-len 2048] [--workers 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from shards import tokenize, write_shards  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ipt.data.pipeline import DataConfig, make_batch_iterator  # noqa: E402
from ipt.data.records import decode_record, read_manifest, shard_paths  # noqa: E402
from ipt.data.sources import SourceConfig  # noqa: E402
from ipt.data.tokenizer import builtin_tokenizer_dir  # noqa: E402

WEIGHTS = (0.5, 0.3, 0.2)


def build_sources(root: Path, docs_per_source: int) -> list[SourceConfig]:
    """Three shard directories from disjoint thirds of the built-in corpus, repeated to size."""
    with gzip.open(ROOT / "ipt" / "assets" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tok = AutoTokenizer.from_pretrained(builtin_tokenizer_dir("mistral-v1"))
    docs = tokenize(tok, texts)
    sources = []
    for i, weight in enumerate(WEIGHTS):
        part = docs[i::3]
        repeated = [part[j % len(part)] for j in range(docs_per_source)]
        write_shards(root / f"src{i}", tok, repeated, docs_per_shard=max(1, docs_per_source // 8))
        sources.append(SourceConfig(name=f"src{i}", path=str(root / f"src{i}"), weight=weight))
    return sources


class Clock:
    """Wall time and this process's CPU time (all its threads) since construction."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, tokens: int) -> tuple[float, float]:
        """tokens per wall second, tokens per CPU second."""
        return tokens / (time.perf_counter() - self.wall), tokens / (time.process_time() - self.cpu)


def pipeline_trial(it, n_batches: int) -> tuple[float, float]:
    clock, tokens = Clock(), 0
    for _ in range(n_batches):
        tokens += int(np.count_nonzero(next(it)["segment_ids"]))
    return clock.rates(tokens)


class RawReader:
    """The same shards read with ArrayRecordReader alone, in the pipeline's access pattern.

    Each read takes `docs_per_read` documents drawn at random (source by weight, then a
    document uniformly), fetched with one `read(positions)` call per file, then decoded to
    token arrays with numpy: what the pipeline does before shuffling, mixing and packing.
    """

    def __init__(self, sources: list[SourceConfig], docs_per_read: int, seed: int = 0):
        self.files = []  # (reader, dtype, has_loss_mask) per shard file
        self.ranges = []  # per source: first file index, docs per file
        for src in sources:
            manifest = read_manifest(src.path)
            first = len(self.files)
            for path in shard_paths(src.path, manifest):
                reader = ArrayRecordReader(str(path), "readahead_buffer_size:0")
                self.files.append((reader, np.dtype(manifest.dtype), manifest.has_loss_mask))
            self.ranges.append((first, [s.num_docs for s in manifest.shards]))
        self.docs_per_read = docs_per_read
        self.rng = np.random.default_rng(seed)

    def read_block(self) -> int:
        by_file: dict[int, list[int]] = {}
        for source in self.rng.choice(len(self.ranges), size=self.docs_per_read, p=WEIGHTS):
            first, counts = self.ranges[source]
            doc = int(self.rng.integers(sum(counts)))
            shard = int(np.searchsorted(np.cumsum(counts), doc, side="right"))
            by_file.setdefault(first + shard, []).append(doc - sum(counts[:shard]))
        tokens = 0
        for f, positions in by_file.items():
            reader, dtype, has_mask = self.files[f]
            for rec in reader.read(positions):
                tokens += len(decode_record(rec, dtype, has_mask)[0])
        return tokens

    def trial(self, n_tokens: int) -> tuple[float, float]:
        clock, tokens = Clock(), 0
        while tokens < n_tokens:
            tokens += self.read_block()
        return clock.rates(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packing", choices=["concat", "pack"], default="concat")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes (worker_count)")
    parser.add_argument("--docs-per-read", type=int, default=DataConfig.model_fields["docs_per_read"].default)
    parser.add_argument("--docs-per-source", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=150, help="batches per candidate trial")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ipt-loader-bench-") as tmp:
        sources = build_sources(Path(tmp), args.docs_per_source)
        cfg = DataConfig(
            sources=sources,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            packing=args.packing,
            worker_count=args.workers,
            docs_per_read=args.docs_per_read,
        )
        it = make_batch_iterator(cfg, process_index=0, process_count=1)
        raw = RawReader(sources, args.docs_per_read)
        pipeline_trial(it, max(10, args.batches // 5))  # warm-up: workers started, caches hot
        raw.trial(args.batches * args.batch_size * args.seq_len // 5)
        piped, raws = [], []
        for t in range(args.trials):
            piped.append(pipeline_trial(it, args.batches))
            raws.append(raw.trial(args.batches * args.batch_size * args.seq_len))
            print(
                f"trial {t}: pipeline {piped[-1][0] / 1e6:.2f}M tokens/s ({piped[-1][1] / 1e6:.2f}M per CPU-s), "
                f"raw {raws[-1][0] / 1e6:.2f}M tokens/s ({raws[-1][1] / 1e6:.2f}M per CPU-s)"
            )
        it.close()
    print(
        f"packing={args.packing} seq_len={args.seq_len} batch={args.batch_size} workers={args.workers} "
        f"docs_per_read={args.docs_per_read} docs/source={args.docs_per_source}"
    )
    for name, runs in (("pipeline", piped), ("raw ArrayRecordReader", raws)):
        wall, cpu = (statistics.median(r[i] for r in runs) for i in (0, 1))
        print(f"median {name}: {wall / 1e6:.2f}M tokens/s wall, {cpu / 1e6:.2f}M tokens/CPU-s")
    # Per CPU-second keeps the shared machine's other jobs out of the ratio; worker processes'
    # CPU time is not this process's, so with workers the ratio uses wall time.
    i, unit = (0, "wall") if args.workers else (1, "CPU")
    ratio = statistics.median(r[i] for r in piped) / statistics.median(r[i] for r in raws)
    print(f"ratio pipeline/raw (tokens per {unit} second): {ratio:.3f}")


if __name__ == "__main__":
    main()
