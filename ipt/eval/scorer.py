"""The JAX scorer: log-likelihoods and greedy continuations from ipt's model, on a device mesh.

`Scorer.loglikelihood` lays requests out as packed rows of a few bucket widths (`ipt.eval.rows`)
and runs one jitted function per width that returns, for every segment of every row, the
summed target log-probability, the number of target tokens and whether each target was the
argmax. Parameters are sharded with the training rules table and rows split over the batch
axes, so evaluation runs on the mesh a model trained on. With several processes, process 0
drives (lm-eval runs there) and the others call `serve()`: every call is broadcast to them,
so all hosts run the same programs on the same arrays in lockstep.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from pydantic import Field

from ipt.config import Config
from ipt.eval import rows as rowlib
from ipt.model import ModelConfig
from ipt.model.attention import kernel_layout
from ipt.model.generate import generate
from ipt.model.modules import abstract_model
from ipt.train.mesh import LogicalRules, MeshConfig

log = logging.getLogger(__name__)

_SCORE, _GENERATE, _STOP = 1, 2, 3
_HEADER = 4  # command, rows, width, max_new_tokens


class ScorerConfig(Config):
    """How requests are laid out on devices."""

    max_length: int = Field(2048, gt=1, description="tokens per request; longer contexts are left-truncated")
    batch_rows: int = Field(
        8, gt=0, description="rows per scoring call (a multiple of the mesh's batch shards)"
    )
    min_width: int = Field(64, gt=0, description="narrowest bucket; buckets double up to max_length")
    pack: bool = Field(True, description="pack several short requests into one row (segment ids)")
    max_segments: int = Field(16, gt=0, description="most requests packed into one row")
    target_share: float = Field(
        0.5, gt=0, le=1, description="scored positions per row, as a share of its width (the widest: all)"
    )
    mesh: MeshConfig = Field(default_factory=MeshConfig)


class Score(NamedTuple):
    logprob: float  # summed log-probability of the target tokens
    num_tokens: int
    greedy: bool  # every target token was the argmax


@dataclasses.dataclass(frozen=True)
class _Parts:
    graphdef: nnx.GraphDef
    rest: nnx.State


def segment_scores(
    logits: jax.Array, target_ids: jax.Array, target_segment: jax.Array, num_segments: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Logits at the target slots [rows, slots, vocab] -> per (row, segment k = 1..num_segments):
    summed target log-prob, target count, whether every target was the argmax."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, target_ids[..., None], axis=-1)[..., 0]
    logprob = target_logit - jax.nn.logsumexp(logits, axis=-1)
    is_argmax = jnp.argmax(logits, axis=-1) == target_ids
    member = target_segment[..., None] == jnp.arange(1, num_segments + 1)
    summed = jnp.sum(jnp.where(member, logprob[..., None], 0.0), axis=1)
    count = jnp.sum(member, axis=1, dtype=jnp.int32)
    greedy = ~jnp.any(member & ~is_argmax[..., None], axis=1)
    return summed, count, greedy


class Scorer:
    """Scores token requests with one model on one mesh; see the module docstring."""

    def __init__(
        self,
        config: ModelConfig,
        params: dict,
        cfg: ScorerConfig,
        rules: LogicalRules,
        eos_ids: Sequence[int] | None = None,
    ):
        self.config = config
        self.eos_ids = tuple(config.eos_ids if eos_ids is None else eos_ids)
        shards = rules.batch_shards
        if cfg.batch_rows % shards:  # every device gets whole rows
            rounded = -(-cfg.batch_rows // shards) * shards
            log.info(
                "batch_rows=%d rounded up to %d, a multiple of the mesh's %d batch shards",
                cfg.batch_rows,
                rounded,
                shards,
            )
            cfg = cfg.model_copy(update={"batch_rows": rounded})
        self.cfg = cfg
        self.rules = rules
        min_width = max(cfg.min_width, 128) if config.attention == "splash" else cfg.min_width
        self.buckets = rowlib.Buckets(
            rowlib.bucket_widths(cfg.max_length, min(min_width, cfg.max_length)), cfg.target_share
        )
        self.widths = self.buckets.widths
        graphdef, _, rest = nnx.split(abstract_model(config), nnx.Param, ...)
        self._parts = _Parts(graphdef, rest)
        self.params = params
        self.compilations = 0  # scoring programs traced so far (at most one per bucket width)
        self._score_fn = self._make_score_fn()

    def _make_score_fn(self) -> Callable:
        parts, rules, k = self._parts, self.rules, self.cfg.max_segments

        def score(params: dict, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
            self.compilations += 1  # runs once per trace
            model = nnx.merge(parts.graphdef, params, parts.rest)
            with kernel_layout(rules.mesh, rules.spec):
                hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
            at_targets = jnp.take_along_axis(hidden, batch["target_index"][..., None], axis=1)
            logits = model.head(at_targets)  # only the scored positions reach the LM head
            return segment_scores(logits, batch["target_ids"], batch["target_segment"], k)

        keys = rowlib.TOKEN_KEYS + rowlib.TARGET_KEYS
        batch_sharding = {key: rules.batch_sharding() for key in keys}
        shardings = jax.tree.map(lambda a: a.sharding, self.params)
        return jax.jit(score, in_shardings=(shardings, batch_sharding), out_shardings=rules.replicated())

    # ------------------------------------------------------------------ scoring

    def loglikelihood(
        self,
        requests: Sequence[tuple[Sequence[int], Sequence[int]]],
        progress: Callable[[int], None] | None = None,
    ) -> list[Score]:
        """(context ids, continuation ids) -> Score of the continuation; contexts left-truncated."""
        windows = [rowlib.window(ctx, cont, self.cfg.max_length) for ctx, cont in requests]
        return self.score_windows(windows, progress)

    def score_windows(
        self, windows: Sequence[rowlib.Request], progress: Callable[[int], None] | None = None
    ) -> list[Score]:
        plan = rowlib.plan_rows(
            [w.length for w in windows],
            [w.num_targets for w in windows],
            self.buckets,
            self.cfg.max_segments,
            pack=self.cfg.pack,
        )
        out: list[Score | None] = [None] * len(windows)
        for width, group in rowlib.batches(plan, self.cfg.batch_rows):
            arrays = rowlib.fill_rows(group, windows, width, self.buckets.slots(width))
            arrays = {k: _pad_rows(v, self.cfg.batch_rows) for k, v in arrays.items()}
            summed, count, greedy = self._call(_SCORE, arrays, width=width)
            for r, row in enumerate(group):
                for k, i in enumerate(row.members):
                    out[i] = Score(float(summed[r, k]), int(count[r, k]), bool(greedy[r, k]))
            if progress is not None:
                progress(sum(len(row.members) for row in group))
        return out  # type: ignore[return-value]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations (new tokens, eos included), `batch_rows` prompts at a time, each
        batch left-padded to a bucket width so that varied prompts share compiled programs."""
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        out: list[list[int]] = [[] for _ in prompts]
        rows = self.cfg.batch_rows
        for start in range(0, len(order), rows):
            idx = order[start : start + rows]
            batch = [list(prompts[i]) for i in idx]
            width = next(w for w in self.widths if w >= len(batch[0])) if batch[0] else self.widths[0]
            tokens, real = _left_pad(batch + [[0]] * (rows - len(batch)), width)
            new = self._call(_GENERATE, {"tokens": tokens, "real": real}, width=width, max_new=max_new_tokens)
            for i, row in zip(idx, new, strict=False):
                stop = next((k + 1 for k, t in enumerate(row) if t in self.eos_ids), len(row))
                out[i] = [int(t) for t in row[:stop]]
        return out

    def _generate_rows(self, tokens: np.ndarray, real: np.ndarray, max_new: int) -> np.ndarray:
        model = nnx.merge(self._parts.graphdef, self.params, self._parts.rest)
        prompts = [list(t[m]) for t, m in zip(tokens, real, strict=True)]
        new = generate(
            model,
            prompts,
            max_new,
            eos_ids=self.eos_ids,
            pad_to_multiple=tokens.shape[1],
            input_sharding=self.rules.replicated(),
        )
        return np.asarray([row + [0] * (max_new - len(row)) for row in new], np.int32)

    # ------------------------------------------------------------------ lockstep across hosts

    def _call(self, command: int, arrays: dict[str, np.ndarray], width: int, max_new: int = 0) -> Any:
        rows = next(iter(arrays.values())).shape[0]
        if jax.process_count() > 1:
            multihost_utils.broadcast_one_to_all(np.asarray([command, rows, width, max_new], np.int32))
            arrays = multihost_utils.broadcast_one_to_all(arrays)
        return self._execute(command, arrays, max_new)

    def _execute(self, command: int, arrays: dict[str, np.ndarray], max_new: int) -> Any:
        if command == _GENERATE:
            return self._generate_rows(
                np.asarray(arrays["tokens"]), np.asarray(arrays["real"], bool), max_new
            )
        sharding = self.rules.batch_sharding()
        placed = {k: _global_array(np.asarray(v), sharding) for k, v in arrays.items()}
        return jax.device_get(self._score_fn(self.params, placed))

    def serve(self) -> None:
        """On processes other than 0: run every call process 0 makes, until it calls `stop()`."""
        while True:
            header = multihost_utils.broadcast_one_to_all(np.zeros(_HEADER, np.int32))
            command, rows, width, max_new = (int(x) for x in header)
            if command == _STOP:
                return
            if command == _SCORE:
                slots = self.buckets.slots(width)
                template = {k: np.zeros((rows, width), np.int32) for k in rowlib.TOKEN_KEYS}
                template.update({k: np.zeros((rows, slots), np.int32) for k in rowlib.TARGET_KEYS})
            else:
                template = {
                    "tokens": np.zeros((rows, width), np.int32),
                    "real": np.zeros((rows, width), bool),
                }
            self._execute(command, multihost_utils.broadcast_one_to_all(template), max_new)

    def stop(self) -> None:
        """On process 0: release the processes waiting in `serve()`."""
        if jax.process_count() > 1:
            multihost_utils.broadcast_one_to_all(np.asarray([_STOP, 0, 0, 0], np.int32))


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """Append all-zero rows (segment 0: nothing scored) up to a fixed row count."""
    return (
        np.concatenate([a, np.zeros((rows - a.shape[0], *a.shape[1:]), a.dtype)]) if a.shape[0] < rows else a
    )


def _left_pad(prompts: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(prompts), width), np.int32)
    real = np.zeros((len(prompts), width), bool)
    for r, p in enumerate(prompts):
        tokens[r, width - len(p) :] = p
        real[r, width - len(p) :] = True
    return tokens, real


def _global_array(a: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Every host holds the same full array; each places the shards its devices own."""
    return jax.make_array_from_callback(a.shape, sharding, functools.partial(_index, a))


def _index(a: np.ndarray, idx: Any) -> np.ndarray:
    return a[idx]
