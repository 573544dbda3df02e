"""Pack mode's packer alone: ipt's block packer against grain's first-fit and best-fit packers.

All three pack the same in-memory blocks of documents (the built-in corpus tokenized with the real
Mistral v1 tokenizer, drawn at random into blocks of `--docs-per-block`) into rows of
`seq_len + 1` tokens, long documents cut into pieces overlapping by one token. grain's packers
get the pieces one at a time (as the pipeline fed them before) with `--bins` packing bins and
bin shuffling, ipt's `PackBlocks` gets the blocks. Trials alternate the candidates after a
warm-up; medians of real (non-padding) tokens per CPU second and the share of row cells that
are padding are reported. The last line is PackBlocks / grain first-fit.

    python benchmarks/packer_throughput.py [--seq-len 2048] [--docs-per-block 1024] [--bins 64]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import grain
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from shards import tokenize  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ipt.data.block_packing import SEGMENT_IDS, PackBlocks  # noqa: E402
from ipt.data.packing import TOKENS  # noqa: E402
from ipt.data.tokenizer import builtin_tokenizer_dir  # noqa: E402


class Pieces(grain.experimental.FlatMapTransform):
    """A block -> its documents, each cut to at most `row_len` tokens (overlapping by one)."""

    def __init__(self, row_len: int):
        self.row_len, self.max_fan_out = row_len, 1 << 20

    def flat_map(self, docs):
        out = []
        for doc in docs:
            n = len(doc[TOKENS])
            starts = range(0, n - 1, self.row_len - 1) if n > self.row_len else [0]
            out += [{TOKENS: doc[TOKENS][s : s + self.row_len]} for s in starts]
        return out


def make_blocks(n_blocks: int, docs_per_block: int) -> list[list[dict[str, np.ndarray]]]:
    with gzip.open(ROOT / "ipt" / "assets" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    docs = [
        d.astype(np.uint16)
        for d in tokenize(AutoTokenizer.from_pretrained(builtin_tokenizer_dir("mistral-v1")), texts)
    ]
    rng = np.random.default_rng(0)
    return [
        [{TOKENS: docs[i]} for i in rng.integers(len(docs), size=docs_per_block)] for _ in range(n_blocks)
    ]


def packers(blocks, row_len: int, bins: int) -> dict[str, grain.IterDataset]:
    parent = grain.MapDataset.source(blocks).to_iter_dataset()
    grain_kw = {"length_struct": {TOKENS: row_len}, "num_packing_bins": bins, "seed": 0, "shuffle_bins": True}
    pieces = grain.experimental.FlatMapIterDataset(parent, Pieces(row_len))
    return {
        "ipt PackBlocks": PackBlocks(parent, row_len, seed=0, shuffle_rows=True),
        "grain FirstFitPack": grain.experimental.FirstFitPackIterDataset(pieces, **grain_kw),
        "grain BestFitPack": grain.experimental.BestFitPackIterDataset(pieces, **grain_kw),
    }


def trial(ds: grain.IterDataset) -> tuple[float, float]:
    """Real tokens per CPU second and the padding share of all row cells, over the whole dataset."""
    cpu, real, cells = time.process_time(), 0, 0
    for row in ds:
        real += int(np.count_nonzero(row[SEGMENT_IDS]))
        cells += row[SEGMENT_IDS].size
    return real / (time.process_time() - cpu), 1 - real / cells


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--docs-per-block", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=8, help="blocks per trial")
    parser.add_argument("--bins", type=int, default=64, help="grain's num_packing_bins")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()

    candidates = packers(make_blocks(args.blocks, args.docs_per_block), args.seq_len + 1, args.bins)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    for ds in candidates.values():  # warm-up
        trial(ds)
    for t in range(args.trials):
        for name, ds in candidates.items():
            results[name].append(trial(ds))
        print(
            f"trial {t}: "
            + ", ".join(f"{n} {r[-1][0] / 1e6:.2f}M" for n, r in results.items())
            + " tokens/CPU-s"
        )
    print(
        f"seq_len={args.seq_len} docs/block={args.docs_per_block} blocks={args.blocks} grain bins={args.bins}"
    )
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(r[0] for r in runs)
        print(
            f"median {name}: {medians[name] / 1e6:.2f}M real tokens/CPU-s, padding {runs[0][1]:.1%} of row cells"
        )
    ratio = medians["ipt PackBlocks"] / medians["grain FirstFitPack"]
    print(f"ratio PackBlocks/FirstFitPack (real tokens per CPU second): {ratio:.2f}")


if __name__ == "__main__":
    main()
