"""`ipt eval`: lm-eval tasks, the paper's domain tasks and bits-per-byte for one model.

ipt eval model=RUN_DIR [step=N] tasks=paper [limit=100] output=DIR [log_samples=true]

The model is restored onto the eval mesh (`ipt.eval.load`), wrapped in the `ipt` lm-eval model
class, and run through `lm_eval.simple_evaluate`; `output` receives what `lm_eval
--output_path --log_samples` writes (results JSON, per-task sample JSONL) plus `results.md`
and `ipt_results.json` (CORE, domain scores, bits-per-byte, held-out response loss). Files are
staged in a temporary directory and moved in only when the whole evaluation has finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ipt.config import Config
from ipt.stage import run_stage
from ipt.train.mesh import MeshConfig

log = logging.getLogger(__name__)


class EvalConfig(Config):
    """Evaluate a model on lm-eval tasks, domain task files and held-out text (docs/evaluation.md)."""

    model: str = Field(description="an ipt model directory, a training run directory, or a HF directory")
    step: int | None = Field(
        None, ge=0, description="with a run directory: the checkpoint step (default: latest)"
    )
    tokenizer: str | None = Field(
        None, description="default: the model's own (HF dir) or its training data's"
    )
    tasks: list[str] = Field(default_factory=list, description="lm-eval task/group names; `paper` = the nine")
    include_path: str | None = Field(None, description="a directory of your own lm-eval task YAMLs")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (default: each task's own)")
    limit: float | None = Field(None, gt=0, description="documents per task (a fraction if below 1)")
    domain_tasks: list[str] = Field(
        default_factory=list, description="AdaptLLM-format JSONL files, or built-in names (medqa_en)"
    )
    heldout: list[str] = Field(default_factory=list, description="shard directories for bits-per-byte")
    heldout_docs: int | None = Field(None, gt=0, description="documents per held-out source (default: all)")
    response_loss: list[str] = Field(
        default_factory=list,
        description="held-out read collections (files, globs): mean answer-token loss, cooked and Q/A format",
    )
    response_loss_seed: int = Field(0, ge=0, description="the `ipt cook` seed that draws the cooked format")
    max_length: int = Field(2048, gt=1, description="tokens per request (contexts are left-truncated)")
    batch_rows: int = Field(8, gt=0, description="rows per device call")
    max_gen_toks: int = Field(256, gt=0, description="default new-token limit of generation tasks")
    add_bos_token: bool | None = Field(
        None,
        description="lm-eval tasks: None = the tokenizer's default (as lm-eval's hf); domain tasks: BOS unless false",
    )
    log_samples: bool = Field(False, description="also write per-sample JSONL (as lm_eval --log_samples)")
    output: str | None = Field(None, description="directory for results (none: print only)")
    seed: int = Field(1234, description="few-shot sampling seed (lm-eval's default)")
    dtype: Literal["float32", "bfloat16", "auto"] | None = Field(
        None, description="override the compute dtype"
    )
    attention: Literal["xla", "cudnn", "splash"] | None = Field(
        None, description="override the attention kernel"
    )
    distributed: Literal["auto", "on", "off"] = Field(
        "auto", description="join a multi-host job (as ipt train)"
    )
    mesh: MeshConfig = Field(default_factory=MeshConfig)

    @field_validator("tasks", "domain_tasks", "heldout", "response_loss", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class EvalError(ValueError):
    """An evaluation that cannot run as configured; the message says why."""


def build_lm(cfg: EvalConfig):
    """The model, its tokenizer, the scorer and the lm-eval model class, from a config."""
    from ipt.eval.harness import IptLM
    from ipt.eval.load import checked_tokenizer, load_for_eval
    from ipt.eval.scorer import Scorer, ScorerConfig
    from ipt.train.mesh import LogicalRules, make_mesh

    scorer_cfg = ScorerConfig(max_length=cfg.max_length, batch_rows=cfg.batch_rows, mesh=cfg.mesh)
    rules = LogicalRules(cfg.mesh.rules, make_mesh(cfg.mesh))
    runtime = {k: v for k, v in (("dtype", cfg.dtype), ("attention", cfg.attention)) if v is not None}
    loaded = load_for_eval(cfg.model, rules, cfg.step, runtime)
    tokenizer = checked_tokenizer(
        cfg.tokenizer or loaded.tokenizer, loaded.config, loaded.vocab_hash, cfg.model
    )
    scorer = Scorer(loaded.config, loaded.params, scorer_cfg, rules, eos_ids=[tokenizer.eos_token_id])
    return IptLM(
        scorer,
        tokenizer,
        add_bos_token=cfg.add_bos_token,
        max_gen_toks=cfg.max_gen_toks,
        model_name=loaded.name,
    )


def task_manager(include_path: str | None, names: Sequence[str]):
    """lm-eval's TaskManager over its registry, the offline paper tasks and the user's YAMLs;
    unknown names are refused with the closest known ones."""
    import difflib

    from lm_eval.tasks import TaskManager

    from ipt.eval.tasks import paper_task_dir

    paths = [str(paper_task_dir())]
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise EvalError(f"include_path={include_path}: no such directory")
        paths.append(include_path)
    manager = TaskManager(include_path=paths)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known and not manager.match_tasks([name]):
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EvalError(f"tasks: unknown task {name!r}{hint} (the nine paper tasks: `paper`)")
    return manager


def run_harness(lm, cfg: EvalConfig) -> dict | None:
    """`lm_eval.simple_evaluate` on the configured tasks (samples always kept: CORE needs them)."""
    import lm_eval

    manager = task_manager(cfg.include_path, cfg.tasks)
    try:
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(cfg.tasks),
            num_fewshot=cfg.num_fewshot,
            limit=int(cfg.limit) if cfg.limit is not None and cfg.limit >= 1 else cfg.limit,
            log_samples=True,
            task_manager=manager,
            random_seed=0,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
            bootstrap_iters=0,
        )
    except (ConnectionError, OSError) as e:
        if "offline" in str(e).lower() or "connect" in str(e).lower() or "resolve" in str(e).lower():
            raise EvalError(
                f"a task needs its dataset from the Hugging Face hub, which cannot be reached ({e}); "
                "offline, use the paper tasks (`tasks=paper`) or your own files through include_path"
            ) from None
        raise


def evaluate(cfg: EvalConfig) -> int:
    import jax

    from ipt.train.run import maybe_initialize_distributed

    maybe_initialize_distributed(cfg.distributed)
    if not (cfg.tasks or cfg.domain_tasks or cfg.heldout or cfg.response_loss):
        return _fail("nothing to evaluate: set tasks=..., domain_tasks=..., heldout=... or response_loss=...")
    try:
        lm = build_lm(cfg)
    except (EvalError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    if jax.process_index() != 0:
        lm.scorer.serve()
        return 0
    try:
        report = collect(lm, cfg)
    except (EvalError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    finally:
        lm.scorer.stop()
    from ipt.eval.report import markdown

    text = markdown(report)
    print(text)
    if cfg.output is not None:
        write_output(Path(cfg.output), report, cfg.log_samples)
        print(f"ipt eval: wrote {cfg.output}", file=sys.stderr)
    return 0


def collect(lm, cfg: EvalConfig) -> dict:
    """Every score of one evaluation: lm-eval's results, CORE, domain tasks, bits-per-byte,
    held-out response loss."""
    from ipt.eval import proxy
    from ipt.eval.domain import evaluate_domain_task
    from ipt.eval.domain_tasks import read_domain_tasks, resolve_domain_task
    from ipt.eval.response_loss import read_entries, response_loss

    report: dict[str, Any] = {
        "model": lm.model_name,
        "harness": None,
        "core": None,
        "domain": {},
        "heldout": {},
        "response_loss": {},
    }
    domain = [read_domain_tasks(resolve_domain_task(spec)) for spec in cfg.domain_tasks]  # fail early
    responses = read_entries(cfg.response_loss) if cfg.response_loss else []
    if cfg.tasks:
        results = run_harness(lm, cfg)
        samples = results.pop("samples", {})
        chance = {
            task: proxy.task_chance(rows)
            for task, rows in samples.items()
            if results["configs"].get(task, {}).get("output_type") == "multiple_choice"
        }
        docs = {task: len(rows) for task, rows in samples.items()}
        units = proxy.core_units(results["results"], results.get("group_subtasks", {}), chance, docs)
        rows, core = proxy.core_table(results["results"], units)
        report.update(harness=results, samples=samples, core={"tasks": rows, "core": core})
    for task in domain:
        report["domain"][task.name] = evaluate_domain_task(
            task,
            lm.scorer,
            lm.tokenizer,
            add_bos=cfg.add_bos_token is not False,  # AdaptLLM's Instruction-Pretrain setting: BOS on
            max_length=cfg.max_length,
            limit=_int(cfg.limit),
        )
    for directory in cfg.heldout:
        report["heldout"][Path(directory).name] = proxy.bits_per_byte(
            lm.scorer, lm.tokenizer, directory, cfg.heldout_docs
        )
    if responses:
        report["response_loss"] = response_loss(lm.scorer, lm.tokenizer, responses, cfg.response_loss_seed)
    return report


def _int(limit: float | None) -> int | None:
    return int(limit) if limit is not None and limit >= 1 else None


def write_output(output: Path, report: dict, log_samples: bool) -> None:
    """Stage everything in a temp directory beside `output`, then move each file in."""
    from lm_eval.loggers import EvaluationTracker

    from ipt.eval.report import ipt_results, markdown

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        if report["harness"] is not None:
            tracker = EvaluationTracker(output_path=str(staging))
            tracker.general_config_tracker.model_name = report["model"]
            tracker.general_config_tracker.model_name_sanitized = report["model"]
            samples = report["samples"] if log_samples else None
            tracker.save_results_aggregated(results=report["harness"], samples=samples)
            if log_samples:
                for task in report["harness"]["configs"]:
                    tracker.save_results_samples(task_name=task, samples=report["samples"][task])
        (staging / "results.md").write_text(markdown(report), encoding="utf-8")
        (staging / "ipt_results.json").write_text(json.dumps(ipt_results(report), indent=2) + "\n")
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = output / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fail(message: str) -> int:
    print(f"ipt eval: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_stage(EvalConfig, evaluate, list(argv or []), prog="ipt eval")
