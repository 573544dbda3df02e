"""`ipt cook`: read collections (or general instructions) -> pre-training texts that `ipt tokenize` reads.

Work is split by input file: file i belongs to shard `i % num_shards`, and its texts go to one
`.jsonl` under `output_dir` at the file's path relative to the inputs' common folder. Each
output is written to a temp name and renamed, then a marker under `output_dir/.cook/` records
its counts (ipt.stage.markers), so a rerun skips finished files. The run's identity (settings,
pools and input contents) lives in `ipt_run.json`; a rerun of other settings is refused or,
with on_change=redo, started afresh. When every input file has its marker, `ipt_complete.json`
lists the outputs and sums their counts.
Texts depend only on each collection's content and the seed (see `ipt.cook.render`), so
sharding, worker count and file splits never change the bytes of a text.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ipt.collection import iter_collections
from ipt.cook.general import format_instruction
from ipt.cook.pools import default_pools
from ipt.cook.render import cook_collection
from ipt.data.readers import SUFFIXES, expand_inputs, iter_records
from ipt.stage import BadInputError, run_stage
from ipt.stage.completion import write_completion
from ipt.stage.files import atomic_writer, remove_stale_temps
from ipt.stage.identity import COMPLETE_FILE, RerunConfig, claim_output_dir
from ipt.stage.markers import read_marker, write_marker
from ipt.stage.sharding import ShardedConfig
from ipt.stage.workers import exit_with_parent

FORMAT = "ipt.cook"
FORMAT_VERSION = 1
MANIFEST = COMPLETE_FILE
MARKER_DIR = ".cook"


class CookConfig(ShardedConfig, RerunConfig):
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
    num_workers: int = Field(1, gt=0, description="processes, each cooking whole files")


def output_name(path: Path, root: Path) -> Path:
    """`root/a/b.jsonl.gz` -> `a/b.jsonl` (the input's place under the common folder, as .jsonl)."""
    rel = path.resolve().relative_to(root)
    name = rel.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return rel.with_name(name + ".jsonl")


def output_settings(cfg: CookConfig) -> dict[str, Any]:
    """The settings that decide the texts (with the phrasing pools' digest and the format version).

    Not skip_bad: it decides whether a bad line stops the run, never what a good line becomes,
    so a run stopped by a bad line can be finished with skip_bad=true in the same directory."""
    keys = ["seed", "format", "text_field"]
    if cfg.format == "instructions":
        keys += ["question_field", "response_field", "loss_on"]
    settings = {k: getattr(cfg, k) for k in keys}
    settings["format_version"] = FORMAT_VERSION
    if cfg.format == "collections":
        settings["pools"] = default_pools().digest
    return settings


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
    with atomic_writer(out) as f:
        for text in _texts(cfg, path, stats):
            line = json.dumps({cfg.text_field: text}, ensure_ascii=False)
            try:
                f.write(line)
            except UnicodeEncodeError:  # a lone surrogate from a JSON escape: not valid UTF-8
                f.write(line.encode("utf-8", "replace").decode("utf-8"))
                stats["texts_with_invalid_unicode"] += 1
            f.write("\n")
            stats["texts"] += 1
    return dict(sorted(stats.items()))


def marker_path(out_dir: Path, name: Path) -> Path:
    return out_dir / MARKER_DIR / name.with_name(name.name + ".done.json")


def _cook_task(args: tuple[CookConfig, Path, Path, Path]) -> tuple[str, dict[str, int]]:
    cfg, path, out, marker = args
    stats = cook_file(cfg, path, out)
    write_marker(marker, out, input=str(path), stats=stats)
    return str(path), stats


def _discard(out_dir: Path) -> None:
    """Remove the outputs and markers of an earlier run (on_change=redo)."""
    markers = out_dir / MARKER_DIR
    if markers.is_dir():
        for marker in markers.rglob("*.done.json"):
            rel = marker.relative_to(markers)
            (out_dir / rel.with_name(rel.name.removesuffix(".done.json"))).unlink(missing_ok=True)
        shutil.rmtree(markers)


def cook(cfg: CookConfig) -> dict[str, int]:
    """Cook this shard's input files; returns the summed counts of the files it cooked."""
    files = expand_inputs(cfg.input)
    root = Path(os.path.commonpath([p.resolve().parent for p in files]))
    out_dir = Path(cfg.output_dir)
    names = [output_name(p, root) for p in files]
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        raise BadInputError(f"inputs map to the same output file(s) {dupes}; rename or cook them separately")
    identity = claim_output_dir(
        out_dir, "cook", output_settings(cfg), files, cfg.on_change, lambda: _discard(out_dir)
    )
    mine = {name for i, name in enumerate(names) if cfg.owns(i)}
    my_markers = {marker_path(out_dir, name).relative_to(out_dir) for name in mine}
    remove_stale_temps(out_dir, lambda target: target in mine or target in my_markers)
    tasks = []
    for path, name in zip(files, names, strict=True):
        if name not in mine:
            continue
        marker = marker_path(out_dir, name)
        if read_marker(marker, out_dir / name) is not None:
            print(f"ipt cook: {path}: done earlier, skipped", file=sys.stderr)
            continue
        tasks.append((cfg, path, out_dir / name, marker))

    totals: Counter = Counter()
    if cfg.num_workers > 1 and len(tasks) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(
            min(cfg.num_workers, len(tasks)), initializer=exit_with_parent
        ) as pool:
            results = list(pool.imap_unordered(_cook_task, tasks))
    else:
        results = map(_cook_task, tasks)
    for path, stats in results:
        totals.update(stats)
        print(f"ipt cook: {path}: {stats.get('texts', 0)} texts", file=sys.stderr)
    _complete_if_all_done(cfg, identity, names, out_dir)
    return dict(sorted(totals.items()))


def _complete_if_all_done(cfg: CookConfig, identity: dict, names: list[Path], out_dir: Path) -> None:
    """Once every input file (of every shard) is cooked, write the completion record."""
    entries = []
    for name in names:
        done = read_marker(marker_path(out_dir, name), out_dir / name)
        if done is None:
            return
        entries.append({"input": done["input"], "output": str(name), "stats": done["stats"]})
    totals: Counter = Counter()
    for e in entries:
        totals.update(e["stats"])
    write_completion(
        out_dir,
        identity,
        names,
        dict(sorted(totals.items())),
        format=FORMAT,
        format_version=FORMAT_VERSION,
        config=cfg.model_dump(mode="json", exclude={"shard", "num_workers", "on_change"}),
        pools_digest=default_pools().digest if cfg.format == "collections" else None,
        files=entries,
    )


def _run(cfg: CookConfig) -> int:
    totals = cook(cfg)
    print(json.dumps(totals, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(CookConfig, _run, sys.argv[1:] if argv is None else argv, prog="ipt cook")
