"""`ipt data plan`: tokens drawn per source and epochs, on the shipped recipes, with warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipt.config import ConfigError, load_config
from ipt.data.pipeline import DataConfig
from ipt.data.plan import PlanConfig, main, parse_count, plan
from ipt.data.records import Manifest, ShardInfo, TokenizerInfo, write_manifest

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "data"
TOKENIZER = TokenizerInfo(name="mistral-v1", vocab_size=32000, vocab_hash="ab" * 32, bos_id=1, eos_id=2)


def _source(
    directory: Path, num_tokens: int, num_docs: int = 1000, tokenizer: TokenizerInfo = TOKENIZER
) -> None:
    """A shard directory's manifest, as `ipt tokenize` writes it (the plan reads nothing else)."""
    directory.mkdir(parents=True)
    shard = ShardInfo(
        file="shard-00000-00000.array_record", num_docs=num_docs, num_tokens=num_tokens, sha256="0" * 64
    )
    write_manifest(
        directory,
        Manifest(
            tokenizer=tokenizer,
            add_bos=True,
            add_eos=True,
            dtype="uint16",
            has_loss_mask=False,
            shards=[shard],
            num_docs=num_docs,
            num_tokens=num_tokens,
        ),
    )


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_are_valid_data_configs(path, monkeypatch):
    monkeypatch.delenv("IPT_DATA_DIR", raising=False)
    cfg = load_config(DataConfig, path)
    assert cfg.packing == "concat"
    assert cfg.eval_sources, "every recipe names its held-out shards"
    assert all(s.path.startswith("data/tokens/") for s in (*cfg.sources, *cfg.eval_sources))


def test_from_scratch_recipe_repeats_the_synthesizer_data_four_times(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPT_DATA_DIR", str(tmp_path))
    _source(tmp_path / "tokens/raw", 71_400_000_000)
    _source(tmp_path / "tokens/augmented", 27_800_000_000)
    _source(tmp_path / "tokens/synth_ft", 200_000_000)
    assert main([str(RECIPES / "from_scratch.yaml"), "budget_tokens=100B"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    rows = {line.split()[0]: line.split() for line in out.out.splitlines()[3:]}
    assert rows["synth_ft"][1:] == ["0.80%", "200.00M", "800.00M", "4.00"]
    assert rows["raw"][-1] == "1.00" and rows["augmented"][-1] == "1.00"

    # twice the budget: the fine-tuning data would be read 8 times, past the limit
    assert main([str(RECIPES / "from_scratch.yaml"), "budget_tokens=200B"]) == 0
    err = capsys.readouterr().err
    assert "source 'synth_ft'" in err and "8.00 times, more than max_epochs=4" in err
    assert "'raw'" not in err


def test_continual_recipe_mixes_one_to_one_by_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("IPT_DATA_DIR", str(tmp_path))
    _source(tmp_path / "tokens/biomed_augmented", 3_000_000_000, num_docs=2_000_000)
    _source(tmp_path / "tokens/general_instructions", 1_000_000_000, num_docs=4_000_000)
    cfg = load_config(PlanConfig, RECIPES / "continual-biomed.yaml", ["budget_tokens=4e9"])
    rows = {r["name"]: r for r in plan(cfg)}
    assert rows["biomed_augmented"]["drawn_tokens"] == rows["general_instructions"]["drawn_tokens"] == 2e9
    assert rows["biomed_augmented"]["epochs"] == pytest.approx(2 / 3)
    assert rows["general_instructions"]["epochs"] == pytest.approx(2.0)


def test_plan_refuses_sources_from_different_tokenizers(tmp_path):
    _source(tmp_path / "a", 10**6)
    _source(tmp_path / "b", 10**6, tokenizer=TOKENIZER.model_copy(update={"vocab_hash": "cd" * 32}))
    cfg = PlanConfig(
        sources=[{"name": "a", "path": str(tmp_path / "a")}, {"name": "b", "path": str(tmp_path / "b")}],
        budget_tokens=10,
    )
    with pytest.raises(ValueError, match="re-tokenize them with one tokenizer"):
        plan(cfg)


@pytest.mark.parametrize(
    ("text", "value"),
    [("100B", 10**11), ("2.5e9", 2_500_000_000), ("300m", 3 * 10**8), ("1_000", 1000), (7, 7)],
)
def test_parse_count(text, value):
    assert parse_count(text) == value


def test_budget_is_required_and_checked(capsys):
    with pytest.raises(ConfigError, match="missing required value `budget_tokens`"):
        load_config(PlanConfig, RECIPES / "continual-biomed.yaml")
    assert main([str(RECIPES / "continual-biomed.yaml"), "budget_tokens=lots"]) == 2
    assert "expected a token count like 100B" in capsys.readouterr().err
