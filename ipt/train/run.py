"""`ipt train`: build the mesh, model, optimizer and data from a `TrainConfig`, resume, and loop."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from ipt.config import dump_config
from ipt.stage import run_stage
from ipt.train import optim
from ipt.train import state as st
from ipt.train.checkpoint import Checkpointer, CheckpointWriteError, has_finished_step
from ipt.train.config import TrainConfig
from ipt.train.mesh import LogicalRules, make_mesh
from ipt.train.metrics import MetricsWriter, Throughput, total_peak_flops
from ipt.train.resume import check_resume_config, config_differences
from ipt.train.step import make_eval_step, make_train_step

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
EXIT_CHECKPOINT_WRITE = 4  # 2: bad input or config, 3: non-finite loss (ipt.train.loop)


def maybe_initialize_distributed(mode: str) -> None:
    """Join a multi-process job when asked, or (auto) when a multi-host launcher is detected."""
    if mode == "off" or jax.distributed.is_initialized():
        return
    env = os.environ
    if mode == "on" and "JAX_NUM_PROCESSES" in env:  # set by launch/gpu.py on each node
        jax.distributed.initialize(
            num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"])
        )
        return
    multi_host = (
        "JAX_COORDINATOR_ADDRESS" in env
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )
    if mode == "on" or multi_host:
        jax.distributed.initialize()


def model_builder(cfg: TrainConfig) -> st.ModelBuilder:
    from ipt.model import create_model

    return lambda seed: create_model(cfg.model, seed)


class Trainer:
    """Everything derived from a config: mesh, rules, model parts, optimizer, shardings, steps."""

    def __init__(self, cfg: TrainConfig, devices: Sequence[jax.Device] | None = None):
        self.cfg = cfg
        self.mesh = make_mesh(cfg.mesh, devices)
        self.rules = LogicalRules(cfg.mesh.rules, self.mesh)
        micro = cfg.data.batch_size // cfg.grad_accum
        if micro % self.rules.batch_shards:
            raise ValueError(
                f"the micro-batch (data.batch_size / grad_accum = {micro}) must be a multiple of the "
                f"{self.rules.batch_shards} ways the mesh splits the batch ({dict(self.mesh.shape)})"
            )
        self.build = model_builder(cfg)
        self.parts = st.model_parts(self.build)
        mask = optim.decay_mask(self.parts.params, self.parts.axes, cfg.optimizer.decay_embeddings)
        self.tx, self.schedule = optim.make_optimizer(cfg.optimizer, cfg.steps, mask)
        self.shardings = st.state_shardings(self.tx, self.parts, self.rules)
        self.abstract = st.abstract_state(self.tx, self.parts, self.shardings)
        self.train_step = make_train_step(
            self.parts,
            self.tx,
            self.schedule,
            self.rules,
            self.shardings,
            grad_accum=cfg.grad_accum,
            z_loss=cfg.z_loss,
        )

    def initial_params(self) -> dict | None:
        """Parameters to start from when there is no checkpoint (None: random init)."""
        init = self.cfg.init
        if init.source == "scratch":
            return None
        if init.source == "model_dir":
            import orbax.checkpoint as ocp

            from ipt.model.store import PARAMS_DIR, load_model_config_dir

            self._check_same_shapes(load_model_config_dir(init.path), init.path)
            target = self.abstract["params"]
            return ocp.StandardCheckpointer().restore(Path(init.path).absolute() / PARAMS_DIR, target)
        from ipt.model.hf import import_params

        # Each tensor goes straight to this run's sharding (its rules replicate what a mesh axis
        # does not divide), so no host or device ever holds the whole model unsharded.
        return import_params(init.path, self.cfg.model, shardings=self.shardings["params"])

    def _check_same_shapes(self, other, where: str) -> None:
        mine = jax.tree.map(lambda a: a.shape, self.parts.params)
        from ipt.model.store import abstract_params

        theirs = jax.tree.map(lambda a: a.shape, abstract_params(other))
        if mine != theirs:
            raise ValueError(f"init.path={where}: its model config does not match `model` (shapes differ)")

    def fresh_state(self) -> dict:
        return st.init_state(self.build, self.cfg.seed, self.tx, self.shardings, params=self.initial_params())


def train(cfg: TrainConfig) -> int:
    """Train under the run directory's lock (process 0 holds it; see ipt.train.lock)."""
    from ipt.train.checkpoint import PreemptionWatcher
    from ipt.train.lock import RunLock, RunLockedError
    from ipt.train.loop import fail

    maybe_initialize_distributed(cfg.distributed)
    run_dir = Path(cfg.run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    watcher = PreemptionWatcher()  # from here a SIGTERM stops cleanly, during start-up too
    lock = RunLock(run_dir)
    try:
        if jax.process_index() == 0:
            try:
                lock.acquire()
            except RunLockedError as e:  # another live run writes here: change nothing
                return fail(str(e), 2)
        return _train(cfg, run_dir, watcher)
    finally:
        lock.release()
        watcher.close()


def _prepare(cfg: TrainConfig, run_dir: Path, checkpoint_dir) -> tuple[Trainer, Any, Any]:
    """Everything that can refuse the run, before any file is written: raises ValueError."""
    from ipt.data.integrity import check_sources
    from ipt.data.pipeline import make_batch_iterator, make_eval_iterators

    check_vocabulary(cfg)
    check_sources(cfg.data)  # sizes now; sha256 in the background, awaited before the first read
    if has_finished_step(checkpoint_dir):
        check_resume_config(run_dir / CONFIG_FILE, dump_config(cfg), cfg.allow_config_change)
    trainer = Trainer(cfg)
    data_iter = make_batch_iterator(cfg.data)
    eval_fn = None
    if cfg.eval.every and (cfg.data.eval_sources or cfg.eval.tasks):
        eval_fn = make_eval_fn(cfg, trainer, make_eval_iterators)
    return trainer, data_iter, eval_fn


def _train(cfg: TrainConfig, run_dir: Path, watcher) -> int:
    from ipt.data.integrity import ShardError
    from ipt.model.flops import flops_per_token
    from ipt.train.loop import EXIT_NONFINITE, BatchPrefetcher, Loop, NonFiniteError, fail

    checkpoint_dir = cfg.checkpoint.directory or run_dir / "checkpoints"
    try:
        trainer, data_iter, eval_fn = _prepare(cfg, run_dir, checkpoint_dir)
    except (ValueError, FileNotFoundError) as e:  # a config that cannot run (an unknown eval task...)
        return fail(str(e), 2)
    checkpointer = Checkpointer(checkpoint_dir, cfg.checkpoint)
    data_state = None
    if checkpointer.latest_step() is None:
        state = trainer.fresh_state()
    else:
        try:
            step, state, data_state = checkpointer.restore(trainer.abstract)
        except RuntimeError as e:  # every checkpoint failed: say why, move nothing, no traceback
            checkpointer.close()
            return fail(f"{e}\n(does `model` still match the run that wrote them?)", 2)
        if data_state is not None:
            data_iter.set_state(data_state)
        log.info("resumed from %s at step %d", checkpointer.directory, step)
    start = int(jax.device_get(state["step"]))
    save_run_config(run_dir, cfg, start)

    peak, peak_source = total_peak_flops(jax.devices(), cfg.metrics.peak_flops)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    throughput = Throughput(tokens_per_step, flops_per_token(cfg.model, cfg.data.seq_len), peak)
    writer = MetricsWriter(run_dir, cfg.metrics, cfg.steps, start, cfg.model_dump(mode="json"))
    writer.message(
        f"ipt train: {sum(p.size for p in jax.tree.leaves(trainer.parts.params)):,} parameters, mesh {dict(trainer.mesh.shape)}, "
        f"{tokens_per_step:,} tokens/step, steps {start}->{cfg.steps}, peak {peak:.3g} FLOP/s ({peak_source})"
    )
    loop = Loop(
        watcher=watcher,
        train_step=trainer.train_step,
        eval_fn=eval_fn,
        rest=trainer.parts.rest,
        batch_sharding=trainer.rules.batch_sharding(),
        checkpointer=checkpointer,
        writer=writer,
        throughput=throughput,
        total_steps=cfg.steps,
        log_every=cfg.metrics.log_every,
        eval_every=cfg.eval.every,
        nonfinite=cfg.nonfinite,
        max_skipped_in_a_row=cfg.max_skipped_in_a_row,
    )
    batches = BatchPrefetcher(data_iter)
    try:
        state, why = loop.run(state, batches, data_state)
        checkpointer.close()
        writer.message(f"ipt train: {why} at step {int(jax.device_get(state['step']))}")
    except NonFiniteError as e:
        checkpointer.close()
        return fail(str(e), EXIT_NONFINITE)
    except CheckpointWriteError as e:  # a full disk: one line, not Orbax's threads' tracebacks
        checkpointer.close(raise_errors=False)
        return fail(str(e), EXIT_CHECKPOINT_WRITE)
    except ShardError as e:  # a damaged record met mid-run (names the shard and record)
        checkpointer.close(raise_errors=False)
        return fail(str(e), 2)
    finally:
        batches.close()
        writer.close()
    return 0


def save_run_config(run_dir: Path, cfg: TrainConfig, step: int) -> None:
    """Write the run's config (once the run is known to start); a changed one keeps the old beside it."""
    import yaml

    from ipt.train.loop import write_run_file

    path, text = run_dir / CONFIG_FILE, dump_config(cfg)
    if step and path.exists():
        saved = path.read_text(encoding="utf-8")
        if config_differences(yaml.safe_load(saved), yaml.safe_load(text)):
            write_run_file(run_dir / f"config.before-step-{step}.yaml", saved)
    write_run_file(path, text)


def check_vocabulary(cfg: TrainConfig) -> None:
    """Refuse data whose tokenizer has more tokens than the model's embedding holds: such ids
    index past the table and the first step's loss is NaN, which looks like a bad learning rate."""
    from ipt.data.records import read_manifest

    for src in [*cfg.data.sources, *cfg.data.eval_sources]:
        tokenizer = read_manifest(src.path).tokenizer
        if tokenizer.vocab_size > cfg.model.vocab_size:
            raise ValueError(
                f"source {src.name!r} ({src.path}) was tokenized with {tokenizer.name!r}, whose "
                f"{tokenizer.vocab_size} token ids do not fit model.vocab_size={cfg.model.vocab_size}; "
                "use the model's tokenizer or a model with a larger vocabulary"
            )


def make_eval_fn(cfg: TrainConfig, trainer: Trainer, make_eval_iterators):
    """params -> {eval/<source>/loss: mean cross-entropy over the held-out tokens} and, with
    `eval.tasks`, lm-eval's scores as eval/<task>/<metric> (ipt.eval.during_training)."""
    from ipt.train.loop import to_global

    eval_step = make_eval_step(trainer.parts, trainer.rules, trainer.shardings["params"])
    sharding = trainer.rules.batch_sharding()
    tasks = None
    if cfg.eval.tasks:
        from ipt.eval.during_training import TaskEvaluator

        tasks = TaskEvaluator(cfg, trainer.rules, trainer.abstract["params"])

    def evaluate(params: dict) -> dict[str, float]:
        out = {} if tasks is None else tasks(params)
        for name, iterator in make_eval_iterators(cfg.data).items():
            total_ce = total_count = 0.0
            for i, batch in enumerate(iterator):
                if cfg.eval.batches is not None and i >= cfg.eval.batches:
                    break
                ce, count = jax.device_get(eval_step(params, to_global(batch, sharding), trainer.parts.rest))
                total_ce, total_count = total_ce + float(ce), total_count + float(count)
            out[f"eval/{name}/loss"] = total_ce / max(total_count, 1.0)
            out[f"eval/{name}/tokens"] = total_count
        return out

    return evaluate


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_stage(TrainConfig, train, list(argv or []), prog="ipt train")
