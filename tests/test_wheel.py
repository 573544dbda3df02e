"""The built wheel carries the presets, experiments, sweeps and launchers, and an install of it runs
from a directory outside the checkout on its own copies (never on this checkout's files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "ipt", "configs", "launch")  # what the build reads
PACKAGE_PATH = {"ipt": "ipt", "configs": "ipt/configs", "launch": "ipt/launch"}  # as pyproject maps them
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]

# Runs in the installed copy: a stage through the CLI entry point, then where everything came from.
CHECK = """
import json, sys
from ipt.cli import main
code = main(["model", "info", "ipt-500m"])
from ipt import resources
from ipt.config import load_config
from ipt.quickstart.run import CORPUS, QuickstartConfig
from ipt.sweep.launch import launcher
from ipt.train.config import TrainConfig
quick = QuickstartConfig()
train = load_config(TrainConfig, quick.train_config)
print(json.dumps({
    "code": code,
    "train_config": quick.train_config,
    "layers": train.model.num_hidden_layers,
    "corpus": str(CORPUS),
    "presets": resources.config_names("model"),
    "sweeps": resources.config_names("sweeps"),
    "launchers": [launcher(n).__file__ for n in ("gpu", "tpu")],
    "modules": sorted({m.__file__ for n, m in sys.modules.items()
                       if n.split(".")[0] == "ipt" and getattr(m, "__file__", None)}),
}))
"""


def _shipped(root: Path) -> set[str]:
    """Every file of ipt/, configs/ and launch/, as its path inside the wheel."""
    out = set()
    for top, inside in PACKAGE_PATH.items():
        for path in (root / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.add(f"{inside}/{path.relative_to(root / top).as_posix()}")
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the sources (building in place would leave build/ in the checkout)."""
    pytest.importorskip("setuptools")
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": ignore} if (ROOT / name).is_dir() else {}))
    cmd = [*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir", "-q"]
    done = subprocess.run([*cmd, "-w", str(dist), str(src)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = dist.glob("ipt-*.whl")
    return built


def test_wheel_holds_every_file_of_ipt_configs_and_launch(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_shipped(ROOT) - names)
    assert not missing, f"not in the wheel (a new package missing from pyproject.toml's list?): {missing}"
    for kind in ("model", "experiments", "sweeps", "data"):
        assert any(n.startswith(f"ipt/configs/{kind}/") and n.endswith(".yaml") for n in names), kind
    assert {"ipt/configs/model/ipt-500m.yaml", "ipt/configs/experiments/quickstart.yaml"} <= names
    assert {"ipt/launch/gpu.py", "ipt/launch/tpu.py", "ipt/assets/corpus.jsonl.gz"} <= names


def test_installed_wheel_runs_from_outside_the_checkout_on_its_own_files(wheel, tmp_path):
    target, cwd = tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    assert ROOT not in cwd.parents
    cmd = [*PIP, "install", "--no-deps", "--no-index", "--no-cache-dir", "-q", "--target", str(target)]
    done = subprocess.run([*cmd, str(wheel)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu"}

    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "model: ipt-500m" in done.stdout and "501,007,872" in done.stdout, done.stdout
    assert report["code"] == 0
    assert report["train_config"] == str(target / "ipt/configs/experiments/quickstart.yaml")
    assert report["layers"] == 2  # quickstart.yaml's `base: ../model/tiny.yaml`, from the installed copy
    assert report["corpus"] == str(target / "ipt/assets/corpus.jsonl.gz")
    assert {"ipt-500m", "tiny"} <= set(report["presets"]) and "toy-3seed" in report["sweeps"]
    assert report["launchers"] == [str(target / f"ipt/launch/{n}.py") for n in ("gpu", "tpu")]
    foreign = [f for f in report["modules"] if not f.startswith(str(target))]
    assert not foreign, f"imported from outside the installed copy: {foreign}"

    done = subprocess.run(
        [sys.executable, "-m", "ipt.cli", "quickstart", "--help"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"train_config: str = '{target / 'ipt/configs/experiments/quickstart.yaml'}'" in done.stdout
