"""Orbax checkpoints of the train state plus the data iterator's state, and preemption handling.

Each step directory holds three items: `state` (step, parameters, optimizer state; sharded
arrays written by every host), `data` (each host's grain iterator state, one JSON file per
process through grain's own Orbax handler), so a resumed run draws exactly the batches the
interrupted run would have drawn next, on every host, and `checksums` (per-array content
sums of `state`, ipt.train.checksum), checked after every restore. Orbax writes a step
under a temporary name and renames it when complete, so a crash mid-save leaves nothing that
looks finished; a finished step that still fails to restore, or restores with other contents
than were saved, is reported in one line, the next older one is tried, and the damaged one is
moved aside once an older one restores.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from pydantic import Field

from ipt.config import Config
from ipt.train.checksum import state_checksums, verify_checksums

log = logging.getLogger(__name__)


class CheckpointConfig(Config):
    """When to save and what to keep."""

    directory: str | None = Field(
        None, description="where checkpoints go (a gs:// bucket on TPU pods); default <run_dir>/checkpoints"
    )
    every: int = Field(1000, gt=0, description="save every N steps (and at the end, and on preemption)")
    keep: int | None = Field(3, gt=0, description="keep the N most recent checkpoints; null = all")
    keep_every: int | None = Field(
        None, gt=0, description="also keep every checkpoint whose step is a multiple of K"
    )
    async_save: bool = Field(True, description="write in a background thread while training continues")


class IteratorStateSnapshot(grain.DatasetIterator):
    """A saved iterator state posing as an iterator, for grain's checkpoint handler.

    The state saved with step k is the one right after step k's batch; the live iterator is
    already further on (it prefetches), so the loop carries that state and saves it from here."""

    def __init__(self, state: dict | None = None):
        super().__init__()
        self.state = state

    def __next__(self):
        raise StopIteration

    def get_state(self) -> dict | None:
        return self.state

    def set_state(self, state: dict) -> None:
        self.state = state


ITEMS = ("state", "data", "checksums")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, no permission); the message is one line."""


def has_finished_step(directory: str | Path) -> bool:
    """Whether `directory` holds a committed step (Orbax names those by the bare step number)."""
    path = epath.Path(directory)
    return path.exists() and any(p.name.isdigit() for p in path.iterdir())


class Checkpointer:
    """A `CheckpointManager` over a local or `gs://` directory with items `state`, `data`, `checksums`."""

    def __init__(self, directory: str | Path, cfg: CheckpointConfig):
        self.directory = epath.Path(directory)
        self.every = cfg.every
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=cfg.every,
            max_to_keep=cfg.keep,
            keep_period=cfg.keep_every,
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def due(self, step: int) -> bool:
        """Whether the save interval asks for a checkpoint at `step`."""
        return step % self.every == 0

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None, *, force: bool = False) -> bool:
        """Start saving `step` if the interval says so (or `force`); returns whether a save began."""
        if not (force or self.manager.should_save(step)):
            return False
        self._check_free_space(step, state)
        items = {
            "state": ocp.args.StandardSave(state),
            "checksums": ocp.args.JsonSave(state_checksums(state)),
        }
        if data_state is not None:
            items["data"] = grain.checkpoint.CheckpointSave(IteratorStateSnapshot(data_state))
        try:
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # this save, or the background write of the one before it
            raise self._write_error(e) from e

    def _write_error(self, error: Exception) -> CheckpointWriteError:
        return CheckpointWriteError(f"cannot write a checkpoint to {self.directory}: {first_line(error)}")

    def _check_free_space(self, step: int, state: Any) -> None:
        """Refuse a save that cannot fit, before anything is written: a disk that fills up during
        Orbax's background write prints pages of errors from its threads.

        Needs this host's share of the state in raw bytes free (compression only makes the
        files smaller). Buckets (gs://) are not checked."""
        if "://" in str(self.directory):
            return
        needed = sum(
            shard.data.nbytes for leaf in jax.tree.leaves(state) for shard in leaf.addressable_shards
        )
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise CheckpointWriteError(
                f"checkpoint {step} needs up to {needed / 2**20:,.1f} MiB in {self.directory}, which has "
                f"{free / 2**20:,.1f} MiB free (No space left on device); nothing of it was written. Free "
                "space there or set checkpoint.directory elsewhere, then rerun to resume"
            )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict | None]:
        """Restore `step` (default: the newest that restores) into `abstract_state`'s shapes and shardings.

        Newer steps that failed to restore while an older one did are renamed `STEP.unrestorable-TIME`
        (kept for inspection), so this run can save those step numbers again and retention
        counts only good checkpoints. If none restores, nothing is moved."""
        candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if not candidates:
            raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        errors = []
        for s in candidates:
            try:
                state, data_state = self._restore_one(s, abstract_state)
            except Exception as e:  # Orbax raises many types for a damaged directory
                why = f"{type(e).__name__}: {first_line(e)}"
                log.warning(
                    "checkpoint %s/%d cannot be used (%s); trying an older one", self.directory, s, why
                )
                errors.append(f"step {s}: {why}")
                continue
            self._set_aside(candidates[: len(errors)])
            return s, state, data_state
        raise RuntimeError(f"no checkpoint in {self.directory} could be restored:\n  " + "\n  ".join(errors))

    def _set_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        if ocp.multihost.is_primary_host(0):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for s in steps:
                aside = self.directory / f"{s}.unrestorable-{stamp}"
                (self.directory / str(s)).rename(aside)
                log.warning("moved the unrestorable checkpoint %d to %s", s, aside)
        ocp.multihost.sync_global_processes("ipt_checkpoint_set_aside")
        self.manager.reload()

    def _restore_one(self, step: int, abstract_state: Any) -> tuple[Any, dict | None]:
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = (self.directory / str(step) / "data").exists()
        if has_data:
            items["data"] = grain.checkpoint.CheckpointRestore(IteratorStateSnapshot())
        has_checksums = (self.directory / str(step) / "checksums").exists()
        if has_checksums:
            items["checksums"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if has_checksums:
            verify_checksums(restored["state"], restored["checksums"])
        else:
            log.warning("checkpoint %d has no content checksums (saved by an older ipt): not verified", step)
        return restored["state"], restored["data"].get_state() if has_data else None

    def wait(self) -> None:
        """Block until a background save has been committed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(e) from e

    def close(self, raise_errors: bool = True) -> None:
        try:
            self.wait()
        except CheckpointWriteError:
            if raise_errors:
                raise
        finally:
            self.manager.close()


def first_line(error: BaseException, limit: int = 400) -> str:
    """The gist of an error: Orbax and TensorStore append pages of context (specs, tracebacks)."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    for tail in (" [tensorstore_spec", " See full TensorStore details"):
        text = text.split(tail)[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PreemptionWatcher:
    """Turns SIGTERM (a TPU/GCE preemption notice) into a flag the loop checks once per step.

    It is installed before start-up, so a signal while the model is built or compiled stops
    the run at its first check instead of killing it. With several processes JAX's own
    preemption service catches the signal and all hosts agree on the step to stop at
    (`reached_preemption`); in one process a plain handler sets a flag.
    """

    def __init__(self):
        self.signalled = threading.Event()
        self._previous: Any = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: will stop at the next step boundary", signum)
        self.signalled.set()

    def should_stop(self, step: int, manager: ocp.CheckpointManager) -> bool:
        if jax.process_count() > 1:
            return manager.reached_preemption(step)
        return self.signalled.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
