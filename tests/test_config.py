"""Config loading: bases, overrides, interpolation and the errors a user sees."""

from __future__ import annotations

import pytest
from pydantic import Field

from ipt.cli import main as ipt_main
from ipt.config import Config, ConfigError, describe_keys, load_config, parse_overrides


class Model(Config):
    d_model: int = 64
    n_layers: int = Field(2, description="number of transformer blocks")


class Data(Config):
    path: str
    weight: float = 1.0


class Experiment(Config):
    name: str = "exp"
    model: Model = Model()
    data: Data
    tags: list[str] = []
    extra_data: list[Data] | None = None


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bases_nested_and_overrides(tmp_path):
    write(tmp_path / "model" / "small.yaml", "d_model: 128\nn_layers: 4\n")
    write(tmp_path / "exp" / "parent.yaml", "name: parent\ndata: {path: /a, weight: 0.5}\n")
    exp = write(
        tmp_path / "exp" / "child.yaml",
        "base: parent.yaml\nname: child-${model.d_model}\nmodel:\n  base: ../model/small.yaml\n  n_layers: 6\n",
    )
    cfg = load_config(Experiment, exp, ["data.weight=0.25", "tags=[a,b]"])
    assert cfg.model == Model(d_model=128, n_layers=6)
    assert cfg.data == Data(path="/a", weight=0.25)
    assert cfg.name == "child-128"
    assert cfg.tags == ["a", "b"]


def test_unknown_key_names_file_and_suggests(tmp_path):
    exp = write(tmp_path / "e.yaml", "data: {path: x}\nmodel: {n_layer: 3}\n")
    with pytest.raises(ConfigError) as e:
        load_config(Experiment, exp)
    msg = str(e.value)
    assert "model.n_layer" in msg and str(exp) in msg and "did you mean `model.n_layers`" in msg


def test_unknown_override_is_attributed_to_command_line():
    with pytest.raises(
        ConfigError, match=r"unknown key `dat` \(set in the command line\); did you mean `data`"
    ):
        load_config(Experiment, None, ["dat.path=x"])


def test_wrong_type_and_missing(tmp_path):
    exp = write(tmp_path / "e.yaml", "data: {path: x}\nmodel: {d_model: big}\n")
    with pytest.raises(ConfigError, match=r"`model.d_model`.*'big'.*e.yaml"):
        load_config(Experiment, exp)
    with pytest.raises(ConfigError, match=r"missing required value `data`"):
        load_config(Experiment, None, [])
    empty = write(tmp_path / "empty.yaml", "name: x\n")
    with pytest.raises(
        ConfigError, match=r"invalid config \(.*empty.yaml\):\n  missing required value `data`"
    ):
        load_config(Experiment, empty)


def test_keys_inside_lists_name_their_file_and_suggest(tmp_path):
    base = write(tmp_path / "data.yaml", "extra_data:\n  - {path: a}\n  - {path: b, wieght: 2}\n")
    exp = write(tmp_path / "exp.yaml", "base: data.yaml\ndata: {path: x}\n")
    with pytest.raises(ConfigError) as e:
        load_config(Experiment, exp)
    msg = str(e.value)
    assert f"unknown key `extra_data.1.wieght` (set in {base})" in msg
    assert "did you mean `extra_data.1.weight`?" in msg
    # a list set in the experiment replaces the base's list, and the blame moves with it
    write(tmp_path / "exp.yaml", "base: data.yaml\ndata: {path: x}\nextra_data: [{path: c, weight: heavy}]\n")
    with pytest.raises(ConfigError, match=r"`extra_data.0.weight`: .*'heavy', set in .*exp.yaml"):
        load_config(Experiment, exp)


def test_base_cycle_and_missing_file(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Experiment, tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "base: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"nope.yaml.*named as a base in .*c.yaml"):
        load_config(Experiment, tmp_path / "c.yaml")


def test_only_true_and_false_are_booleans(tmp_path):
    """YAML 1.1 reads on/off/yes/no as booleans; here they stay strings, in files and overrides."""
    assert parse_overrides(["a=off", "b=on", "c=no", "d=true", "e=False", "f=1"]) == {
        "a": "off", "b": "on", "c": "no", "d": True, "e": False, "f": 1,
    }  # fmt: skip
    exp = write(tmp_path / "e.yaml", "name: off\ndata: {path: yes}\ntags: [on, n]\n")
    cfg = load_config(Experiment, exp)
    assert (cfg.name, cfg.data.path, cfg.tags) == ("off", "yes", ["on", "n"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_overrides(["novalue"])


def test_describe_keys_lists_defaults():
    lines = describe_keys(Experiment)
    assert "model.n_layers: int = 2  # number of transformer blocks" in lines
    assert "data.path: str = (required)" in lines


def test_cli_unknown_command(capsys):
    assert ipt_main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert ipt_main(["--help"]) == 0


def test_a_check_across_keys_names_them_not_the_whole_config(tmp_path, capsys):
    """Cross-field validators used to print `(top level)` and the whole config as the input."""
    from pathlib import Path

    from ipt.train.config import TrainConfig

    tiny = Path(__file__).resolve().parents[1] / "configs/model/tiny.yaml"
    (tmp_path / "t.yaml").write_text(
        f"run_dir: r\nsteps: 2\nmodel: {{base: {tiny}}}\ndata: {{sources: [{{name: a, path: a}}], batch_size: 8}}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, tmp_path / "t.yaml", ["grad_accum=3"])
    (line,) = str(e.value).splitlines()[1:]
    assert line.strip() == "data.batch_size=8 is not divisible by grad_accum=3"
    assert ipt_main(["synthesize", "input=x", "output_dir=y", "shard=2", "num_shards=2"]) == 2
    err = capsys.readouterr().err
    assert "shard=2 must be below num_shards=2" in err and "top level" not in err and "{" not in err


def test_a_suggestion_prefers_the_key_that_holds_every_word():
    from ipt.config import closest_key

    keys = ["num_hidden_layers", "scan_layers", "num_attention_heads", "weight"]
    assert closest_key("num_layers", keys) == "num_hidden_layers"  # difflib alone says scan_layers
    assert closest_key("wieght", keys) == "weight"
    assert closest_key("zzz", keys) is None


def test_a_sequence_length_splash_cannot_run_is_a_config_error(tmp_path):
    """It used to be a traceback from inside the kernel at the first step."""
    from pathlib import Path

    from ipt.train.config import TrainConfig

    tiny = Path(__file__).resolve().parents[1] / "configs/model/tiny.yaml"
    (tmp_path / "t.yaml").write_text(
        f"run_dir: r\nsteps: 2\nmodel: {{base: {tiny}, attention: splash}}\ndata: {{sources: [{{name: a, path: a}}]}}\n"
    )
    for bad in (100, 640):
        with pytest.raises(ConfigError, match=rf"data.seq_len={bad}: attention=splash needs"):
            load_config(TrainConfig, tmp_path / "t.yaml", [f"data.seq_len={bad}"])
    for good in (128, 384, 1024):
        assert load_config(TrainConfig, tmp_path / "t.yaml", [f"data.seq_len={good}"]).data.seq_len == good
