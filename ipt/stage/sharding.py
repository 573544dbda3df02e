"""Splitting one stage's work among runs that never talk to each other.

Work units (input files, chunks) are numbered in an order that does not depend on the split;
unit i belongs to shard `i % num_shards`. So any number of hosts can share a job, a job may be
re-split between restarts, and the outputs of a unit never depend on who made them.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ipt.config import Config

SHARD_KEYS = frozenset({"shard", "num_shards"})


class ShardedConfig(Config):
    """The `shard`/`num_shards` keys of every stage that splits its work among runs."""

    shard: int = Field(0, ge=0, description="this run's index when num_shards runs split the work")
    num_shards: int = Field(1, ge=1, description="runs splitting the work (no coordinator)")

    @model_validator(mode="after")
    def _shard_below_num_shards(self) -> ShardedConfig:
        if self.shard >= self.num_shards:
            raise ValueError(f"shard={self.shard} must be below num_shards={self.num_shards}")
        return self

    def owns(self, unit: int) -> bool:
        """Whether work unit `unit` is this run's."""
        return unit % self.num_shards == self.shard
