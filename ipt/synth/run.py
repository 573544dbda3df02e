"""`ipt synthesize`: raw texts -> read collections, sharded over machines and resumable.

The input (all files, in order) is cut into chunks of `chunk_texts` consecutive records;
chunk c belongs to shard c mod num_shards, so shards never wait for each other and any
number of machines can split one corpus. Within a chunk the texts are cut into M rounds and
chained (ipt.synth.rounds). A chunk's collections are written to a temporary file and renamed
to `chunk-NNNNNN.jsonl`; then its stats are written the same way to `chunk-NNNNNN.stats.json`,
which marks the chunk complete (ipt.stage.markers). A restarted run skips complete chunks and
redoes the rest, so a run killed at any point loses and duplicates nothing. The run's identity
(settings and input contents) is recorded in `ipt_run.json` and checked on every restart
(ipt.stage.identity); once every chunk of every shard is done, `ipt_complete.json` lists them. The chunking does not depend on
num_shards: a job may be re-split between restarts. `executor=ray` (ipt.synth.cluster) hands the
same chunks to engine actors on a Ray cluster; both executors run `synthesize_chunk`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ipt.collection import collection_line
from ipt.config import Config
from ipt.data.readers import Document, expand_inputs, get_field, iter_records
from ipt.stage import BadInputError, run_stage
from ipt.stage.completion import write_completion
from ipt.stage.files import atomic_write_text, remove_stale_temps
from ipt.stage.identity import RerunConfig, claim_output_dir
from ipt.stage.markers import read_marker, unit_fields, write_marker
from ipt.stage.sharding import SHARD_KEYS, ShardedConfig
from ipt.synth import format as wire
from ipt.synth.engines import Engine, Sampling
from ipt.synth.rounds import synthesize_chains

OUTPUT_FORMAT = "ipt-read-collections/1"  # a JSON list of {context, QA_list, ...} per line
# skip_bad decides whether a bad line stops the run, never what a good line becomes.
NOT_OUTPUT_DECIDING = SHARD_KEYS | {
    *("input", "output_dir", "progress", "gpu_memory_utilization", "executor", "ray", "on_change", "skip_bad")
}
CHUNK_FILE = re.compile(r"chunk-(\d{6})\.(jsonl|stats\.json)")
# Keys only some engines read: setting one for another engine is a config error, not a no-op.
ENGINE_KEYS = {
    "model": ("vllm", "hf", "jax"),
    "dtype": ("vllm", "hf"),
    "tensor_parallel_size": ("vllm",),
    "gpu_memory_utilization": ("vllm",),
    "enable_prefix_caching": ("vllm",),
    "vllm_kwargs": ("vllm",),
    "batch_size": ("hf", "jax"),
    "device": ("hf",),
    "max_pairs": ("rules",),
}


class UsageError(BadInputError):
    """A run that cannot start as configured (e.g. a missing optional dependency); exit status 2."""


class RayExecutorConfig(Config):
    """Where the Ray executor runs and what each engine actor asks the cluster for."""

    address: str | None = Field(
        None,
        description="auto | HOST:PORT | ray://HOST:PORT; unset: RAY_ADDRESS, a Ray on this machine, else a new one",
    )
    num_actors: int | None = Field(None, ge=1, description="unset: as many as the cluster's resources hold")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs per actor")
    num_gpus: float | None = Field(
        None, ge=0.0, description="GPUs per actor; unset: tensor_parallel_size (vllm), else 0"
    )
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per actor")
    max_chunk_attempts: int = Field(3, ge=1, description="a chunk whose actor dies this often stops the job")


class SynthesizeConfig(ShardedConfig, RerunConfig):
    """Turn raw texts into read collections of instruction-response pairs."""

    input: str | list[str] = Field(description="input files or globs (.jsonl[.gz|.zst], .parquet, .txt)")
    output_dir: str = Field(description="where chunk-NNNNNN.jsonl collections and stats go")
    engine: Literal["vllm", "hf", "jax", "rules"] = Field("vllm", description="vllm | hf | jax | rules")
    model: str = Field("instruction-pretrain/instruction-synthesizer", description="LM path or hub name")
    tokenizer: str | None = Field(None, description="default: the model's; rules: mistral-v1")
    rounds: int = Field(2, ge=1, description="M: rounds of multi-round synthesis")
    text_field: str = "text"
    chunk_texts: int = Field(4096, ge=1, description="input records per chunk (the unit of resumption)")
    max_model_len: int = Field(4096, ge=16)
    max_new_tokens: int = Field(400, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    long_text: Literal["truncate", "skip"] = Field(
        "truncate", description="a text whose reading part exceeds max_model_len - max_new_tokens"
    )
    skip_bad: bool = Field(False, description="count and skip input lines that are not JSON objects")
    max_pairs: int = Field(5, ge=1, description="rules engine: pairs per text at most")
    dtype: str = Field("auto", description="model dtype (hf, vllm)")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vllm")
    enable_prefix_caching: bool = Field(True, description="vllm")
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM arguments")
    batch_size: int = Field(8, ge=1, description="hf, jax: prompts per generate call")
    device: str = Field("auto", description="hf: cpu | cuda | auto")
    progress: bool = True
    executor: Literal["local", "ray"] = Field("local", description="local: this process | ray: engine actors")
    ray: RayExecutorConfig = Field(default_factory=RayExecutorConfig, description="executor=ray")

    @model_validator(mode="after")
    def _check(self) -> SynthesizeConfig:
        for key in sorted(self.model_fields_set & ENGINE_KEYS.keys()):
            if self.engine not in ENGINE_KEYS[key]:
                users = " and ".join(f"engine={e}" for e in ENGINE_KEYS[key])
                raise ValueError(f"{key} is read only by {users}; engine={self.engine} does not use it")
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} leaves no room in max_model_len")
        return self

    @property
    def budget(self) -> int:
        """Prompt tokens allowed: the reading parts plus examples must leave room to generate."""
        return self.max_model_len - self.max_new_tokens


def make_engine(cfg: SynthesizeConfig) -> Engine:
    if cfg.engine == "rules":
        from ipt.synth.rules import RulesEngine

        return RulesEngine(
            cfg.tokenizer or "mistral-v1", max_model_len=cfg.max_model_len, max_pairs=cfg.max_pairs
        )
    if cfg.engine == "hf":
        from ipt.synth.engines import HFEngine

        return HFEngine(
            cfg.model,
            cfg.tokenizer,
            max_model_len=cfg.max_model_len,
            batch_size=cfg.batch_size,
            device=cfg.device,
            dtype=cfg.dtype,
        )
    if cfg.engine == "jax":
        from ipt.synth.engines import JAXEngine

        return JAXEngine(cfg.model, cfg.tokenizer, max_model_len=cfg.max_model_len, batch_size=cfg.batch_size)
    from ipt.synth.engines import VLLMEngine

    return VLLMEngine(
        cfg.model,
        cfg.tokenizer,
        max_model_len=cfg.max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size,
        dtype=cfg.dtype,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        enable_prefix_caching=cfg.enable_prefix_caching,
        seed=cfg.seed,
        extra=cfg.vllm_kwargs,
    )


def chunk_paths(out: Path, chunk: int) -> tuple[Path, Path]:
    return out / f"chunk-{chunk:06d}.jsonl", out / f"chunk-{chunk:06d}.stats.json"


def claim(cfg: SynthesizeConfig, files: list[Path]) -> dict[str, Any]:
    """Record or check this run's identity in output_dir; clear temps of this shard's chunks."""
    out = Path(cfg.output_dir)
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NOT_OUTPUT_DECIDING}
    settings["format"] = OUTPUT_FORMAT

    def discard() -> None:
        for path in out.iterdir():
            if CHUNK_FILE.fullmatch(path.name) or path.name.startswith("stats.shard-"):
                path.unlink()

    identity = claim_output_dir(out, "synthesize", settings, files, cfg.on_change, discard)

    def owns(target: Path) -> bool:
        match = CHUNK_FILE.fullmatch(str(target))
        return match is not None and cfg.owns(int(match.group(1)))

    remove_stale_temps(out, owns)
    return identity


@dataclass(frozen=True)
class Chunk:
    """`chunk_texts` consecutive input records; its index names its output files."""

    index: int
    docs: list[Document]


def _chunks(docs: Iterator[Document], size: int) -> Iterator[Chunk]:
    """Consecutive records grouped into chunks, numbered from 0."""
    buf: list[Document] = []
    index = 0
    for doc in docs:
        buf.append(doc)
        if len(buf) == size:
            yield Chunk(index, buf)
            buf, index = [], index + 1
    if buf:
        yield Chunk(index, buf)


@dataclass
class Tally:
    """What a run counted: chunk stats (done before and now), skipped input lines, chunks."""

    stats: Counter = field(default_factory=Counter)
    reading: Counter = field(default_factory=Counter)
    chunks: Counter = field(default_factory=Counter)

    def add_done(self, stats: dict[str, Any], key: str) -> None:
        self.stats.update({k: v for k, v in stats.items() if k != "pairs_per_text"})
        self.chunks[key] += 1


def completed_stats(out: Path, index: int) -> dict[str, Any] | None:
    """The stats of chunk `index` if it is done (its marker valid, its collections in place)."""
    data_path, stats_path = chunk_paths(out, index)
    marker = read_marker(stats_path, data_path)
    return None if marker is None else unit_fields(marker)


def pending_chunks(cfg: SynthesizeConfig, files: list[Path], tally: Tally) -> Iterator[Chunk]:
    """This shard's chunks that have no completion marker, in order; complete ones go to `tally`.

    Reading is lazy: a malformed line raises BadInputError when its chunk is reached."""
    out = Path(cfg.output_dir)
    records = iter_records(files, skip_bad=cfg.skip_bad, stats=tally.reading)
    for chunk in _chunks(records, cfg.chunk_texts):
        tally.chunks["chunks_total"] += 1
        if not cfg.owns(chunk.index):
            continue
        done = completed_stats(out, chunk.index)
        if done is not None:
            tally.add_done(done, "chunks_already_done")
            continue
        yield chunk


def synthesize_chunk(
    cfg: SynthesizeConfig,
    engine: Engine,
    chunk: Chunk,
    on_round: Callable[[int, int, int, int], None] | None = None,
) -> dict[str, Any]:
    """Synthesize one chunk, write its collections, then its stats (the completion marker)."""
    stats: Counter = Counter()
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.seed)
    texts = prepare_texts(cfg, chunk.docs, engine, stats)
    chains = synthesize_chains(texts, cfg.rounds, engine, sampling, cfg.budget, stats, on_round)
    stats["collections"] = len(chains)
    lines = "".join(collection_line(c) for c in chains)
    data_path, stats_path = chunk_paths(Path(cfg.output_dir), chunk.index)
    atomic_write_text(data_path, lines)
    summary = summarize(stats)
    write_marker(stats_path, data_path, **summary)
    return summary


def prepare_texts(cfg: SynthesizeConfig, docs: list[Document], engine: Engine, stats: Counter) -> list[str]:
    """Texts of a chunk, stripped; empty ones skipped; long ones truncated or skipped (counted)."""
    texts = []
    for doc in docs:
        value = get_field(doc, cfg.text_field)
        if not isinstance(value, str):
            raise BadInputError(
                f"{doc.where}: field {cfg.text_field!r} must be a string, got {type(value).__name__}"
            )
        stats["input_records"] += 1
        if value.strip():
            texts.append(value.strip())
        else:
            stats["empty_texts"] += 1
    overhead = engine.count_tokens([wire.reading_part("")])[0]
    kept = []
    for text, n in zip(texts, engine.count_tokens([wire.reading_part(t) for t in texts]), strict=True):
        if n <= cfg.budget:
            kept.append(text)
        elif cfg.long_text == "skip":
            stats["long_texts_skipped"] += 1
        else:
            stats["long_texts_truncated"] += 1
            limit = cfg.budget - overhead
            cut = engine.truncate(text, limit)
            while engine.count_tokens([wire.reading_part(cut)])[0] > cfg.budget:  # merges at the edges
                limit -= 1
                cut = engine.truncate(text, limit)
            kept.append(cut)
    return kept


class Progress:
    """A progress bar with texts/s, pairs/text and prompt/generated tokens per second."""

    def __init__(self, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(unit="text", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.start = time.perf_counter()
        self.totals = Counter()

    def __call__(self, texts: int, pairs: int, prompt_tokens: int, generated_tokens: int) -> None:
        t = self.totals
        t.update(texts=texts, pairs=pairs, prompt=prompt_tokens, generated=generated_tokens)
        dt = max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(texts)
        self.bar.set_postfix_str(
            f"pairs/text={t['pairs'] / max(t['texts'], 1):.2f} prompt_tok/s={t['prompt'] / dt:.0f} "
            f"gen_tok/s={t['generated'] / dt:.0f}"
        )

    def close(self) -> None:
        self.bar.close()


STAT_KEYS = (
    "input_records",
    "empty_texts",
    "long_texts_truncated",
    "long_texts_skipped",
    "texts",
    "pairs",
    "zero_pair_texts",
    "parse_failures",
    "duplicate_questions",
    "truncated_generations",
    "inherited_entries",
    "chains_broken_by_zero_pairs",
    "chains_broken_by_length",
    "collections",
    "prompt_tokens",
    "generated_tokens",
)


def summarize(counts: Counter) -> dict[str, Any]:
    """Every stat key (zeros included), then pairs per text."""
    out: dict[str, Any] = {k: counts.get(k, 0) for k in STAT_KEYS}
    out.update(sorted((k, v) for k, v in counts.items() if k not in out))
    out["pairs_per_text"] = round(counts["pairs"] / counts["texts"], 4) if counts["texts"] else 0.0
    return out


def _run_locally(cfg: SynthesizeConfig, chunks: Iterator[Chunk], tally: Tally, progress: Progress) -> None:
    """One engine in this process, loaded only if some chunk is left to do."""
    engine: Engine | None = None
    try:
        for chunk in chunks:
            engine = engine or make_engine(cfg)
            tally.add_done(synthesize_chunk(cfg, engine, chunk, progress), "chunks_done_now")
    finally:
        if engine is not None:
            engine.close()


def _write_summary(cfg: SynthesizeConfig, tally: Tally, seconds: float, texts_now: int) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    summary = summarize(tally.stats)
    summary.update({k: tally.reading.get(k, 0) for k in ("bad_lines", "non_utf8_lines")})
    summary.update(
        {k: tally.chunks.get(k, 0) for k in ("chunks_total", "chunks_already_done", "chunks_done_now")}
    )
    summary.update(sorted((k, v) for k, v in tally.chunks.items() if k not in summary))
    summary.update(shard=cfg.shard, num_shards=cfg.num_shards, seconds=round(seconds, 3))
    summary["texts_per_second_now"] = round(texts_now / seconds, 3) if seconds else 0.0
    name = f"stats.shard-{cfg.shard:05d}-of-{cfg.num_shards:05d}.json"
    atomic_write_text(out / name, json.dumps(summary, indent=1) + "\n")
    print(
        f"ipt synthesize: shard {cfg.shard}/{cfg.num_shards}: {summary.get('texts', 0)} texts, "
        f"{summary['pairs_per_text']} pairs/text, {summary['chunks_done_now']} chunks written, "
        f"{summary['chunks_already_done']} already done -> {out / name}",
        file=sys.stderr,
    )
    return summary


def synthesize(cfg: SynthesizeConfig) -> dict[str, Any]:
    """Run shard `cfg.shard` of `cfg.num_shards`; return the shard's stats (also written to disk)."""
    files = expand_inputs(cfg.input)
    identity = claim(cfg, files)
    execute = _run_locally
    if cfg.executor == "ray":
        try:
            from ipt.synth.cluster import run_on_ray
        except ModuleNotFoundError as e:
            if e.name != "ray":
                raise
            raise UsageError("executor=ray needs Ray: pip install 'ipt[ray]'") from None
        execute = run_on_ray
    tally = Tally()
    progress = Progress(cfg.progress)
    start = time.perf_counter()
    try:
        execute(cfg, pending_chunks(cfg, files, tally), tally, progress)
    finally:
        progress.close()
    summary = _write_summary(cfg, tally, time.perf_counter() - start, progress.totals["texts"])
    _complete_if_all_done(cfg, identity, tally.chunks["chunks_total"])
    return summary


def _complete_if_all_done(cfg: SynthesizeConfig, identity: dict[str, Any], num_chunks: int) -> None:
    """Write ipt_complete.json once every chunk (of every shard) is done."""
    out = Path(cfg.output_dir)
    done = [completed_stats(out, c) for c in range(num_chunks)]
    if any(d is None for d in done):
        return
    totals: Counter = Counter()
    for d in done:
        totals.update({k: v for k, v in d.items() if k != "pairs_per_text"})
    counts = summarize(totals)
    outputs = [chunk_paths(out, c)[0].name for c in range(num_chunks)]
    write_completion(out, identity, outputs, counts)


def main(argv: list[str] | None = None) -> int:
    def _run(cfg: SynthesizeConfig) -> int:
        synthesize(cfg)  # bad input and usage errors: ipt.stage prints one line, exit 2
        return 0

    return run_stage(SynthesizeConfig, _run, sys.argv[1:] if argv is None else argv, prog="ipt synthesize")
