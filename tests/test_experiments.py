"""The paper's experiment configs: each loads, names its data recipe, and pairs differ only in data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipt.config import load_config
from ipt.data.pipeline import DataConfig
from ipt.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p for p in (CONFIGS / "experiments").glob("*.yaml") if not p.name.startswith("_"))
RECIPE = {
    "scratch-500m-instruct": "from_scratch",
    "scratch-1.3b-instruct": "from_scratch",
    "scratch-500m-vanilla": "from_scratch_vanilla",
    "scratch-1.3b-vanilla": "from_scratch_vanilla",
    "continual-llama3-8b-biomed": "continual-biomed",
    "continual-llama3-8b-finance": "continual-finance",
}


@pytest.fixture(autouse=True)
def _default_data_dir(monkeypatch):
    monkeypatch.delenv("IPT_DATA_DIR", raising=False)


def _load(name: str) -> TrainConfig:
    return load_config(TrainConfig, CONFIGS / "experiments" / f"{name}.yaml")


def test_every_paper_experiment_has_a_recipe():
    assert {p.stem for p in EXPERIMENTS} == {*RECIPE, "quickstart", "synthesizer-mistral-7b"}


def test_the_synthesizer_fine_tune_keeps_each_sequence_whole_from_the_hf_weights():
    """`ipt tuning-data` writes few-shot sequences of up to 4096 tokens, one document each: they
    must sit whole in a row (pack, seq_len >= 4096) and train from the released base (init hf)."""
    cfg = _load("synthesizer-mistral-7b")
    assert cfg.data.packing == "pack" and cfg.data.seq_len >= 4096
    assert cfg.init.source == "hf" and cfg.init.path
    assert [s.name for s in cfg.data.sources] == ["synthesizer_tuning"]
    assert cfg.target and cfg.target.startswith("v5p-") and cfg.run_dir == "runs/synthesizer-mistral-7b"
    assert cfg.data.batch_size % cfg.grad_accum == 0


@pytest.mark.parametrize("name", sorted(RECIPE))
def test_experiment_trains_on_its_recipe(name):
    cfg = _load(name)
    recipe = load_config(DataConfig, CONFIGS / "data" / f"{RECIPE[name]}.yaml")
    assert cfg.data.sources == recipe.sources and cfg.data.eval_sources == recipe.eval_sources
    assert cfg.target and cfg.target.startswith("v5p-")
    assert cfg.run_dir == f"runs/{name}"
    assert cfg.data.batch_size % cfg.grad_accum == 0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("scratch-500m-instruct", "scratch-500m-vanilla"),
        ("scratch-1.3b-instruct", "scratch-1.3b-vanilla"),
        ("continual-llama3-8b-biomed", "continual-llama3-8b-finance"),
    ],
)
def test_an_ablation_is_one_data_change(a, b):
    """Apart from the run directory and the data sources, the paired runs are identical."""
    dump_a, dump_b = (_load(n).model_dump() for n in (a, b))
    for dump in (dump_a, dump_b):
        dump.pop("run_dir")
        dump["data"].pop("sources")
        dump["data"].pop("eval_sources")
    assert dump_a == dump_b
    assert _load(a).data.sources != _load(b).data.sources
