"""lm-eval tasks inside `ipt train`: the live parameters scored at every `eval.every` steps.

The scorer is built once on the trainer's own mesh and rules, with the parameters' training
shardings, so each evaluation reuses its compiled programs and never touches the train step
(which is neither recompiled nor fed anything different). Process 0 drives lm-eval; the other
processes serve its calls in lockstep. Scores return as `eval/<task>/<metric>` (plus
`eval/core`), which the loop writes to every metrics sink.
"""

from __future__ import annotations

from typing import Any

import jax

from ipt.eval.harness import IptLM
from ipt.eval.load import checked_tokenizer, training_tokenizer
from ipt.eval.report import flat_metrics
from ipt.eval.run import EvalConfig, collect, task_manager
from ipt.eval.scorer import Scorer, ScorerConfig
from ipt.train.config import TrainConfig
from ipt.train.mesh import LogicalRules


class TaskEvaluator:
    """`params -> {eval/<task>/<metric>: value}` for the tasks of `cfg.eval`."""

    def __init__(self, cfg: TrainConfig, rules: LogicalRules, abstract_params: dict):
        name, vocab = training_tokenizer(cfg)
        spec = cfg.eval.tokenizer or name
        tokenizer = checked_tokenizer(spec, cfg.model, vocab if spec == name else None, cfg.run_dir)
        self.eval_cfg = EvalConfig(
            model=cfg.run_dir,
            tasks=cfg.eval.tasks,
            include_path=cfg.eval.include_path,
            num_fewshot=cfg.eval.num_fewshot,
            limit=cfg.eval.limit,
            max_length=cfg.eval.max_length or cfg.data.seq_len,
            batch_rows=cfg.eval.batch_rows,
        )
        task_manager(cfg.eval.include_path, cfg.eval.tasks)  # unknown task names fail at start-up
        scorer_cfg = ScorerConfig(
            max_length=self.eval_cfg.max_length, batch_rows=cfg.eval.batch_rows, mesh=cfg.mesh
        )
        scorer = Scorer(cfg.model, abstract_params, scorer_cfg, rules, eos_ids=[tokenizer.eos_token_id])
        self.lm = IptLM(scorer, tokenizer, model_name=cfg.run_dir)

    def __call__(self, params: dict) -> dict[str, Any]:
        self.lm.scorer.params = params
        if jax.process_index() != 0:
            self.lm.scorer.serve()
            return {}
        try:
            report = collect(self.lm, self.eval_cfg)
        finally:
            self.lm.scorer.stop()
        return flat_metrics(report)
