"""The training input pipeline on grain: shard directories -> mixed, shuffled, packed numpy batches.

Per source: ArrayRecord documents, this host's slice, a global shuffle reseeded every epoch,
repeat. The sources are interleaved by grain's deterministic weighted mix (token weights turned
into document weights), fetched in blocks of `docs_per_read` documents (batched reads), packed
into rows of `seq_len + 1` tokens and batched. The result is a
grain `DatasetIterator` whose `get_state()` is a small JSON-able dict: saving it with the model
checkpoint and calling `set_state()` on a fresh iterator resumes exactly where training stopped.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import grain
from pydantic import Field, model_validator

from ipt.config import Config
from ipt.data.block_packing import PackBlocks
from ipt.data.integrity import ShardError, VerifyPolicy, remedy, wait_for_checksums
from ipt.data.packing import (
    MASK,
    TOKENS,
    ArrayRecordSource,
    ConcatBlock,
    DecodeDocument,
    ReadInBlocks,
    RowsToBatch,
)
from ipt.data.records import Manifest, shard_paths
from ipt.data.sources import SourceConfig, document_weights, open_sources

# ~2 s of sha256 on one core of this machine (1.1 GB/s from the page cache): small sources, such
# as the instruction-augmented ones, are checked; a 100B-token pre-training corpus is not.
DEFAULT_VERIFY_MAX_BYTES = 2 << 30


class DataConfig(Config):
    """The training data: which shard directories, in what proportions, cut into which rows."""

    sources: list[SourceConfig] = Field(min_length=1, description="training shard directories and weights")
    eval_sources: list[SourceConfig] = Field(
        default_factory=list, description="held-out shard directories (read once, unshuffled, in order)"
    )
    seq_len: int = Field(2048, gt=1, description="tokens per row (inputs and targets each)")
    batch_size: int = Field(8, gt=0, description="global rows per step; each host reads batch_size / hosts")
    packing: Literal["concat", "pack"] = Field(
        "concat",
        description="concat: GPT-3 style stream cut into rows; pack: whole documents per row with segment ids",
    )
    seed: int = Field(0, ge=0, lt=2**31, description="shuffle seed (every epoch is shuffled differently)")
    shuffle: bool = Field(True, description="global shuffle of the documents of each source")
    num_epochs: int | None = Field(
        None,
        gt=0,
        description="passes over the data; None repeats forever (a mix ends with its first source)",
    )
    worker_count: int = Field(0, ge=0, description="grain worker processes (0: all in the training process)")
    worker_buffer_size: int = Field(2, gt=0, description="batches buffered per worker process")
    docs_per_read: int = Field(1024, gt=0, description="documents fetched per batched ArrayRecord read")
    read_threads: int = Field(
        0, ge=0, description="threads reading ahead in each process (0 suits local disks: no GIL contention)"
    )
    read_buffer_size: int = Field(4, ge=0, description="blocks of docs_per_read documents read ahead")
    verify_checksums: VerifyPolicy = Field(
        "auto",
        description="sha256 of every shard before training reads it: always, never, or auto "
        "(sources of at most verify_max_bytes); sizes are always checked",
    )
    verify_max_bytes: int = Field(
        DEFAULT_VERIFY_MAX_BYTES, ge=0, description="verify_checksums=auto hashes sources up to this size"
    )

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataConfig:
        for key in ("sources", "eval_sources"):
            names = [s.name for s in getattr(self, key)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{key}: source names must be unique; repeated: {dupes}")
        return self


def make_batch_iterator(
    cfg: DataConfig, *, process_index: int | None = None, process_count: int | None = None
) -> grain.DatasetIterator:
    """The training batches of this host: an endless (or `num_epochs`) stream of numpy dicts.

    Each batch holds `inputs`, `targets`, `segment_ids`, `positions` and `loss_mask`, all int32
    of shape [batch_size / process_count, seq_len]. Hosts default to JAX's process index/count.
    It returns after the sha256 checks that `integrity.check_sources` started (if any) passed.
    """
    wait_for_checksums([*cfg.sources, *cfg.eval_sources])
    return make_dataset(cfg, cfg.sources, process_index=process_index, process_count=process_count).__iter__()


def make_eval_iterators(
    cfg: DataConfig, *, process_index: int | None = None, process_count: int | None = None
) -> dict[str, grain.DatasetIterator]:
    """One finite pass over each eval source, in record order; the last batch is padded rows.

    Eval sets are small and often read only in part, so they run without worker processes.
    """
    one_pass = cfg.model_copy(update={"shuffle": False, "num_epochs": 1, "worker_count": 0})
    return {
        src.name: make_dataset(
            one_pass, [src], process_index=process_index, process_count=process_count
        ).__iter__()
        for src in cfg.eval_sources
    }


def make_dataset(
    cfg: DataConfig,
    sources: list[SourceConfig],
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """The grain dataset behind `make_batch_iterator` (mixture, shuffle, packing, batching)."""
    process_index, process_count = _host(process_index, process_count)
    if cfg.batch_size % process_count:
        raise ValueError(
            f"batch_size={cfg.batch_size} is not divisible by the {process_count} hosts; "
            "every host must read the same number of rows"
        )
    manifests = open_sources(sources)
    with_mask = any(m.has_loss_mask for m in manifests)
    docs = []
    for i, (src, manifest) in enumerate(zip(sources, manifests, strict=True)):
        ds = grain.MapDataset.source(_open_source(src, manifest))
        if len(ds) < process_count:
            raise ValueError(
                f"source {src.name!r} ({src.path}) has fewer documents than the {process_count} hosts"
            )
        ds = ds[process_index::process_count]
        if cfg.shuffle:
            ds = ds.shuffle(seed=(cfg.seed * 1_000_003 + i) % 2**32)
        ds = ds.repeat(cfg.num_epochs)
        docs.append(ds.map(_decoder(cfg, src, manifest, with_mask)))
    mixed = docs[0] if len(docs) == 1 else grain.MapDataset.mix(docs, document_weights(sources, manifests))
    blocks = ReadInBlocks(mixed, cfg.docs_per_read)
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_buffer_size)
    row_len = cfg.seq_len + 1
    if cfg.packing == "concat":
        lengths = {TOKENS: row_len, **({MASK: row_len} if with_mask else {})}
        rows = grain.experimental.ConcatThenSplitIterDataset(
            blocks.map(ConcatBlock()).to_iter_dataset(read), length_struct=lengths
        )
    else:
        rows = PackBlocks(blocks.to_iter_dataset(read), row_len, seed=cfg.seed, shuffle_rows=cfg.shuffle)
    local_batch = cfg.batch_size // process_count
    batches = rows.batch(
        local_batch, batch_fn=functools.partial(grain.experimental.batch_and_pad, batch_size=local_batch)
    ).map(RowsToBatch(pack=cfg.packing == "pack"))
    if cfg.worker_count:
        _allow_unparsed_absl_flags()
        batches = batches.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size
            )
        )
    return _JsonStateIterDataset(batches)


def _open_source(src: SourceConfig, manifest: Manifest) -> ArrayRecordSource:
    """The source's shards as one grain source; a shard whose record count is not the manifest's is refused."""
    paths = shard_paths(src.path, manifest)
    source = ArrayRecordSource([str(p) for p in paths])
    for shard, path, count in zip(manifest.shards, paths, source.records_per_file(), strict=True):
        if count != shard.num_docs:
            raise ShardError(
                f"source {src.name!r}: {path} holds {count} records, but manifest.json says "
                f"{shard.num_docs}; {remedy(src.path)}"
            )
    return source


def _decoder(cfg: DataConfig, src: SourceConfig, manifest: Manifest, with_mask: bool) -> DecodeDocument:
    append_eos = None
    if cfg.packing == "concat" and not manifest.add_eos:
        if manifest.tokenizer.eos_id is None:
            raise ValueError(
                f"source {src.name!r} ({src.path}): packing=concat separates documents with eos, "
                f"but the tokenizer {manifest.tokenizer.name!r} has none; use packing=pack"
            )
        append_eos = manifest.tokenizer.eos_id
    return DecodeDocument(
        dtype=manifest.dtype, has_loss_mask=manifest.has_loss_mask, with_mask=with_mask, append_eos=append_eos
    )


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    return process_index, process_count


class _JsonStateIterDataset(grain.IterDataset):
    """Passes batches through; its iterator accepts a state that went through JSON.

    grain's ConcatThenSplit packer compares its saved slices with a tuple sentinel, so after a
    JSON round trip (tuples become lists, as in Orbax's grain checkpoint handler) it would take
    "no remainder" for an empty remainder and silently skip a block of documents. Restoring the
    tuples fixes that.
    """

    def __iter__(self) -> grain.DatasetIterator:
        return _JsonStateIterator(self._parent.__iter__())


class _JsonStateIterator(grain.DatasetIterator):
    def __next__(self) -> dict:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(_slices_as_tuples(state))

    def close(self) -> None:
        self._parent.close()


def _slices_as_tuples(state: Any) -> Any:
    if isinstance(state, dict):
        return {
            k: {f: tuple(sl) for f, sl in v.items()} if k == "remainder_slices" else _slices_as_tuples(v)
            for k, v in state.items()
        }
    if isinstance(state, list):
        return [_slices_as_tuples(v) for v in state]
    return state


def _allow_unparsed_absl_flags() -> None:
    """grain's worker processes read an absl flag, which fails unless flags were parsed (grain#1355)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
