"""`ipt compile`: the train step compiled for TPU slices on this CPU (needs libtpu), with a memory verdict."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import yaml
from test_train_loop import MODEL

from ipt.config import load_config
from ipt.data.packing import BATCH_KEYS
from ipt.train.aot import GIB, compile_for_slice, run_compile, topology_name, verdict
from ipt.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install 'ipt[tpu]'); it provides the TPU compiler for AOT",
)


def test_slice_names_map_to_physical_topologies():
    assert topology_name("v5p-8") == ("v5p", "v5p:2x2x1")  # v5p counts TensorCores: 4 chips
    assert topology_name("v5p-32") == ("v5p", "v5p:2x2x4")
    assert topology_name("v4-16") == ("v4", "v4:2x2x2")
    assert topology_name("v5e-16") == ("v5e", "v5e:4x4")  # v5e/v6e count chips
    assert topology_name("v6e-8") == ("v6e", "v6e:2x4")
    assert topology_name("v5p:4x4x4") == ("v5p", "v5p:4x4x4")
    with pytest.raises(ValueError, match=r"expected e\.g\. v5p-8"):
        topology_name("a100-8")
    with pytest.raises(ValueError, match="unknown slice size"):
        topology_name("v5e-12")


def _config(tmp_path: Path, **top) -> TrainConfig:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "model": MODEL,
        "data": {"sources": [{"name": "c", "path": "not/read/by/compile"}], "seq_len": 128, "batch_size": 16},
        "steps": 10,
        **top,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(TrainConfig, path)


@needs_libtpu
def test_small_model_fits_a_v5e_slice(tmp_path, capsys):
    cfg = _config(tmp_path, compile={"topology": "v5e-4"})
    report = compile_for_slice(cfg)
    assert report.num_devices == 4 and "v5 lite" in report.device_kind
    assert report.hbm_per_device == 16 * GIB
    # the whole state is donated (aliased to the outputs): the arguments beyond it are the batch,
    # 5 int32 arrays of 16 x 128 split over 4 chips
    assert report.arguments - report.aliased == 5 * 4 * 128 * 4
    assert 0 < report.total < 1 * GIB and report.compiled_flops > 0
    assert verdict(cfg, report) == 0
    out = capsys.readouterr().out
    assert "fits" in out and "temporaries" in out


@needs_libtpu
def test_a_config_that_does_not_fit_fails_clearly(tmp_path, capsys):
    # 4096 rows per chip x 128 tokens of f32 logits over a 4096 vocab: 8 GiB per chip, twice over
    cfg = _config(tmp_path, compile={"topology": "v5e-4"}, data={
        "sources": [{"name": "c", "path": "x"}], "seq_len": 128, "batch_size": 16384})  # fmt: skip
    assert run_compile(cfg) == 1
    err = capsys.readouterr().err
    assert "does NOT fit" in err


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize(
    "experiment, topology",
    [("scratch-1.3b-instruct.yaml", "v5p-8"), ("continual-llama3-8b-biomed.yaml", "v5p-32")],
)
def test_paper_experiments_fit_their_slices(experiment, topology, capsys):
    cfg = load_config(
        TrainConfig, ROOT / "configs/experiments" / experiment, [f"compile.topology={topology}"]
    )
    assert cfg.target == topology
    assert run_compile(cfg) == 0
    out = capsys.readouterr().out
    assert "fits" in out
    print(out)


@needs_libtpu
def test_multislice_mesh_puts_the_dcn_axis_across_slices(monkeypatch):
    from jax.experimental import topologies

    from ipt.train.mesh import MeshConfig, make_mesh

    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", num_slices=2).devices
    mesh = make_mesh(MeshConfig(axes={"data": 1, "fsdp": -1, "tensor": 1}, dcn={"data": 2}), devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    slices = [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)]
    assert slices == [{0}, {1}]  # fsdp stays within a slice (ICI), data crosses slices (DCN)


def test_a_slice_that_does_not_exist_is_refused_clearly(tmp_path, capsys):
    assert run_compile(_config(tmp_path, compile={"topology": "v5e-12"})) == 2
    assert "unknown slice size" in capsys.readouterr().err


SPLASH_MODEL = {
    **MODEL,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "attention": "splash",
}


@needs_libtpu
def test_splash_attention_compiles_inside_the_sharded_step(tmp_path):
    """The Pallas kernel is opaque to GSPMD: the step must hand it per-shard blocks (shard_map)."""
    from ipt.train.run import Trainer

    cfg = _config(
        tmp_path, model=SPLASH_MODEL, compile={"topology": "v5e-4"},
        mesh={"axes": {"data": 1, "fsdp": 2, "tensor": 2}},
    )  # fmt: skip
    report = compile_for_slice(cfg)
    assert verdict(cfg, report) == 0 and report.num_devices == 4
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
    trainer = Trainer(cfg, devices=list(devices))
    sharding = trainer.rules.batch_sharding()
    batch = {k: jax.ShapeDtypeStruct((16, 128), jnp.int32, sharding=sharding) for k in BATCH_KEYS}
    text = trainer.train_step.lower(trainer.abstract, batch, trainer.parts.rest).as_text()
    assert text.count("tpu_custom_call") >= 3  # forward, dq and dkv kernels
    assert "shard_map" in text or "manual" in text
