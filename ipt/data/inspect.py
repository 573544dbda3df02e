"""`ipt data inspect DIR`: what a shard directory holds, and a few records decoded back to text.

The summary comes from manifest.json; the records are read straight from the ArrayRecord
files and decoded with the tokenizer the manifest names (after checking its vocabulary hash),
so a glance shows whether bos/eos, the loss mask and the text came out as intended. With a
loss mask, the spans that are not trained are shown between ⟦ and ⟧.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ipt.data.records import Manifest, decode_record, read_manifest, shard_paths
from ipt.data.shard_writer import file_sha256

UNTRAINED = ("⟦", "⟧")


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
        reader = ArrayRecordReader(str(path))
        count = min(reader.num_records(), n - len(out))
        for i, rec in enumerate(reader.read(list(range(count)))):
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
    """Shards whose sha256 differs from the manifest's (or that are missing)."""
    bad = []
    for shard, path in zip(manifest.shards, shard_paths(directory, manifest), strict=True):
        if not path.exists() or file_sha256(path) != shard.sha256:
            bad.append(shard.file)
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipt data inspect", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="an `ipt tokenize` output directory")
    parser.add_argument("-n", type=int, default=3, help="records to decode (default 3)")
    parser.add_argument("--max-chars", type=int, default=600, help="truncate each decoded record")
    parser.add_argument("--verify", action="store_true", help="check every shard's sha256")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        manifest = read_manifest(args.directory)
    except (FileNotFoundError, ValueError) as e:
        print(f"ipt data inspect: error: {e}", file=sys.stderr)
        return 1
    print(summary(args.directory, manifest))
    if args.verify:
        bad = verify(args.directory, manifest)
        print(f"checksums   {len(manifest.shards) - len(bad)}/{len(manifest.shards)} shards match")
        if bad:
            print(
                f"ipt data inspect: error: shards differ from the manifest: {', '.join(bad)}", file=sys.stderr
            )
            return 1
    if args.n > 0:
        print(show_records(args.directory, manifest, args.n, args.max_chars))
    return 0
