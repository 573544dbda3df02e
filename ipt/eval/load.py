"""What `ipt eval` can evaluate: an ipt model directory, a training run (any saved step), or a
Hugging Face directory, each restored straight into the training shardings of the eval mesh.

A training run is read without its optimizer state (Orbax partial restore of `params`), and
its tokenizer is found in the manifest of the run's first data source, whose vocabulary hash
then guards against scoring with a tokenizer the model was not trained with.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import orbax.checkpoint as ocp

from ipt.config import ConfigError, load_config
from ipt.model import ModelConfig
from ipt.model.sharding import LogicalRules, param_shardings
from ipt.train.config import TrainConfig


class ModelLoadError(ValueError):
    """The model to evaluate cannot be found or does not fit its tokenizer; the message says why."""


@dataclasses.dataclass
class LoadedModel:
    config: ModelConfig
    params: dict
    name: str  # how results name the model: the directory, plus the step for a run
    tokenizer: str | None  # the tokenizer that came with the model, if one did
    vocab_hash: str | None  # the vocabulary hash the model was trained with, if known


def model_kind(path: Path) -> str:
    """`hf`, `model_dir` or `run` from the files in `path`."""
    if (path / "config.json").exists():
        return "hf"
    if (path / "config.yaml").exists() and (path / "params").is_dir():
        return "model_dir"
    if (path / "config.yaml").exists():
        return "run"
    raise ModelLoadError(
        f"{path}: not a model: expected a Hugging Face directory (config.json), an ipt model "
        "directory (config.yaml + params/) or a training run directory (config.yaml + checkpoints)"
    )


def load_for_eval(
    path: str | Path, rules: LogicalRules, step: int | None = None, runtime: dict | None = None
) -> LoadedModel:
    """Restore the model at `path` onto `rules.mesh`; `runtime` overrides ipt fields (dtype, attention)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model directory")
    kind = model_kind(path)
    if step is not None and kind != "run":
        raise ModelLoadError(f"{path}: `step` applies to a training run directory, not to a {kind} directory")
    runtime = runtime or {}
    if kind == "hf":
        return _load_hf(path, rules, runtime)
    if kind == "model_dir":
        from ipt.model.store import PARAMS_DIR, load_model_config_dir

        config = load_model_config_dir(path).model_copy(update=runtime)
        params = _restore(path / PARAMS_DIR, config, rules, partial=False)
        return LoadedModel(config, params, path.name, None, None)
    return _load_run(path, rules, step, runtime)


def _load_hf(path: Path, rules: LogicalRules, runtime: dict) -> LoadedModel:
    from ipt.model.hf import config_from_hf, import_params

    config = config_from_hf(
        json.loads((path / "config.json").read_text()), str(path / "config.json"), **runtime
    )
    params = import_params(path, config, shardings=param_shardings(config, rules))
    has_tokenizer = any(path.glob("tokenizer*"))
    return LoadedModel(config, params, path.name, str(path) if has_tokenizer else None, None)


def _load_run(path: Path, rules: LogicalRules, step: int | None, runtime: dict) -> LoadedModel:
    try:
        run = load_config(TrainConfig, path / "config.yaml")
    except ConfigError as e:
        raise ModelLoadError(f"{path}: not a readable training run: {e}") from None
    config = run.model.model_copy(update=runtime)
    directory = Path(run.checkpoint.directory or path / "checkpoints")
    steps = _finished_steps(directory)
    if not steps:
        raise ModelLoadError(f"{path}: no finished checkpoint in {directory}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ModelLoadError(f"{path}: no checkpoint for step {step}; saved steps: {steps}")
    params = _restore(directory / str(step) / "state", config, rules, partial=True)
    tokenizer, vocab = training_tokenizer(run)
    return LoadedModel(config, params, f"{path.name}-step{step}", tokenizer, vocab)


def training_tokenizer(run: TrainConfig) -> tuple[str | None, str | None]:
    """The tokenizer name and vocabulary hash in the manifest of a run's first data source
    (None, None when the data has moved: the caller must then name the tokenizer)."""
    from ipt.data.records import read_manifest

    try:
        manifest = read_manifest(run.data.sources[0].path)
    except (FileNotFoundError, ValueError):
        return None, None
    return manifest.tokenizer.name, manifest.tokenizer.vocab_hash


def checked_tokenizer(spec: str | None, config: ModelConfig, expected_hash: str | None, where: str):
    """Load the tokenizer `spec` and refuse one that cannot be this model's: more tokens than
    the model's vocabulary, or a vocabulary other than the one the model was trained with."""
    from ipt.data.tokenizer import load_tokenizer, vocab_hash

    if spec is None:
        raise ModelLoadError(f"{where}: no tokenizer came with this model; set tokenizer=NAME_OR_DIR")
    try:
        tokenizer = load_tokenizer(spec)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"tokenizer={spec}: cannot be loaded ({e})") from None
    if len(tokenizer) > config.vocab_size:
        raise ModelLoadError(
            f"tokenizer {spec} has {len(tokenizer)} tokens but the model's vocabulary holds "
            f"{config.vocab_size}: it is not this model's tokenizer"
        )
    if expected_hash is not None and vocab_hash(tokenizer) != expected_hash:
        raise ModelLoadError(
            f"tokenizer {spec} differs from the one the model was trained with (vocabulary hash "
            f"{vocab_hash(tokenizer)[:12]} vs {expected_hash[:12]} in the training data's manifest)"
        )
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"tokenizer {spec} has no eos token; lm-eval needs one as end-of-text")
    return tokenizer


def _finished_steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def _restore(directory: Path, config: ModelConfig, rules: LogicalRules, partial: bool) -> dict:
    """Parameters from an Orbax item (a train state: only its `params`), placed on the mesh."""
    from ipt.model.store import abstract_params

    target = abstract_params(config, param_shardings(config, rules))
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        if not partial:
            return checkpointer.restore(
                directory.absolute(),
                args=ocp.args.PyTreeRestore(target, ocp.checkpoint_utils.construct_restore_args(target)),
            )
        item = {"params": target}
        restored = checkpointer.restore(
            directory.absolute(),
            args=ocp.args.PyTreeRestore(
                item, ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
            ),
        )
        return restored["params"]
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise ModelLoadError(
            f"{directory}: cannot restore the parameters of this model config ({type(e).__name__}: {e})"
        ) from None
