"""`ipt cook`: read collections (or general instructions) -> pre-training texts that `ipt tokenize` reads.

Work is split by input file: file i belongs to shard `i % num_shards`, and its texts go to one
`.jsonl` under `output_dir` at the file's path relative to the inputs' common folder. Each
output is written to a temp name and renamed, then a marker under `output_dir/.cook/` records
its counts and a fingerprint of the settings, so a rerun skips finished files and redoes
changed ones. When every input file has its marker, `cook_manifest.json` sums them up.
Texts depend only on each collection's content and the seed (see `ipt.cook.render`), so
sharding, worker count and file splits never change the bytes of a text.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ipt.config import Config
from ipt.cook.general import format_instruction
from ipt.cook.pools import default_pools
from ipt.cook.reader import iter_collections
from ipt.cook.render import cook_collection
from ipt.data.readers import expand_inputs, iter_records
from ipt.data.records import atomic_write_text
from ipt.stage import run_stage

FORMAT = "ipt.cook"
FORMAT_VERSION = 1
MANIFEST = "cook_manifest.json"
MARKER_DIR = ".cook"
_INPUT_SUFFIXES = (".jsonl.gz", ".jsonl.zst", ".jsonl", ".json", ".parquet", ".txt")


class CookConfig(Config):
    """Read collections -> instruction-augmented pre-training text (.jsonl, one text per line).

    With format=instructions, {question, response} records (e.g. OpenOrca) become
    `QUESTION RESPONSE`, optionally with the loss on the response only.
    """

    input: str | list[str] = Field(
        description="input files or globs (.jsonl[.gz|.zst]; instructions also .parquet)"
    )
    output_dir: str = Field(description="where the .jsonl texts, markers and cook_manifest.json go")
    seed: int = Field(0, ge=0, lt=2**63, description="seeds every collection's draws (with its content)")
    format: Literal["collections", "instructions"] = Field(
        "collections", description="collections: read collections; instructions: {question, response} records"
    )
    text_field: str = Field("text", description="the output field that holds the text")
    question_field: str = Field("question", description="instructions: the question field")
    response_field: str = Field("response", description="instructions: the response field")
    loss_on: Literal["all", "response"] = Field(
        "all", description="instructions: `response` writes loss-mask segments for `ipt tokenize`"
    )
    skip_bad: bool = Field(False, description="count and skip malformed lines instead of stopping")
    num_shards: int = Field(1, gt=0, description="split the input files among this many runs")
    shard: int = Field(0, ge=0, description="this run's index when num_shards runs split the input files")
    num_workers: int = Field(1, gt=0, description="processes, each cooking whole files")

    @model_validator(mode="after")
    def _shard_in_range(self) -> CookConfig:
        if self.shard >= self.num_shards:
            raise ValueError(f"shard={self.shard} must be < num_shards={self.num_shards}")
        return self


def output_name(path: Path, root: Path) -> Path:
    """`root/a/b.jsonl.gz` -> `a/b.jsonl` (the input's place under the common folder, as .jsonl)."""
    rel = path.resolve().relative_to(root)
    name = rel.name
    for suffix in _INPUT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return rel.with_name(name + ".jsonl")


def _fingerprint(cfg: CookConfig, path: Path) -> str:
    keys = ["seed", "format", "text_field", "skip_bad"]
    if cfg.format == "instructions":
        keys += ["question_field", "response_field", "loss_on"]
    basis = {k: getattr(cfg, k) for k in keys}
    basis.update(version=FORMAT_VERSION, input_bytes=path.stat().st_size)
    if cfg.format == "collections":
        basis["pools"] = default_pools().digest
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def _texts(cfg: CookConfig, path: Path, stats: Counter) -> Iterator[str | list]:
    if cfg.format == "instructions":
        for doc in iter_records([path], skip_bad=cfg.skip_bad, stats=stats):
            stats["records"] += 1
            text = format_instruction(doc, cfg.question_field, cfg.response_field, cfg.loss_on)
            if text is None:
                stats["dropped_blank"] += 1
                continue
            yield text
        return
    pools = default_pools()
    for _, entries in iter_collections(path, skip_bad=cfg.skip_bad, stats=stats):
        cooked = cook_collection(entries, cfg.seed, pools)
        stats.update(cooked.stats)
        yield from cooked.texts


def cook_file(cfg: CookConfig, path: Path, out: Path) -> dict[str, int]:
    """Cook one input file into `out` (atomically); returns its counts."""
    stats: Counter = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for text in _texts(cfg, path, stats):
                line = json.dumps({cfg.text_field: text}, ensure_ascii=False)
                try:
                    f.write(line)
                except UnicodeEncodeError:  # a lone surrogate from a JSON escape: not valid UTF-8
                    f.write(line.encode("utf-8", "replace").decode("utf-8"))
                    stats["texts_with_invalid_unicode"] += 1
                f.write("\n")
                stats["texts"] += 1
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dict(sorted(stats.items()))


def _cook_task(args: tuple[CookConfig, Path, Path, Path, str]) -> tuple[str, dict[str, int]]:
    cfg, path, out, marker, fingerprint = args
    stats = cook_file(cfg, path, out)
    marker.parent.mkdir(parents=True, exist_ok=True)
    record = {"input": str(path), "output": str(out), "fingerprint": fingerprint, "stats": stats}
    atomic_write_text(marker, json.dumps(record, indent=1) + "\n")
    return str(path), stats


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def cook(cfg: CookConfig) -> dict[str, int]:
    """Cook this shard's input files; returns the summed counts of the files it cooked."""
    files = expand_inputs(cfg.input)
    root = Path(os.path.commonpath([p.resolve().parent for p in files]))
    out_dir = Path(cfg.output_dir)
    names = [output_name(p, root) for p in files]
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"inputs map to the same output file(s) {dupes}; rename or cook them separately")
    tasks = []
    for i, (path, name) in enumerate(zip(files, names, strict=True)):
        if i % cfg.num_shards != cfg.shard:
            continue
        marker = out_dir / MARKER_DIR / name.with_name(name.name + ".done.json")
        fingerprint = _fingerprint(cfg, path)
        done = _read_marker(marker)
        if done and done.get("fingerprint") == fingerprint and (out_dir / name).exists():
            print(f"ipt cook: {path}: done earlier, skipped", file=sys.stderr)
            continue
        tasks.append((cfg, path, out_dir / name, marker, fingerprint))

    totals: Counter = Counter()
    if cfg.num_workers > 1 and len(tasks) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(cfg.num_workers, len(tasks))) as pool:
            results = list(pool.imap_unordered(_cook_task, tasks))
    else:
        results = map(_cook_task, tasks)
    for path, stats in results:
        totals.update(stats)
        print(f"ipt cook: {path}: {stats.get('texts', 0)} texts", file=sys.stderr)
    _write_manifest(cfg, files, names, out_dir)
    return dict(sorted(totals.items()))


def _write_manifest(cfg: CookConfig, files: list[Path], names: list[Path], out_dir: Path) -> None:
    """Once every input file (of every shard) has its marker, sum them into cook_manifest.json."""
    entries = []
    for name in names:
        done = _read_marker(out_dir / MARKER_DIR / name.with_name(name.name + ".done.json"))
        if done is None:
            return
        entries.append({"input": done["input"], "output": str(name), "stats": done["stats"]})
    totals: Counter = Counter()
    for e in entries:
        totals.update(e["stats"])
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.model_dump(mode="json", exclude={"shard", "num_workers"}),
        "pools_digest": default_pools().digest if cfg.format == "collections" else None,
        "files": entries,
        "stats": dict(sorted(totals.items())),
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _run(cfg: CookConfig) -> int:
    totals = cook(cfg)
    print(json.dumps(totals, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(CookConfig, _run, sys.argv[1:] if argv is None else argv, prog="ipt cook")
