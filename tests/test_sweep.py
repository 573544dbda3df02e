"""`ipt sweep`: grids and names, errors before anything runs, launcher lines, and real tiny sweeps
(child `ipt train` processes on real shards) that summarize, skip finished points and resume
after a SIGKILL."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ipt.config import load_config
from ipt.sweep import run as sweep_run
from ipt.sweep.config import SweepConfig
from ipt.sweep.grid import expand, make_axes, point_name, short_keys
from ipt.sweep.launch import launcher, launcher_lines
from ipt.sweep.markers import same_config
from ipt.sweep.plan import make_plan
from ipt.sweep.summary import loss_curves, loss_figure
from ipt.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "model" / "tiny.yaml"
SEEDS = ["seed-0", "seed-1", "seed-2"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, mistral_tokenizer_dir, corpus_docs) -> dict[str, Path]:
    from shards import write_corpus_source

    root = tmp_path_factory.mktemp("sweep-data")
    texts = [d["text"] for d in corpus_docs]
    write_corpus_source(root / "train", mistral_tokenizer_dir, texts[:200])
    write_corpus_source(root / "held", mistral_tokenizer_dir, texts[-20:])
    return {"train": root / "train", "held": root / "held"}


def write_experiment(path: Path, sources: dict[str, Path], steps: int = 6, evaluate: bool = True) -> Path:
    cfg = {
        "run_dir": str(path.parent / "unused"),
        "model": {"base": str(TINY)},
        "data": {
            "sources": [{"name": "corpus", "path": str(sources["train"])}],
            "seq_len": 64,
            "batch_size": 8,
        },
        "steps": steps,
        "optimizer": {"schedule": {"kind": "cosine", "peak_lr": 3.0e-3, "warmup_steps": 2}},
        "checkpoint": {"every": 2, "keep": 3},
        "metrics": {"progress_bar": False, "tensorboard": False, "peak_flops": 1.0e11},
        "mesh": {"axes": {"data": 1, "fsdp": 1, "tensor": 1}},
    }
    if evaluate:
        cfg["data"]["eval_sources"] = [{"name": "held", "path": str(sources["held"])}]
        cfg["eval"] = {"every": 3, "batches": 1}
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_sweep(path: Path, **body) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))  # the grid's order is the points' order
    return path


def child_env() -> dict[str, str]:
    """One CPU device for the child processes (the tiny model gains nothing from 8 fake ones)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    )
    return env


def sweep_cmd(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "ipt.cli", "sweep", "--config", str(config), *overrides]


def run_sweep(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(config, *overrides), capture_output=True, text=True, env=child_env())


def file_states(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---- grids, names, plans (nothing runs) ----


def test_grid_is_the_product_of_axes_and_zip_groups_vary_together():
    axes = make_axes(
        {"seed": [0, 1]}, [{"optimizer.schedule.peak_lr": [0.1, 0.2], "steps": [10, 20]}], ["a", "b"]
    )
    points = expand(axes)
    assert len(points) == 2 * 2 * 2
    assert points[0] == {"experiment": "a", "seed": 0, "optimizer.schedule.peak_lr": 0.1, "steps": 10}
    assert points[1] == {"experiment": "a", "seed": 0, "optimizer.schedule.peak_lr": 0.2, "steps": 20}
    assert {(p["optimizer.schedule.peak_lr"], p["steps"]) for p in points} == {(0.1, 10), (0.2, 20)}
    nested = make_axes({"optimizer": {"schedule": {"peak_lr": [1, 2]}}}, [], ["a"])
    assert nested[0].keys == ("optimizer.schedule.peak_lr",)


def test_point_names_are_readable_stable_and_hashed_only_when_lossy():
    keys = ["data.sources.0.weight", "data.sources.1.weight", "seed", "optimizer.schedule.peak_lr"]
    shorts = short_keys(keys)
    assert shorts == {"data.sources.0.weight": "0.weight", "data.sources.1.weight": "1.weight", "seed": "seed",
                      "optimizer.schedule.peak_lr": "peak_lr"}  # fmt: skip
    point = {"data.sources.1.weight": 0.2, "seed": 1, "optimizer.schedule.peak_lr": 3e-4}
    assert point_name(point, shorts) == "1.weight-0.2_seed-1_peak_lr-0.0003"
    assert point_name({"experiment": "vanilla", "seed": 0}, shorts) == "vanilla_seed-0"
    a = point_name({"seed": "x/y"}, shorts)
    b = point_name({"seed": "x-y"}, shorts)
    assert a.startswith("seed-x-y_h") and b == "seed-x-y" and a != b
    assert len(point_name({"seed": "v" * 300}, shorts)) < 120


def test_list_index_keys_edit_one_element_of_the_experiments_list(tmp_path, sources):
    exp = write_experiment(tmp_path / "exp.yaml", sources)
    tree = yaml.safe_load(exp.read_text())
    tree["data"]["sources"].append({"name": "again", "path": str(sources["train"]), "weight": 3.0})
    exp.write_text(yaml.safe_dump(tree))
    sweep = write_sweep(tmp_path / "s.yaml", experiment=str(exp), sweep_dir=str(tmp_path / "sw"),
                        grid={"data.sources.1.weight": [0.1, 0.4]})  # fmt: skip
    plan = make_plan(load_config(SweepConfig, sweep))
    assert [p.name for p in plan.points] == ["weight-0.1", "weight-0.4"]
    assert [p.config.data.sources[1].weight for p in plan.points] == [0.1, 0.4]
    assert all(
        p.config.data.sources[0].weight == 1.0 and p.config.data.sources[1].name == "again"
        for p in plan.points
    )
    assert plan.points[1].config.run_dir == str(tmp_path / "sw" / "weight-0.4")


BAD_INPUTS = {
    "unknown key": (
        {"grid": {"optimizer.schedule.peak_lrr": [0.1, 0.2]}},
        "unknown key `optimizer.schedule.peak_lrr` (set in the sweep); did you mean `optimizer.schedule.peak_lr`?",
    ),
    "empty grid": ({"grid": {}}, "the grid is empty"),
    "empty values": ({"grid": {"seed": []}}, "grid.seed: the list of values is empty"),
    "same run directory": ({"grid": {"seed": [0, 1, 0]}}, "resolve to the same run directory"),
    "zip lengths": ({"zip": [{"seed": [0, 1], "steps": [4]}]}, "zip.0: lists of different lengths"),
    "run_dir in grid": ({"grid": {"run_dir": ["a", "b"]}}, "`run_dir` is set by the sweep"),
    "unknown stage": (
        {"grid": {"seed": [0]}, "set": {"data.sources.0.path": "{stage:tokens}"}},
        "names no pipeline stage",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_exit_2_before_anything_runs(case, tmp_path, sources, capsys):
    body, expected = BAD_INPUTS[case]
    exp = write_experiment(tmp_path / "exp.yaml", sources)
    sweep = write_sweep(tmp_path / "s.yaml", experiment=str(exp), sweep_dir=str(tmp_path / "sw"), **body)
    assert sweep_run.main(["--config", str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ipt sweep: error: ")
    assert expected in err
    assert not (tmp_path / "sw").exists()


def test_points_that_share_stage_settings_share_one_stage_run(tmp_path, sources):
    exp = write_experiment(tmp_path / "exp.yaml", sources)
    sweep = write_sweep(
        tmp_path / "s.yaml", experiment=str(exp), sweep_dir=str(tmp_path / "sw"),
        grid={"synth.rounds": [1, 2], "seed": [0, 1, 2]},
        set={"data.sources.0.path": "{stage:tokens}"},
        pipeline={
            "synth": {"stage": "synthesize", "set": {"input": "raw/*.jsonl", "engine": "rules"}},
            "cook": {"stage": "cook", "set": {"input": "{stage:synth}/chunk-*.jsonl"}},
            "tokens": {"stage": "tokenize", "set": {"input": "{stage:cook}/*.jsonl", "tokenizer": "mistral-v1"}},
        },
    )  # fmt: skip
    plan = make_plan(load_config(SweepConfig, sweep))
    assert len(plan.points) == 6
    assert sorted(plan.stages) == [f"{s}/rounds-{m}" for s in ("cook", "synth", "tokens") for m in (1, 2)]
    point = plan.points[4]  # rounds=2, seed=1
    assert point.stages == ("synth/rounds-2", "cook/rounds-2", "tokens/rounds-2")
    assert point.config.data.sources[0].path == str(tmp_path / "sw" / "_stages" / "tokens" / "rounds-2")
    cook = plan.stages["cook/rounds-2"]
    assert cook.config.input == f"{tmp_path / 'sw' / '_stages' / 'synth' / 'rounds-2'}/chunk-*.jsonl"
    assert plan.stages["synth/rounds-1"].config.rounds == 1


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_expands_and_every_point_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep files name configs relative to the repository root
    cfg = load_config(SweepConfig, path.relative_to(ROOT))
    plan = make_plan(cfg)
    assert len(plan.points) >= 2
    assert len({p.run_dir for p in plan.points}) == len(plan.points)
    assert all(p.run_dir.parent == Path(cfg.sweep_dir) for p in plan.points)
    for kind in ("gpu", "slurm"):
        lines = launcher_lines(make_plan(cfg.model_copy(update={"launch": kind})))
        assert sum(line.startswith("# ") for line in lines) >= len(plan.points)


def test_toy_sweep_is_vanilla_and_instruct_over_three_seeds(monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = make_plan(load_config(SweepConfig, "configs/sweeps/toy-3seed.yaml"))
    assert [p.name for p in plan.points] == [f"{arm}_seed-{s}_data.seed-{s}" for arm in ("vanilla", "instruct")
                                             for s in range(3)]  # fmt: skip
    assert not plan.stages  # the quickstart's split, synthesis and tokens are its inputs
    assert {p.config.model.hidden_size for p in plan.points} == {128}
    instruct = next(p for p in plan.points if p.name.startswith("instruct")).config.data.sources
    assert [(s.name, s.weight) for s in instruct] == [("raw", 0.72), ("augmented", 0.28)]


def test_launcher_dry_run_prints_one_job_per_point_and_runs_nothing(tmp_path, sources, capsys):
    exp = write_experiment(tmp_path / "exp.yaml", sources)
    sw = tmp_path / "sw"
    sweep = write_sweep(tmp_path / "s.yaml", experiment=str(exp), sweep_dir=str(sw), grid={"seed": [0, 1]},
                        slurm={"partition": "gpu", "gpus_per_node": 8, "time": "1:00:00"},
                        tpu={"project": "my-proj", "zone": "us-east5-a", "bucket": "gs://b/sweeps",
                             "repo": "https://example.org/ipt.git", "ref": "abc123", "name_prefix": "swp",
                             "slice": "v5p-8"})  # fmt: skip
    out = {}
    for kind in ("gpu", "slurm", "tpu"):
        assert sweep_run.main(["--config", str(sweep), f"launch={kind}"]) == 0
        out[kind] = capsys.readouterr().out.splitlines()
    assert not sw.exists()
    train = f"ipt train --config {exp} seed=1 run_dir={sw}/seed-1"
    assert out["gpu"][2:] == [
        "# seed-1",
        f"env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 NCCL_NVLS_ENABLE=0 {train}",
    ]
    gpu = launcher("gpu")
    assert out["gpu"][3] == shlex.join(gpu.local_command(str(exp), ["seed=1", f"run_dir={sw}/seed-1"]))
    assert out["slurm"][3] == (
        f"sbatch --job-name=sw-seed-1 --output={sw}/seed-1/slurm-%j.log --nodes=1 --partition=gpu "
        f"--gpus-per-node=8 --time=1:00:00 '--wrap={train}'"
    )
    assert out["tpu"][3] == (
        f"python launch/tpu.py --config {exp} --name swp-1 --project=my-proj --zone=us-east5-a "
        f"--bucket=gs://b/sweeps --repo=https://example.org/ipt.git --ref=abc123 --slice=v5p-8 --set=seed=1 "
        f"--set=run_dir={sw}/seed-1 all --execute"
    )
    tpu = launcher("tpu")
    argv = shlex.split(out["tpu"][3])[2:-1]
    job, steps, _ = tpu.job_from_args(argv)
    assert steps == ["create", "wait", "setup", "train"] and job.accelerator_type == "v5p-8"
    assert (
        f"run_dir={sw}/seed-1" in job.train_script()
        and "checkpoint.directory=gs://b/sweeps/swp-1/checkpoints" in job.train_script()
    )


# ---- real sweeps: child `ipt train` processes on real shards ----


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, sources) -> dict:
    root = tmp_path_factory.mktemp("sweep-a")
    exp = write_experiment(root / "exp.yaml", sources)
    sweep = write_sweep(
        root / "s.yaml", experiment=str(exp), sweep_dir=str(root / "sw"), grid={"seed": [0, 1, 2]}
    )
    start = time.perf_counter()
    proc = run_sweep(sweep)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "sweep": sweep, "exp": exp, "dir": root / "sw", "out": proc.stdout,
            "seconds": time.perf_counter() - start}  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_a_summary_that_matches_each_points_metrics(finished_sweep):
    sw = finished_sweep["dir"]
    print(f"3-point tiny sweep: {finished_sweep['seconds']:.0f} s")
    rows = _rows(sw / "summary.csv")
    assert [r["name"] for r in rows] == SEEDS and {r["status"] for r in rows} == {"done"}
    finals, helds = [], []
    for row in rows:
        records = read_metrics(sw / row["name"])
        losses = [r["loss"] for r in records if "loss" in r]
        assert len(losses) == 6 and row["steps"] == "6"
        finals.append(statistics.fmean(losses[-3:]))
        helds.append([r["eval/held/loss"] for r in records if "eval/held/loss" in r][-1])
        assert float(row["final_train_loss"]) == finals[-1]
        assert float(row["eval/held/loss"]) == helds[-1]
        point = json.loads((sw / row["name"] / "point.json").read_text())
        assert point["values"] == {"seed": int(row["seed"])}
        assert (sw / row["name"] / "config.yaml").read_text().startswith("run_dir: ")
    assert len(set(finals)) == 3  # the seeds really differ
    (group,) = _rows(sw / "summary_seeds.csv")
    assert float(group["final_train_loss mean"]) == pytest.approx(statistics.fmean(finals), rel=1e-12)
    assert float(group["final_train_loss std"]) == pytest.approx(statistics.stdev(finals), rel=1e-12)
    assert group["eval/held/loss n"] == "3"
    md = (sw / "summary.md").read_text()
    assert "| seed-1 | done | 1 | 6 |" in md and "± " in md and "(3)" in md


def test_the_plot_shows_every_points_loss_curve_with_labelled_axes(finished_sweep):
    import matplotlib.image

    png = matplotlib.image.imread(finished_sweep["dir"] / "loss.png")
    assert png.shape[:2] == (500, 1100)  # 11 x 5 inches at 100 dpi: train and held-out panels
    assert png[..., :3].std() > 0.05 and len({tuple(px) for px in png[::7, ::7, :3].reshape(-1, 3)}) > 20
    plan = make_plan(load_config(SweepConfig, finished_sweep["sweep"]))
    fig = loss_figure("t", *loss_curves(plan))
    train, held = fig.axes
    assert (train.get_xlabel(), train.get_ylabel(), held.get_ylabel()) == (
        "step",
        "train loss",
        "held-out loss",
    )
    assert [t.get_text() for t in train.get_legend().get_texts()] == SEEDS
    assert [len(line.get_xdata()) for line in train.get_lines()] == [6, 6, 6]
    assert [list(line.get_xdata()) for line in held.get_lines()] == [[3, 6]] * 3


def test_rerun_skips_every_finished_point_and_retrains_nothing(finished_sweep):
    sw = finished_sweep["dir"]
    before = {name: file_states(sw / name) for name in SEEDS}
    summary = (sw / "summary.csv").read_bytes()
    proc = run_sweep(finished_sweep["sweep"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("done earlier, skipped") == 3 and "trained" not in proc.stdout
    assert {name: file_states(sw / name) for name in SEEDS} == before
    assert (sw / "summary.csv").read_bytes() == summary
    changed = run_sweep(finished_sweep["sweep"], "set.optimizer.schedule.peak_lr=0.002")
    assert changed.returncode == 2 and "point seed-0 finished with a different config" in changed.stderr
    assert {name: file_states(sw / name) for name in SEEDS} == before


def test_a_marker_matches_on_the_keys_both_configs_have():
    saved = {"steps": 6, "optimizer": {"peak_lr": 0.003, "gone": 1}, "data": {"sources": [{"weight": 1.0}]}}
    assert same_config(
        saved, {"steps": 6, "optimizer": {"peak_lr": 0.003, "new_key": 0}, "data": saved["data"]}
    )
    assert not same_config(saved, {**saved, "steps": 7})
    assert not same_config(saved, {**saved, "optimizer": {"peak_lr": 0.002}})
    assert not same_config(saved, {**saved, "data": {"sources": [{"weight": 2.0}]}})


@pytest.mark.slow
def test_a_sweep_killed_mid_point_finishes_it_on_rerun_with_the_same_summary(finished_sweep):
    root = finished_sweep["root"]
    sw = root / "killed"
    sweep = write_sweep(
        root / "k.yaml", experiment=str(finished_sweep["exp"]), sweep_dir=str(sw), grid={"seed": [0, 1, 2]}
    )
    proc = subprocess.Popen(sweep_cmd(sweep), env=child_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while not (sw / "seed-1" / "checkpoints" / "2").is_dir():
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its `ipt train`, as a job kill would
        proc.wait()
    assert (sw / "seed-0" / "SWEEP_DONE.json").exists() and not (sw / "seed-1" / "SWEEP_DONE.json").exists()
    rerun = run_sweep(sweep)
    assert rerun.returncode == 0, rerun.stderr
    assert "[1/3] seed-0: done earlier, skipped" in rerun.stdout
    assert "[2/3] seed-1: trained (resumed from its checkpoint)" in rerun.stdout
    assert "[3/3] seed-2: trained\n" in rerun.stdout
    for name in ("summary.csv", "summary_seeds.csv"):
        assert (sw / name).read_bytes() == (finished_sweep["dir"] / name).read_bytes()


@pytest.mark.slow
def test_a_failed_point_is_reported_and_the_other_points_still_run(tmp_path, sources):
    exp = write_experiment(tmp_path / "exp.yaml", sources, steps=4, evaluate=False)
    sweep = write_sweep(tmp_path / "s.yaml", experiment=str(exp), sweep_dir=str(tmp_path / "sw"),
                        grid={"optimizer.schedule.peak_lr": [1.0e30, 3.0e-3]})  # fmt: skip
    proc = run_sweep(sweep)
    assert proc.returncode == 1
    assert "FAILED point peak_lr-1e+30: ipt train exited with 3" in proc.stderr
    assert "non-finite" in proc.stderr  # the tail of the point's log says why
    assert "[2/2] peak_lr-0.003: trained" in proc.stdout
    rows = {r["name"]: r["status"] for r in _rows(tmp_path / "sw" / "summary.csv")}
    assert rows == {"peak_lr-1e+30": "incomplete", "peak_lr-0.003": "done"}
