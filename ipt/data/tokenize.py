"""`ipt tokenize`: text files -> ArrayRecord shards + manifest.json, on all cores, resumable.

The input is cut deterministically into chunks, one chunk per shard: a chunk never spans two
input files and closes at the first document boundary after `shard_chars` characters, so
shard `shard-FFFFF-CCCCC.array_record` is chunk C of input file F whatever the number of
workers or hosts. Worker processes each turn a whole chunk into a shard (see shard_writer).
The run's identity (config, tokenizer, input contents) is `<output_dir>/ipt_run.json`
(ipt.stage.identity); progress lives in `<output_dir>/.ipt-tokenize/`: one completion marker
per shard and one record per finished input file. A restarted
run skips what is complete, so killed-and-resumed output is byte-identical to an uninterrupted
run's, and hosts given `shard=k num_shards=N` split the input files with no coordinator. The
manifest (then `ipt_complete.json`) is written last, by whichever run sees every input file
finished.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import Field

import ipt
from ipt.data import shard_writer
from ipt.data.readers import Document, expand_inputs, get_field, iter_records
from ipt.data.records import (
    MANIFEST,
    SHARD_SUFFIX,
    Manifest,
    ShardInfo,
    TokenizerInfo,
    token_dtype,
    write_manifest,
)
from ipt.data.shard_writer import Segments, ShardTask
from ipt.stage import BadInputError, run_stage
from ipt.stage.completion import write_completion
from ipt.stage.files import atomic_write_text, remove_stale_temps
from ipt.stage.identity import RerunConfig, claim_output_dir
from ipt.stage.sharding import SHARD_KEYS, ShardedConfig

STATE_DIR = ".ipt-tokenize"
STAT_KEYS = ("empty_docs", "bad_lines", "bad_records", "non_utf8_lines", "lone_surrogate_lines")
SKIP_HINT = "; pass skip_bad=true to count and skip such records"
# Keys that decide nothing about the shards (skip_bad: whether a bad line stops the run, not
# what a good line becomes).
HOST_KEYS = SHARD_KEYS | {"output_dir", "num_workers", "progress", "on_change", "skip_bad"}


class TokenizeConfig(ShardedConfig, RerunConfig):
    """Tokenize text (.jsonl[.gz|.zst], .parquet, .txt) into ArrayRecord shards (docs/data-format.md)."""

    input: str | list[str] = Field(description="input files or globs: .jsonl, .jsonl.gz/.zst, .parquet, .txt")
    output_dir: str = Field(description="shard directory; rerun with the same config to resume")
    tokenizer: str = Field(description="mistral-v1 (built in), a Hugging Face tokenizer dir or hub name")
    text_field: str = Field("text", description="field holding a string, or [{text, train}] segments")
    loss_mask: bool = Field(False, description="store a per-token loss mask (1 = trained) from segments")
    control_tokens: bool = Field(
        False,
        description="special-token strings in the text become control ids (text built by ipt tuning-data "
        "in the synthesizer's wire format); default: they stay text",
    )
    add_bos: bool | None = Field(
        None, description="prepend bos; default: as the tokenizer does for a prompt (no with control_tokens)"
    )
    add_eos: bool | None = Field(
        None, description="append eos; default: yes if the tokenizer has one (no with control_tokens)"
    )
    shard_chars: int = Field(100_000_000, gt=0, description="text characters per shard (~4 per token)")
    num_workers: int | None = Field(None, ge=1, description="worker processes; default: all cores")
    skip_bad: bool = Field(False, description="count and skip malformed lines/records instead of stopping")
    progress: bool = Field(True, description="show a progress bar on stderr")


def shard_name(file_index: int, chunk_index: int) -> str:
    return f"shard-{file_index:05d}-{chunk_index:05d}{SHARD_SUFFIX}"


class BadValueError(BadInputError):
    """A record whose text field holds the wrong kind of value (skipped and counted with skip_bad)."""


def _prompts_get_bos(tok) -> bool:
    """Whether the tokenizer prepends bos when it encodes a prompt (Llama/Mistral yes, GPT-2 no)."""
    if tok.bos_token_id is None:
        return False
    return tok("a").input_ids[:1] == [tok.bos_token_id] != tok("a", add_special_tokens=False).input_ids[:1]


def _document_text(doc: Document, cfg: TokenizeConfig) -> tuple[str, Segments | None]:
    """The text of one record, with its segments when it is a list of {text, train} segments."""
    value = doc.record["text"] if doc.path.endswith(".txt") else get_field(doc, cfg.text_field)
    if isinstance(value, str):
        return value, None
    expected = (
        f"field {cfg.text_field!r} must be a string or a list of {{'text': str, 'train': bool}} segments"
    )
    if not isinstance(value, list):
        raise BadValueError(f"{doc.where}: {expected}, got {type(value).__name__}{SKIP_HINT}")
    if not cfg.loss_mask:
        raise BadInputError(
            f"{doc.where}: field {cfg.text_field!r} holds segments; set loss_mask=true to use them"
        )
    texts, train = [], []
    for i, seg in enumerate(value):
        if not (
            isinstance(seg, dict)
            and set(seg) == {"text", "train"}
            and isinstance(seg["text"], str)
            and isinstance(seg["train"], bool)
        ):
            raise BadValueError(
                f"{doc.where}: segment {i}: {expected}, got {json.dumps(seg)[:80]}{SKIP_HINT}"
            )
        texts.append(seg["text"])
        train.append(seg["train"])
    ends = np.cumsum([len(t) for t in texts], dtype=np.int64)
    return "".join(texts), Segments(ends=ends, train=np.array(train, bool))


def iter_chunks(path: Path, cfg: TokenizeConfig, stats: Counter) -> Iterator[tuple[list[str], list]]:
    """The chunks of one input file: (texts, segments) closed after `shard_chars` characters."""
    texts: list[str] = []
    segments: list[Segments | None] = []
    chars = 0
    for doc in iter_records([path], skip_bad=cfg.skip_bad, stats=stats):
        try:
            text, seg = _document_text(doc, cfg)
        except BadValueError:
            if not cfg.skip_bad:
                raise
            stats["bad_records"] += 1
            continue
        if not text.strip():
            stats["empty_docs"] += 1
            continue
        texts.append(text)
        segments.append(seg)
        chars += len(text)
        if chars >= cfg.shard_chars:
            yield texts, segments
            texts, segments, chars = [], [], 0
    if texts:
        yield texts, segments


class _Run:
    """One invocation: the tokenizer facts, the state directory, the pool and the progress bar."""

    progress: _Progress

    def __init__(self, cfg: TokenizeConfig):
        from ipt.data.tokenizer import load_tokenizer, vocab_hash

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.state = self.out / STATE_DIR
        self.files = expand_inputs(cfg.input)
        tok = load_tokenizer(cfg.tokenizer)
        if not hasattr(tok, "backend_tokenizer"):
            raise BadInputError(f"tokenizer {cfg.tokenizer!r} has no fast (`tokenizers`) backend")
        self.tokenizer_json = tok.backend_tokenizer.to_str()
        adds = not cfg.control_tokens  # text that spells its own control tokens gets none by default
        add_bos = (adds and _prompts_get_bos(tok)) if cfg.add_bos is None else cfg.add_bos
        add_eos = (adds and tok.eos_token_id is not None) if cfg.add_eos is None else cfg.add_eos
        for flag, token_id, what in ((add_bos, tok.bos_token_id, "bos"), (add_eos, tok.eos_token_id, "eos")):
            if flag and token_id is None:
                raise BadInputError(f"add_{what}=true but tokenizer {cfg.tokenizer!r} has no {what} token")
        self.add_bos, self.add_eos = add_bos, add_eos
        self.info = TokenizerInfo(
            name=cfg.tokenizer,
            vocab_size=len(tok),
            vocab_hash=vocab_hash(tok),
            bos_id=tok.bos_token_id,
            eos_id=tok.eos_token_id,
        )
        self.dtype = token_dtype(len(tok)).name
        self.identity = cfg.model_dump(mode="json", exclude=set(HOST_KEYS))

    def claim(self, mine: set[int]) -> None:
        """Record this run's identity in output_dir (or check it); clear this host's dead temps."""
        settings = {
            "config": self.identity,
            "tokenizer": self.info.model_dump(mode="json"),
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
        }
        self.run_identity = claim_output_dir(
            self.out, "tokenize", settings, self.files, self.cfg.on_change, self.discard
        )
        self.state.mkdir(exist_ok=True)
        remove_stale_temps(  # shard-FFFFF-CCCCC (shards, their markers), input-FFFFF.json (file records)
            self.out,
            lambda target: target.name.startswith(("shard-", "input-")) and int(target.name[6:11]) in mine,
        )

    def discard(self) -> None:
        """Remove an earlier run's shards, markers and manifest (on_change=redo)."""
        shutil.rmtree(self.state, ignore_errors=True)
        for path in self.out.glob(f"shard-*{SHARD_SUFFIX}"):
            path.unlink()
        (self.out / "manifest.json").unlink(missing_ok=True)

    def file_record_path(self, file_index: int) -> Path:
        return self.state / f"input-{file_index:05d}.json"

    def file_done(self, fi: int) -> bool:
        """Whether input file `fi` is finished: its record exists and all its shards are complete."""
        path = self.file_record_path(fi)
        if not path.exists():
            return False
        shards = json.loads(path.read_text(encoding="utf-8"))["shards"]
        return all(shard_writer.read_marker(self.state, self.out, m["file"]) == m for m in shards)

    def tokenize_files(self, mine: list[int]) -> None:
        """Tokenize this host's input files, keeping at most num_workers + 1 chunks in flight."""
        workers = self.cfg.num_workers or len(os.sched_getaffinity(0))
        ctx = multiprocessing.get_context("spawn")
        docs_done, tokens_done = ctx.Value("q", 0), ctx.Value("q", 0)
        self.progress = _Progress(self.cfg.progress, docs_done, tokens_done)
        self.pending: dict[cf.Future, int] = {}
        self.read: dict[int, tuple[list[str], Counter]] = {}  # files read, waiting for their shards
        with cf.ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=shard_writer.init_worker,
            initargs=(self.tokenizer_json, docs_done, tokens_done, self.cfg.control_tokens),
        ) as pool:
            try:
                for fi in mine:
                    if not self.file_done(fi):
                        self._submit_file(pool, fi, workers)
                while self.pending:
                    self._collect()
                self._finish_read_files()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                self.progress.close()

    def _submit_file(self, pool: cf.Executor, fi: int, workers: int) -> None:
        stats: Counter = Counter()
        names: list[str] = []
        for ci, (texts, segments) in enumerate(iter_chunks(self.files[fi], self.cfg, stats)):
            name = shard_name(fi, ci)
            names.append(name)
            if shard_writer.read_marker(self.state, self.out, name) is not None:
                continue
            while len(self.pending) > workers:
                self._collect()
            task = ShardTask(
                name, str(self.out), str(self.state), self.dtype,
                self.info.bos_id if self.add_bos else None,
                self.info.eos_id if self.add_eos else None,
                self.cfg.loss_mask, texts, segments,
            )  # fmt: skip
            self.pending[pool.submit(shard_writer.write_shard, task)] = fi
        self.read[fi] = (names, stats)
        self._finish_read_files()

    def _collect(self) -> None:
        """Wait up to half a second for shards (re-raising worker errors); refresh the progress bar."""
        done, _ = cf.wait(list(self.pending), timeout=0.5, return_when=cf.FIRST_COMPLETED)
        for future in done:
            future.result()
            del self.pending[future]
            self.progress.shards += 1
        self.progress.refresh()
        self._finish_read_files()

    def _finish_read_files(self) -> None:
        busy = set(self.pending.values())
        for fi in [fi for fi in self.read if fi not in busy]:
            self._finish_file(fi, *self.read.pop(fi))

    def _finish_file(self, fi: int, names: list[str], stats: Counter) -> None:
        shards = [shard_writer.read_marker(self.state, self.out, n) for n in names]
        missing = [n for n, m in zip(names, shards, strict=True) if m is None]
        if missing:
            raise RuntimeError(
                f"{self.files[fi]}: shards {missing} finished without a valid completion marker"
            )
        record = {
            "path": str(self.files[fi]),
            "bytes": self.files[fi].stat().st_size,
            "num_docs": sum(m["num_docs"] for m in shards),
            "num_tokens": sum(m["num_tokens"] for m in shards),
            "shards": shards,
            "stats": {k: stats[k] for k in STAT_KEYS},
        }
        atomic_write_text(self.file_record_path(fi), json.dumps(record, indent=2) + "\n")

    def manifest(self) -> Manifest | None:
        """The manifest if every input file is finished (by any host), else None."""
        if not all(self.file_done(fi) for fi in range(len(self.files))):
            return None
        paths = [self.file_record_path(fi) for fi in range(len(self.files))]
        records = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
        shards = [
            ShardInfo(**{k: m[k] for k in ShardInfo.model_fields}) for r in records for m in r["shards"]
        ]
        return Manifest(
            tokenizer=self.info,
            add_bos=self.add_bos,
            add_eos=self.add_eos,
            dtype=self.dtype,
            has_loss_mask=self.cfg.loss_mask,
            shards=shards,
            num_docs=sum(s.num_docs for s in shards),
            num_tokens=sum(s.num_tokens for s in shards),
            inputs=[{k: r[k] for k in ("path", "bytes", "num_docs", "num_tokens", "stats")} for r in records],
            stats={k: sum(r["stats"].get(k, 0) for r in records) for k in STAT_KEYS},
            config=self.identity,
            ipt_version=ipt.__version__,
        )


class _Progress:
    """tqdm bar over documents (docs/s) with tokens/s and finished shards as its postfix."""

    def __init__(self, enabled: bool, docs_done, tokens_done):
        from tqdm import tqdm

        self.docs_done, self.tokens_done, self.shards = docs_done, tokens_done, 0
        self.start = time.perf_counter()
        self.bar = tqdm(
            desc="tokenize", unit=" docs", disable=not enabled, file=sys.stderr, dynamic_ncols=True
        )

    def refresh(self) -> None:
        docs, tokens = self.docs_done.value, self.tokens_done.value
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{tokens / elapsed:,.0f} tokens/s, {self.shards} shards", refresh=False)
        self.bar.update(docs - self.bar.n)

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def tokenize(cfg: TokenizeConfig) -> Manifest | None:
    """Run (or resume) this host's share; return the manifest once every input file is finished."""
    run = _Run(cfg)
    mine = [fi for fi in range(len(run.files)) if cfg.owns(fi)]
    run.claim(set(mine))
    run.tokenize_files(mine)
    manifest = run.manifest()
    if manifest is not None:
        write_manifest(run.out, manifest)
        outputs = [s.file for s in manifest.shards] + [MANIFEST]
        counts = {"num_docs": manifest.num_docs, "num_tokens": manifest.num_tokens, **manifest.stats}
        write_completion(run.out, run.run_identity, outputs, counts)
    return manifest


def _run(cfg: TokenizeConfig) -> int:
    manifest = tokenize(cfg)  # bad input: ipt.stage prints one line, exit 2
    if manifest is None:
        print(
            f"ipt tokenize: this host's files (shard {cfg.shard} of {cfg.num_shards}) are done; "
            "the manifest is written by the run that finishes the last input file"
        )
        return 0
    print(
        f"ipt tokenize: {manifest.num_docs:,} docs, {manifest.num_tokens:,} tokens in "
        f"{len(manifest.shards)} shards -> {cfg.output_dir}; skipped: "
        + ", ".join(f"{k}={v}" for k, v in manifest.stats.items())
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(TokenizeConfig, _run, sys.argv[1:] if argv is None else argv, prog="ipt tokenize")
