"""`executor=ray`: the chunks of a job go to a pool of engine actors on a Ray cluster.

The driver reads the input lazily (`pending_chunks`: complete chunks are skipped) and hands each
chunk to whichever actor is free, so fast and slow machines finish together. An actor holds one
loaded engine and runs the same `synthesize_chunk` as a single-process run, so every executor
writes the same bytes. A chunk whose actor dies (preemption, OOM, kill -9, a lost node) is
handed to another actor; Ray restarts the dead one wherever resources allow. An exception
raised by the chunk itself (bad input, a bug) is deterministic and stops the job instead: the
running chunks finish, and the error is raised as if the run had been local.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayError, RayTaskError

from ipt.stage import BadInputError
from ipt.synth.run import (
    Chunk,
    Progress,
    SynthesizeConfig,
    Tally,
    completed_stats,
    make_engine,
    synthesize_chunk,
)

MAX_PROBE_FAILURES = 10  # an unreachable actor is asked this often whether it is back, then dropped


class EngineActor:
    """One loaded engine; runs chunks one at a time."""

    def __init__(self, cfg: SynthesizeConfig) -> None:
        self.cfg = cfg
        self.engine = make_engine(cfg)

    def where(self) -> tuple[int, str]:
        """(pid, node id): readiness, and where the pool's actors run."""
        return os.getpid(), ray.get_runtime_context().get_node_id()

    def run(self, chunk: Chunk) -> tuple[dict[str, Any], bool]:
        """The chunk's stats, and whether it was synthesized now (False: an earlier attempt finished it)."""
        done = completed_stats(Path(self.cfg.output_dir), chunk.index)
        if done is not None:
            return done, False
        return synthesize_chunk(self.cfg, self.engine, chunk), True


def actor_resources(cfg: SynthesizeConfig) -> dict[str, float]:
    """What one actor asks the cluster for: CPUs, GPUs (vllm: its tensor-parallel size), custom."""
    gpus = cfg.ray.num_gpus
    if gpus is None:
        gpus = float(cfg.tensor_parallel_size) if cfg.engine == "vllm" else 0.0
    return {"CPU": cfg.ray.num_cpus, "GPU": gpus, **cfg.ray.resources}


def pool_size(cfg: SynthesizeConfig, cluster: dict[str, float]) -> int:
    """`ray.num_actors`, or as many actors as the cluster's total resources hold."""
    if cfg.ray.num_actors is not None:
        return cfg.ray.num_actors
    wanted = {k: v for k, v in actor_resources(cfg).items() if v > 0}
    fits = min((int(cluster.get(k, 0.0) // v) for k, v in wanted.items()), default=1)
    if fits < 1:
        raise RuntimeError(
            f"no engine actor fits the Ray cluster: one asks for {wanted}, the cluster has {cluster}"
        )
    return fits


def start_actor(cfg: SynthesizeConfig) -> ActorHandle:
    """Restarted by Ray after a crash (max_restarts=-1); its tasks are retried here, not by Ray."""
    res = actor_resources(cfg)
    custom = {k: v for k, v in res.items() if k not in ("CPU", "GPU")}
    remote = ray.remote(EngineActor).options(
        num_cpus=res["CPU"], num_gpus=res["GPU"], resources=custom, max_restarts=-1, max_task_retries=0
    )
    return remote.remote(cfg)


@dataclass
class Dispatcher:
    """The dynamic queue: a free actor takes the next chunk; ray.wait says who finished."""

    cfg: SynthesizeConfig
    source: Iterator[Chunk]
    tally: Tally
    progress: Progress
    free: list[ActorHandle] = field(default_factory=list)
    waiting: dict[ray.ObjectRef, tuple[ActorHandle, Chunk | None]] = field(default_factory=dict)
    retry: deque[Chunk] = field(default_factory=deque)
    attempts: Counter = field(default_factory=Counter)
    nodes: set[str] = field(default_factory=set)
    probe_failures: Counter = field(default_factory=Counter)
    error: BaseException | None = None
    source_done: bool = False

    def probe(self, actor: ActorHandle) -> None:
        """Wait (in ray.wait) for `actor` to be up, freshly started or restarted."""
        self.waiting[actor.where.remote()] = (actor, None)

    def next_chunk(self) -> Chunk | None:
        if self.error is not None:
            return None
        if self.retry:
            return self.retry.popleft()
        if self.source_done:
            return None
        try:
            return next(self.source)
        except StopIteration:
            self.source_done = True
        except Exception as e:  # a malformed input line: no chunk after it can be read
            self.source_done = True
            self.fail(e)
        return None

    def assign(self) -> None:
        while self.free:
            chunk = self.next_chunk()
            if chunk is None:
                return
            actor = self.free.pop()
            self.waiting[actor.run.remote(chunk)] = (actor, chunk)

    def running(self) -> bool:
        return any(chunk is not None for _, chunk in self.waiting.values())

    def run(self, actors: list[ActorHandle]) -> None:
        for actor in actors:
            self.probe(actor)
        while True:
            self.assign()
            if not self.running() and (self.error is not None or (self.source_done and not self.retry)):
                break
            [ref], _ = ray.wait(list(self.waiting), num_returns=1)
            self.collect(ref)
        if self.error is not None:
            raise self.error

    def collect(self, ref: ray.ObjectRef) -> None:
        actor, chunk = self.waiting.pop(ref)
        try:
            result = ray.get(ref)
        except RayTaskError as e:  # raised by the chunk's own code: it would fail on any actor
            self.free.append(actor)
            self.fail(e.cause if isinstance(e.cause, BadInputError) else e)
        except RayError as e:  # the actor's process or node is gone (kill, OOM, preemption), or unreachable
            if chunk is None:
                self.unready(actor, e)
            else:
                self.requeue(chunk, e)
                self.probe(actor)
        else:
            self.done(actor, chunk, result)

    def fail(self, error: BaseException) -> None:
        """Stop handing out chunks; the running ones finish, then `error` ends the run."""
        self.error = self.error or error

    def done(self, actor: ActorHandle, chunk: Chunk | None, result: Any) -> None:
        self.free.append(actor)
        if chunk is None:
            self.nodes.add(result[1])
            return
        stats, fresh = result
        self.tally.add_done(stats, "chunks_done_now" if fresh else "chunks_already_done")
        self.progress(stats["texts"], stats["pairs"], stats["prompt_tokens"], stats["generated_tokens"])
        running = sum(c is not None for _, c in self.waiting.values())
        self.progress.bar.set_description(
            f"chunks: {self.tally.chunks['chunks_done_now']} done, {running} running, "
            f"{self.tally.chunks['chunk_retries']} retried"
        )

    def requeue(self, chunk: Chunk, e: RayError) -> None:
        """Give the chunk to another actor, unless its actors keep dying on it."""
        self.attempts[chunk.index] += 1
        if self.attempts[chunk.index] >= self.cfg.ray.max_chunk_attempts:
            self.fail(
                RuntimeError(
                    f"chunk {chunk.index}: its actor died {self.attempts[chunk.index]} times; last: {e}"
                )
            )
        else:
            self.tally.chunks["chunk_retries"] += 1
            self.retry.append(chunk)

    def unready(self, actor: ActorHandle, e: RayError) -> None:
        """A probe failed: the engine cannot load (stop), the actor is unreachable (ask again, a few
        times), or it is dead for good (drop it; stop when none is left)."""
        self.probe_failures[actor] += 1
        if isinstance(e, ActorDiedError) and e.actor_init_failed:
            self.fail(RuntimeError(f"an engine actor failed to start: {e}"))
        elif isinstance(e, ActorUnavailableError) and self.probe_failures[actor] < MAX_PROBE_FAILURES:
            self.probe(actor)
        elif not self.free and not self.waiting and (self.retry or not self.source_done):
            self.fail(RuntimeError(f"every engine actor is gone; last: {e}"))


def run_on_ray(cfg: SynthesizeConfig, chunks: Iterator[Chunk], tally: Tally, progress: Progress) -> None:
    """Connect to the cluster (`ray.address`), run every pending chunk on a pool of engine actors."""
    ray.init(address=cfg.ray.address, logging_level="WARNING")
    actors: list[ActorHandle] = []
    try:
        actors = [start_actor(cfg) for _ in range(pool_size(cfg, ray.cluster_resources()))]
        dispatcher = Dispatcher(cfg, chunks, tally, progress)
        try:
            dispatcher.run(actors)
        finally:
            tally.chunks.update(ray_actors=len(actors), ray_nodes=len(dispatcher.nodes), chunk_retries=0)
    finally:
        for actor in actors:
            ray.kill(actor)
        ray.shutdown()
