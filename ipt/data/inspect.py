"""`ipt data inspect DIR`: what a shard directory holds, and a few records decoded back to text.

The summary comes from manifest.json; the records are read straight from the ArrayRecord
files and decoded with the tokenizer the manifest names (after checking its vocabulary hash),
so a glance shows whether bos/eos, the loss mask and the text came out as intended. With a
loss mask, the spans that are not trained are shown between ⟦ and ⟧. A shard that is missing
or whose size differs from the manifest's is reported (one line, exit 2) before any is read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ipt.data.integrity import ShardReadError, opening, read_located, remedy, size_problems
from ipt.data.records import MANIFEST, Manifest, ShardInfo, decode_record, read_manifest, shard_paths
from ipt.data.shard_writer import file_sha256
from ipt.stage import describe_error

UNTRAINED = ("⟦", "⟧")
COUNT_BATCH = 4096  # records per read while counting tokens
EXIT_BAD_INPUT = 2


def summary(directory: Path, manifest: Manifest) -> str:
    t = manifest.tokenizer
    per_doc = manifest.num_tokens / max(manifest.num_docs, 1)
    lines = [
        f"{directory}: {manifest.format} v{manifest.format_version} (ipt {manifest.ipt_version or '?'})",
        f"tokenizer   {t.name}  vocab {t.vocab_size}  hash {t.vocab_hash[:16]}  bos {t.bos_id}  eos {t.eos_id}",
        f"records     dtype {manifest.dtype}  add_bos {manifest.add_bos}  add_eos {manifest.add_eos}  "
        f"loss_mask {manifest.has_loss_mask}",
        f"size        {manifest.num_docs:,} docs  {manifest.num_tokens:,} tokens  "
        f"{per_doc:,.1f} tokens/doc  {len(manifest.shards)} shards  {len(manifest.inputs)} input files",
        "skipped     " + (", ".join(f"{k} {v:,}" for k, v in manifest.stats.items()) or "(no stats)"),
    ]
    if manifest.config:
        lines.append("config      " + ", ".join(f"{k}={v}" for k, v in manifest.config.items()))
    return "\n".join(lines)


def _load_tokenizer(manifest: Manifest):
    """The manifest's tokenizer, or None (with the reason on stderr) if it is unavailable or differs."""
    from ipt.data.tokenizer import load_tokenizer, vocab_hash

    try:
        tok = load_tokenizer(manifest.tokenizer.name)
    except Exception as e:  # a missing local dir or an unreachable hub: show ids instead
        print(f"cannot load tokenizer {manifest.tokenizer.name!r} ({e}); showing ids only", file=sys.stderr)
        return None
    if vocab_hash(tok) != manifest.tokenizer.vocab_hash:
        print(
            f"tokenizer {manifest.tokenizer.name!r} has a different vocabulary; showing ids only",
            file=sys.stderr,
        )
        return None
    return tok


def render(tok, ids: np.ndarray, mask: np.ndarray | None) -> str:
    """Decoded text; with a mask, each untrained run of tokens is wrapped in ⟦ ⟧."""
    if mask is None:
        return tok.decode(ids.tolist())
    cuts = np.flatnonzero(np.diff(mask)) + 1
    parts = []
    for span_ids, span_mask in zip(np.split(ids, cuts), np.split(mask, cuts), strict=True):
        text = tok.decode(span_ids.tolist())
        parts.append(text if span_mask[0] else f"{UNTRAINED[0]}{text}{UNTRAINED[1]}")
    return "".join(parts)


def show_records(directory: Path, manifest: Manifest, n: int, max_chars: int) -> str:
    from array_record.python.array_record_module import ArrayRecordReader

    tok = _load_tokenizer(manifest) if n else None
    out = []
    for path in shard_paths(directory, manifest):
        if len(out) >= n:
            break
        with opening(str(path)):
            reader = ArrayRecordReader(str(path))
        count = min(reader.num_records(), n - len(out))
        for i, rec in enumerate(read_located(reader.read, str(path), list(range(count)))):
            ids, mask = decode_record(rec, np.dtype(manifest.dtype), manifest.has_loss_mask)
            trained = f"  trained {int(mask.sum())}/{len(ids)}" if mask is not None else ""
            head = f"--- {path.name} record {i}: {len(ids)} tokens{trained}; ids {ids[:8].tolist()}..."
            body = render(tok, ids, mask) if tok is not None else str(ids.tolist())
            if len(body) > max_chars:
                body = body[:max_chars] + f" [... {len(body) - max_chars:,} more chars]"
            out.append(f"{head}\n{body}")
        reader.close()
    return "\n".join(out)


def verify(directory: Path, manifest: Manifest) -> list[str]:
    """Every way the shards differ from the manifest: missing, size, sha256, record and token counts."""
    problems = size_problems(directory, manifest)
    for name, total, parts in (
        ("num_docs", manifest.num_docs, sum(s.num_docs for s in manifest.shards)),
        ("num_tokens", manifest.num_tokens, sum(s.num_tokens for s in manifest.shards)),
    ):
        if total != parts:
            problems.append(f"{MANIFEST}: {name} is {total:,}, but its shards add up to {parts:,}")
    for shard, path in zip(manifest.shards, shard_paths(directory, manifest), strict=True):
        if not path.is_file():
            continue
        actual = file_sha256(path)
        if actual != shard.sha256:
            problems.append(f"{path}: sha256 {actual}, but {MANIFEST} says {shard.sha256}")
        try:
            problems.extend(_count_problems(path, shard, manifest))
        except ShardReadError as e:
            problems.append(e.detail)
    return problems


def _count_problems(path: Path, shard: ShardInfo, manifest: Manifest) -> list[str]:
    """The shard's records and tokens, counted by reading every record, against the manifest's."""
    from array_record.python.array_record_module import ArrayRecordReader

    width = np.dtype(manifest.dtype).itemsize + int(manifest.has_loss_mask)
    with opening(str(path)):
        reader = ArrayRecordReader(str(path))
    try:
        n_records = reader.num_records()
        n_tokens, problems = 0, []
        for start in range(0, n_records, COUNT_BATCH):
            positions = list(range(start, min(start + COUNT_BATCH, n_records)))
            for position, rec in zip(positions, read_located(reader.read, str(path), positions), strict=True):
                if len(rec) % width:
                    problems.append(
                        f"{path}: record {position} has {len(rec)} bytes, not a multiple of {width}"
                    )
                n_tokens += len(rec) // width
    finally:
        reader.close()
    if n_records != shard.num_docs:
        problems.append(f"{path}: holds {n_records:,} records, but {MANIFEST} says {shard.num_docs:,}")
    if n_tokens != shard.num_tokens:
        problems.append(f"{path}: holds {n_tokens:,} tokens, but {MANIFEST} says {shard.num_tokens:,}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipt data inspect", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="an `ipt tokenize` output directory")
    parser.add_argument("-n", type=int, default=3, help="records to decode (default 3)")
    parser.add_argument("--max-chars", type=int, default=600, help="truncate each decoded record")
    parser.add_argument(
        "--verify", action="store_true", help="check every shard's size, sha256, record and token counts"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        manifest = read_manifest(args.directory)
    except (OSError, ValueError) as e:  # a manifest.json that is missing, a directory, unreadable, invalid
        print(f"ipt data inspect: error: {describe_error(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(args.directory, manifest))
    missing_or_resized = size_problems(args.directory, manifest)  # one stat per shard
    if missing_or_resized and not args.verify:  # --verify lists them with the rest
        print(
            f"ipt data inspect: error: {missing_or_resized[0]}"
            + (f" (and {len(missing_or_resized) - 1} more)" if len(missing_or_resized) > 1 else "")
            + f"; {remedy(args.directory)}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.verify:
        problems = verify(args.directory, manifest)
        verdict = f"{len(problems)} problems" if problems else "ok"
        print(f"verified    {len(manifest.shards)} shards (size, sha256, records, tokens): {verdict}")
        if problems:
            print(
                f"ipt data inspect: error: {args.directory} differs from its {MANIFEST}:\n  "
                + "\n  ".join(problems)
                + "\nre-tokenize it (the shards were changed or damaged after `ipt tokenize` wrote them)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
    if args.n > 0:
        try:
            print(show_records(args.directory, manifest, args.n, args.max_chars))
        except ShardReadError as e:
            print(f"ipt data inspect: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return 0
