"""The training loop: batches in, steps dispatched, metrics and checkpoints out, preemption-safe.

The host never waits for the step it just dispatched: after launching step t it reads step
t-1's metrics (already done or nearly), so logging overlaps device work; batches are read in
a background thread. Each batch travels with the iterator state *after* it, and a checkpoint
at step t stores the state that goes with the batch of step t, so a resumed run reads exactly
the batches the interrupted run would have read next.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ipt.stage.files import atomic_write_text
from ipt.train.checkpoint import Checkpointer, PreemptionWatcher
from ipt.train.metrics import MetricsWriter, Throughput

log = logging.getLogger(__name__)

EXIT_NONFINITE = 3


class NonFiniteError(RuntimeError):
    """Training stopped because of NaN/Inf gradients (a checkpoint of the last good state was saved)."""


class BatchPrefetcher:
    """Reads `(batch, iterator state after it)` pairs ahead in a thread; re-raises its errors."""

    _END = object()

    def __init__(self, iterator: Any, depth: int = 2):
        self._iterator = iterator
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._iterator:
                item = (batch, self._iterator.get_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._queue.put(e)

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        return self

    def __next__(self) -> tuple[dict, dict]:
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """This host's rows -> one global array per key, split over the mesh's batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


class Loop:
    """Runs steps `start+1 .. total`, with eval, logging, checkpoints and the non-finite policy."""

    def __init__(
        self,
        *,
        watcher: PreemptionWatcher,
        train_step: Callable,
        eval_fn: Callable[[dict], dict[str, float]] | None,
        rest: Any,
        batch_sharding: jax.sharding.NamedSharding,
        checkpointer: Checkpointer,
        writer: MetricsWriter,
        throughput: Throughput,
        total_steps: int,
        log_every: int = 1,
        eval_every: int | None = None,
        nonfinite: str = "stop",
        max_skipped_in_a_row: int = 10,
    ):
        self.watcher = watcher
        self.train_step = train_step
        self.eval_fn = eval_fn
        self.rest = rest
        self.batch_sharding = batch_sharding
        self.checkpointer = checkpointer
        self.writer = writer
        self.throughput = throughput
        self.total_steps = total_steps
        self.log_every = log_every
        self.eval_every = eval_every
        self.nonfinite = nonfinite
        self.max_skipped_in_a_row = max_skipped_in_a_row
        self._skipped_in_a_row = 0
        self._last_saved: int | None = None

    def _save(self, step: int, state: dict, data_state: dict | None) -> None:
        if step != self._last_saved:
            self.checkpointer.save(step, state, data_state, force=True)
            self._last_saved = step

    def run(self, state: dict, batches: BatchPrefetcher, data_state: dict | None) -> tuple[dict, str]:
        """Train to `total_steps`; returns the final state and why it stopped (done | preempted)."""
        step = int(jax.device_get(state["step"]))
        if step > 0:
            self._last_saved = step  # the checkpoint this run resumed from
        if self.watcher.signalled.is_set():  # a signal during start-up: no step ran, nothing to save
            return state, "stopped by a signal during start-up (no step ran, nothing saved)"
        pending: tuple[int, dict] | None = None
        manager = self.checkpointer.manager
        while step < self.total_steps:
            try:
                batch, next_data_state = next(batches)
            except StopIteration:
                self.writer.message(f"data exhausted after step {step}; stopping")
                break
            state, metrics = self.train_step(state, to_global(batch, self.batch_sharding), self.rest)
            step += 1
            data_state = next_data_state
            if pending is not None:
                self._report(*pending, state, data_state)
            pending = (step, metrics)
            if self.eval_every and step % self.eval_every == 0 and self.eval_fn is not None:
                self._report(*pending, state, data_state)
                pending = None
                self.writer.write(step, self.eval_fn(state["params"]))
                self.throughput.reset()
            if step == self.total_steps or self.checkpointer.due(step):
                self._save(step, state, data_state)
            if self.watcher.should_stop(step, manager):
                if pending is not None:
                    self._report(*pending, state, data_state)
                self._save(step, state, data_state)
                self.checkpointer.wait()
                self.writer.message(f"preempted: saved a checkpoint at step {step}; exiting")
                return state, "preempted"
        if pending is not None:
            self._report(*pending, state, data_state)
        self._save(step, state, data_state)
        self.checkpointer.wait()
        return state, "done"

    def _report(self, step: int, metrics: dict, state: dict, data_state: dict | None) -> None:
        values = jax.device_get(metrics)
        values.update(self.throughput.tick())
        finite = bool(values.pop("finite"))
        if step % self.log_every == 0 or step == self.total_steps or not finite:
            self.writer.write(step, values)
        if finite:
            self._skipped_in_a_row = 0
            return
        self._skipped_in_a_row += 1
        if self.nonfinite == "skip" and self._skipped_in_a_row < self.max_skipped_in_a_row:
            self.writer.message(f"step {step}: non-finite loss or gradients; update skipped")
            return
        # The bad steps changed nothing (apply_if_finite), so the current state is a good one.
        current = int(jax.device_get(state["step"]))
        self._save(current, state, data_state)
        self.checkpointer.wait()
        why = (
            "non-finite loss or gradients"
            if self.nonfinite == "stop"
            else f"{self._skipped_in_a_row} steps in a row with non-finite loss or gradients"
        )
        raise NonFiniteError(
            f"step {step}: {why} (loss={values.get('loss')}, grad_norm={values.get('grad_norm')}); "
            f"saved the last good state as checkpoint {current} in {self.checkpointer.directory}. "
            "Lower the learning rate, check the data around this step, or set nonfinite=skip."
        )


def write_run_file(path: Path, text: str) -> None:
    if jax.process_index() == 0:
        atomic_write_text(path, text)


def fail(message: str, code: int) -> int:
    print(f"ipt train: error: {message}", file=sys.stderr)
    return code
