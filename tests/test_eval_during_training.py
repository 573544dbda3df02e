"""lm-eval tasks inside `ipt train`: scores at the configured steps, losses untouched."""

from __future__ import annotations

import pytest
import yaml
from test_train_loop import read_metrics
from test_train_metrics import _tensorboard_scalars

from ipt.train.run import main as train_main

STEPS = 6


def run_training(trained_tiny, run_dir, **eval_cfg) -> dict[int, dict]:
    cfg = yaml.safe_load(trained_tiny["train_config"].read_text())
    cfg.update(run_dir=str(run_dir), steps=STEPS, metrics={"progress_bar": False, "tensorboard": True})
    if eval_cfg:
        cfg["eval"] = eval_cfg
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(path)]) == 0
    return read_metrics(run_dir)


@pytest.mark.slow
def test_tasks_are_scored_at_eval_steps_and_losses_do_not_change(trained_tiny, tmp_path):
    plain = run_training(trained_tiny, tmp_path / "plain")
    evaluated = run_training(
        trained_tiny, tmp_path / "evaluated", every=3, tasks="paper_arc_easy,paper_piqa", limit=4
    )
    assert [plain[s]["loss"] for s in range(1, STEPS + 1)] == [
        evaluated[s]["loss"] for s in range(1, STEPS + 1)
    ]
    eval_records = [
        rec
        for rec in map(yaml.safe_load, (tmp_path / "evaluated" / "metrics.jsonl").read_text().splitlines())
        if "eval/paper_arc_easy/acc_norm" in rec
    ]
    assert [r["step"] for r in eval_records] == [3, 6]
    for rec in eval_records:
        assert 0.0 <= rec["eval/paper_piqa/acc"] <= 1.0 and "eval/core" in rec
    scalars = _tensorboard_scalars(tmp_path / "evaluated" / "tensorboard")
    assert [step for step, _ in scalars["eval/paper_arc_easy/acc"]] == [3, 6]


def test_an_unknown_task_stops_training_before_it_starts(trained_tiny, tmp_path, capsys):
    cfg = yaml.safe_load(trained_tiny["train_config"].read_text())
    cfg.update(run_dir=str(tmp_path / "run"), eval={"every": 2, "tasks": ["paper_arc_esay"]})
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "t.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'paper_arc_esay'" in err and "paper_arc_easy" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
