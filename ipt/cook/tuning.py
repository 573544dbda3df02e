"""`ipt tuning-data`: read collections grouped by dataset -> the synthesizer's fine-tuning text.

The synthesizer is tuned on its own wire format (PAPER.md sections 2 and 5). Each entry with
pairs becomes one one-shot example, `<s> <CON> TEXT </CON>\\n\\n<QUE> Q <ANS> A </END>...</s>`,
built by `ipt.synth.format` (what the engines prompt with, so training and inference cannot
drift). The examples of one dataset are shuffled with the seed and concatenated into few-shot
sequences of at most `max_tokens` tokens, counted as the engines tokenize a prompt. Each
sequence is one document of `{text, train}` segments (reading parts untrained; pairs and the
closing `</s>` trained), one `.jsonl` per dataset, and

    ipt tokenize input=OUTPUT_DIR tokenizer=mistral-v1 loss_mask=true control_tokens=true

makes the training shards: `control_tokens` turns the text's `<s>`/`</s>` into the control ids
the synthesizer sees at inference. An example whose text or pairs spell a special token is
skipped and counted, so only the format's own markers become control ids. The work is not split
into shards: the paper's ~0.2B tokens take minutes on one core (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import glob
import json
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from ipt.collection import COLLECTION_SUFFIXES, Entry, iter_collections
from ipt.data.records import TokenizerInfo
from ipt.stage import BadInputError, run_stage
from ipt.stage.completion import completion_problem, expand_paths, write_completion
from ipt.stage.files import atomic_writer, remove_stale_temps
from ipt.stage.identity import COMPLETE_FILE, RUN_FILE, RerunConfig, claim_output_dir, read_json
from ipt.synth import format as wire

FORMAT = "ipt.tuning-data"
FORMAT_VERSION = 1  # of the documents; part of the run identity
ENCODE_BATCH = 1024
COUNT_KEYS = ("examples", "sequences", "tokens")
SKIP_KEYS = (
    "long_examples_skipped",
    "examples_with_special_tokens",
    "examples_with_invalid_unicode",
    "entries_without_pairs",
    "empty_contexts",
    "empty_pairs_dropped",
    "collections_without_pairs",
    "bad_lines",
    "non_utf8_lines",
    "lone_surrogate_lines",
)
TOKENIZE = "ipt tokenize input={out} tokenizer={tokenizer} loss_mask=true control_tokens=true"


class TuningConfig(RerunConfig):
    """Read collections grouped by dataset -> synthesizer fine-tuning text (wire format, loss on the pairs).

    `input` names collection files (one dataset each), dataset folders (their .jsonl shards, or a
    complete `ipt synthesize` output directory) or a folder of dataset folders, the layout of the
    released ft-instruction-synthesizer-collection. Then tokenize the output directory with
    `ipt tokenize input=OUTPUT_DIR tokenizer=TOKENIZER loss_mask=true control_tokens=true`.
    """

    input: str | list[str] = Field(
        description="collection files, dataset folders or a folder of them (globs too)"
    )
    output_dir: str = Field(description="one .jsonl of {text, train} segment documents per dataset")
    tokenizer: str = Field(
        "mistral-v1", description="the synthesizer's tokenizer, to count max_tokens (tokenize with it too)"
    )
    max_tokens: int = Field(
        4096,
        ge=16,
        description="tokens per few-shot sequence (train with data.seq_len >= this, packing=pack)",
    )
    seed: int = Field(0, ge=0, description="seeds each dataset's example order")
    skip_bad: bool = Field(False, description="count and skip malformed lines and collections without pairs")


@dataclass(frozen=True)
class Dataset:
    """One source dataset: its name, the folder or file that defines it, and its shards in order."""

    name: str
    path: Path
    files: tuple[Path, ...]


def _collection_files(folder: Path) -> tuple[Path, ...]:
    """A dataset folder's shards: the chunks of a complete `ipt synthesize` run, or its collection files."""
    if not (folder / RUN_FILE).exists():
        return tuple(
            sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(COLLECTION_SUFFIXES))
        )
    files = expand_paths(str(folder))  # its completion record's outputs; refused when unfinished
    stage = read_json(folder / RUN_FILE)["stage"]
    if stage != "synthesize":
        raise BadInputError(
            f"{folder} holds the output of `ipt {stage}`, not read collections; give `ipt synthesize` "
            "output directories or collection files"
        )
    return tuple(files)


def _no_shards(folder: Path) -> BadInputError:
    return BadInputError(
        f"{folder}: dataset folder holds no read-collection shards ({', '.join(COLLECTION_SUFFIXES)})"
    )


def _datasets_at(path: Path) -> list[Dataset]:
    """A file is a dataset; a folder with shards is one; a folder of folders holds one per folder."""
    if path.is_file():
        if not path.name.endswith(COLLECTION_SUFFIXES):
            raise BadInputError(
                f"{path}: read collections are JSON lines; expected {', '.join(COLLECTION_SUFFIXES)}"
            )
        name = next(path.name[: -len(s)] for s in COLLECTION_SUFFIXES if path.name.endswith(s))
        return [Dataset(name, path, (path,))]
    if files := _collection_files(path):
        return [Dataset(path.name, path, files)]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise _no_shards(path)
    out = []
    for folder in folders:
        if not (files := _collection_files(folder)):
            raise _no_shards(folder)
        out.append(Dataset(folder.name, folder, files))
    return out


def find_datasets(patterns: str | Sequence[str]) -> list[Dataset]:
    """The datasets the inputs name, sorted by name; two different inputs may not share a name."""
    found: dict[str, Dataset] = {}
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        matches = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
        if not matches or not matches[0].exists():
            raise BadInputError(f"input {pattern!r} matches no file or folder")
        for path in matches:
            for ds in _datasets_at(path):
                if found.setdefault(ds.name, ds) != ds:
                    raise BadInputError(
                        f"{found[ds.name].path} and {ds.path} are both dataset {ds.name!r}; rename one"
                    )
    if not found:
        raise BadInputError("no input given")
    return sorted(found.values(), key=lambda d: d.name)


def _unusable(parts: Sequence[str], specials: Sequence[str]) -> str | None:
    """The count an example goes to when its text or pairs cannot be tokenized as written."""
    if any(s in part for part in parts for s in specials):
        return "examples_with_special_tokens"  # it would forge a control id
    try:
        "".join(parts).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        return "examples_with_invalid_unicode"
    return None


def _example(entry: Entry, specials: Sequence[str], stats: Counter) -> tuple[str, str] | None:
    """(reading part, pairs + `</s>`) of the entry's one-shot example, or None if it is skipped."""
    pairs = [{"Q": q.strip(), "A": a.strip()} for q, a in entry.pairs]
    kept = [p for p in pairs if p["Q"] and p["A"]]
    stats["empty_pairs_dropped"] += len(pairs) - len(kept)
    context = entry.context.strip()
    if not kept:
        stats["entries_without_pairs"] += 1
        return None
    if not context:
        stats["empty_contexts"] += 1
        return None
    if skip := _unusable([context, *(v for p in kept for v in p.values())], specials):
        stats[skip] += 1
        return None
    reading = wire.reading_part(context)
    return reading, wire.example(context, kept)[len(reading) :]


def read_examples(
    ds: Dataset, cfg: TuningConfig, specials: Sequence[str], stats: Counter
) -> list[tuple[str, str]]:
    """Every usable one-shot example of a dataset, in file and line order."""
    examples = []
    for path in ds.files:
        for lineno, entries in iter_collections(path, skip_bad=cfg.skip_bad, stats=stats):
            if not any(e.pairs for e in entries):
                if not cfg.skip_bad:
                    raise BadInputError(
                        f"{path}:{lineno}: read collection has no instruction-response pairs (tuning data "
                        "is the pairs); pass skip_bad=true to count and skip such lines"
                    )
                stats["collections_without_pairs"] += 1
                continue
            examples += filter(None, (_example(e, specials, stats) for e in entries))
    return examples


class WireTokenizer:
    """Token counts of wire text as the engines and `ipt tokenize control_tokens=true` tokenize it."""

    def __init__(self, name: str):
        from tokenizers import Tokenizer

        from ipt.data.tokenizer import load_tokenizer, vocab_hash

        tok = load_tokenizer(name)
        if not hasattr(tok, "backend_tokenizer"):
            raise BadInputError(f"tokenizer {name!r} has no fast (`tokenizers`) backend")
        if (tok.bos_token, tok.eos_token) != (wire.BOS, wire.EOS):
            raise BadInputError(
                f"tokenizer {name!r} has bos/eos {tok.bos_token!r}/{tok.eos_token!r}; the synthesizer's wire "
                f"format spells them {wire.BOS!r}/{wire.EOS!r} (the Mistral/Llama-2 tokenizer)"
            )
        self.backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        self.backend.encode_special_tokens = False  # `<s>`/`</s>` in the text are control ids
        self.specials = tuple(tok.all_special_tokens)
        self.info = TokenizerInfo(
            name=name,
            vocab_size=len(tok),
            vocab_hash=vocab_hash(tok),
            bos_id=tok.bos_token_id,
            eos_id=tok.eos_token_id,
        )

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, no special tokens added (the text spells its own)."""
        counts = []
        for start in range(0, len(texts), ENCODE_BATCH):
            batch = self.backend.encode_batch_fast(
                texts[start : start + ENCODE_BATCH], add_special_tokens=False
            )
            counts += [len(enc.ids) for enc in batch]
        return counts


def pack_sequences(lengths: Sequence[int], max_tokens: int, key: str) -> list[list[int]]:
    """Example indices in a seeded order, cut greedily into sequences of at most max_tokens tokens."""
    order = list(range(len(lengths)))
    random.Random(key).shuffle(order)
    sequences: list[list[int]] = []
    used = max_tokens + 1
    for i in order:
        if used + lengths[i] > max_tokens:
            sequences.append([])
            used = 0
        sequences[-1].append(i)
        used += lengths[i]
    return sequences


def build_dataset(ds: Dataset, cfg: TuningConfig, tok: WireTokenizer, path: Path) -> Counter:
    """One dataset -> `path`, one few-shot sequence of segments per line (atomically); its counts."""
    stats: Counter = Counter()
    examples = read_examples(ds, cfg, tok.specials, stats)
    kept, lengths = [], []
    for example, n in zip(examples, tok.count([r + p for r, p in examples]), strict=True):
        if n > cfg.max_tokens:
            stats["long_examples_skipped"] += 1
        else:
            kept.append(example)
            lengths.append(n)
    if not kept:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if v)
        raise BadInputError(
            f"{ds.path}: dataset {ds.name!r} has no usable example ({counts or 'no entries'})"
        )
    sequences = pack_sequences(lengths, cfg.max_tokens, f"{cfg.seed}/{ds.name}")
    with atomic_writer(path) as f:
        for seq in sequences:
            segments = []
            for reading, pairs in (kept[i] for i in seq):
                segments += [{"text": reading, "train": False}, {"text": pairs, "train": True}]
            f.write(json.dumps({"text": segments}, ensure_ascii=False) + "\n")
    stats.update(examples=len(kept), sequences=len(sequences), tokens=sum(lengths))
    return stats


def _discard(out: Path) -> None:
    """Remove an earlier run's documents (on_change=redo)."""
    for path in out.glob("*.jsonl"):
        path.unlink()


def build(cfg: TuningConfig) -> dict[str, Any]:
    """Write every dataset's documents, then the completion record, and return it.

    A complete run of the same settings and inputs in output_dir is kept as it is."""
    datasets = find_datasets(cfg.input)
    tok = WireTokenizer(cfg.tokenizer)
    out = Path(cfg.output_dir)
    settings = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tok.info.model_dump(mode="json"),
        "max_tokens": cfg.max_tokens,
        "seed": cfg.seed,
    }
    files = [f for ds in datasets for f in ds.files]
    identity = claim_output_dir(out, "tuning-data", settings, files, cfg.on_change, lambda: _discard(out))
    if completion_problem(out) is None:
        print(f"ipt tuning-data: {out} holds this run complete; nothing to do", file=sys.stderr)
        return read_json(out / COMPLETE_FILE)
    remove_stale_temps(out, lambda _: True)  # one process writes this directory
    entries, totals = [], Counter()
    for ds in datasets:
        stats = build_dataset(ds, cfg, tok, out / f"{ds.name}.jsonl")
        totals.update(stats)
        entries.append(
            {"dataset": ds.name, "path": str(ds.path), "output": f"{ds.name}.jsonl",
             "stats": {k: stats[k] for k in COUNT_KEYS + SKIP_KEYS}}
        )  # fmt: skip
        print(
            f"ipt tuning-data: {ds.name}: {stats['examples']:,} examples -> {stats['sequences']:,} sequences, "
            f"{stats['tokens']:,} tokens",
            file=sys.stderr,
        )
    return write_completion(
        out,
        identity,
        [e["output"] for e in entries],
        {k: totals[k] for k in COUNT_KEYS + SKIP_KEYS},
        format=FORMAT,
        format_version=FORMAT_VERSION,
        tokenize=TOKENIZE.format(out=out, tokenizer=cfg.tokenizer),
        datasets=entries,
    )


def _run(cfg: TuningConfig) -> int:
    record = build(cfg)
    counts = record["counts"]
    print(
        f"ipt tuning-data: {len(record['datasets'])} datasets, {counts['examples']:,} examples -> "
        f"{counts['sequences']:,} sequences, {counts['tokens']:,} tokens -> {cfg.output_dir}; skipped: "
        + ", ".join(f"{k}={counts[k]}" for k in SKIP_KEYS)
        + f"\nnext: {record['tokenize']}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(TuningConfig, _run, sys.argv[1:] if argv is None else argv, prog="ipt tuning-data")
