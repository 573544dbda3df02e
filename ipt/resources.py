"""The files ipt ships besides its code: config presets (`configs/`) and cluster launchers (`launch/`).

pyproject.toml maps the repository's top-level `configs/` to the package `ipt.configs` and `launch/`
to `ipt.launch`, so an editable install reads the checkout's files and a wheel reads its own copies.
Code finds them here, through `importlib.resources`, never by walking up from `__file__`.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import resources
from pathlib import Path
from types import ModuleType

CONFIGS = "ipt.configs"
LAUNCH = "ipt.launch"
CONFIG_KINDS = ("model", "experiments", "sweeps", "data")


def config_dir(kind: str) -> Path:
    """`configs/<kind>/` of this install. A real directory, because configs name their bases by
    relative path (`base: ../model/tiny.yaml`); pip always installs a wheel unpacked."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"config kind {kind!r}: expected one of {', '.join(CONFIG_KINDS)}")
    root = resources.files(_package(CONFIGS))
    if not isinstance(root, Path):
        raise RuntimeError(f"{CONFIGS} is not on the file system ({root!r}); install ipt unpacked")
    return root / kind


def config_file(kind: str, name: str) -> Path:
    """`configs/<kind>/<name>.yaml` of this install (it may not exist: check before reading)."""
    return config_dir(kind) / f"{name}.yaml"


def config_names(kind: str) -> list[str]:
    """The shipped configs of one kind, by name; `_`-prefixed files are bases, not listed."""
    return sorted(p.stem for p in config_dir(kind).glob("*.yaml") if not p.name.startswith("_"))


def launcher(name: str) -> ModuleType:
    """`launch/<name>.py` as the module `ipt.launch.<name>` (ModuleNotFoundError if there is none)."""
    module = f"{_package(LAUNCH)}.{name}"
    if not name.isidentifier() or importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"no launcher launch/{name}.py in this install of ipt", name=module)
    return importlib.import_module(module)


def _package(name: str) -> str:
    """`name`, or why it cannot be imported: a checkout on PYTHONPATH has ipt but not these two
    packages, which only the install's mapping (pyproject.toml) puts inside ipt."""
    if importlib.util.find_spec(name) is None:
        raise ModuleNotFoundError(
            f"{name} is missing: run ipt from an install (`pip install -e .` in a checkout), "
            "not from a checkout on PYTHONPATH",
            name=name,
        )
    return name
