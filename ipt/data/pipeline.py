"""The training input pipeline on grain: shard directories -> mixed, shuffled, packed numpy batches.

Per source: ArrayRecord documents, this host's slice, a global shuffle reseeded every epoch,
repeat. The sources are interleaved by grain's deterministic weighted mix (token weights turned
into document weights), packed into rows of `seq_len + 1` tokens and batched. The result is a
grain `DatasetIterator` whose `get_state()` is a small JSON-able dict: saving it with the model
checkpoint and calling `set_state()` on a fresh iterator resumes exactly where training stopped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ipt.config import Config
from ipt.data.sources import SourceConfig


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
    pack_bins: int = Field(
        64, gt=0, description="pack mode: rows filled at once by first-fit (more bins, less padding)"
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
    read_threads: int = Field(2, ge=0, description="threads reading records in each process")
    read_buffer_size: int = Field(256, ge=0, description="documents read ahead in each process")

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataConfig:
        for key in ("sources", "eval_sources"):
            names = [s.name for s in getattr(self, key)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{key}: source names must be unique; repeated: {dupes}")
        return self
