"""Typed configs: YAML files that build on each other, dotted overrides, pydantic validation.

A config file is YAML. Any mapping in it may hold a `base:` key (a path or a list of paths,
relative to the file that names them); the bases are loaded first and the mapping's own keys
are merged over them, so an experiment can say `model: {base: ../model/ipt-500m.yaml}`.
Command-line overrides are `dotted.key=value`, with the value parsed as YAML. OmegaConf does
the merging and `${...}` interpolation; pydantic checks types. Every error names the key, the
file (or the command line) that set it, and the closest valid key.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, ValidationError

BASE_KEY = "base"
CLI = "the command line"


class ConfigError(ValueError):
    """A config could not be loaded or validated; the message says where and why."""


class Config(BaseModel):
    """Base of every config: unknown keys are errors, values are frozen after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


C = TypeVar("C", bound=Config)


class _YamlLoader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false, so `distributed=off` stays the string 'off'."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: no arbitrary objects


def _load_yaml(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    """Load one file with its bases resolved; return the tree and the key -> file provenance."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: `base` cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        tree = _parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        where = f" (named as a base in {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    tree = {} if tree is None else tree
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
    return _resolve_bases(tree, path, (*chain, path), prefix="")


def _resolve_bases(
    node: dict, path: Path, chain: tuple[Path, ...], prefix: str
) -> tuple[dict, dict[str, str]]:
    merged: dict = {}
    origin: dict[str, str] = {}
    bases = node.get(BASE_KEY, [])
    for base in [bases] if isinstance(bases, str) else bases:
        sub, sub_origin = _load_yaml(path.parent / base, chain)
        merged = _merge(merged, sub)
        origin.update({f"{prefix}{k}": v for k, v in sub_origin.items()})
    own: dict = {}
    for key, value in node.items():
        if key == BASE_KEY:
            continue
        where = f"{prefix}{key}"
        if isinstance(value, dict):
            value, sub_origin = _resolve_bases(value, path, chain, prefix=f"{where}.")
        else:
            # a list or scalar replaces the bases' value whole, and with it their provenance
            origin = {k: v for k, v in origin.items() if not k.startswith(f"{where}.")}
            value, sub_origin = (
                _resolve_items(value, path, chain, where) if isinstance(value, list) else (value, {})
            )
        origin.update(sub_origin)
        own[key] = value
        origin[where] = str(path)
    return _merge(merged, own), origin


def _resolve_items(
    items: list, path: Path, chain: tuple[Path, ...], where: str
) -> tuple[list, dict[str, str]]:
    """A list's mappings may hold `base:` too; record each element's file as `key.INDEX`."""
    out: list = []
    origin: dict[str, str] = {}
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item, sub_origin = _resolve_bases(item, path, chain, prefix=f"{where}.{i}.")
            origin.update(sub_origin)
        origin[f"{where}.{i}"] = str(path)
        out.append(item)
    return out, origin


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: Sequence[str]) -> dict:
    """`a.b=1 c=[x,y]` -> {"a": {"b": 1}, "c": ["x", "y"]}; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{CLI}: override {item!r} is not of the form dotted.key=value")
        try:
            value = _parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{CLI}: override {item!r} conflicts with an earlier override of {p}")
        node[leaf] = value
    return tree


def _flat_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys.append(f"{prefix}{k}")
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, f"{prefix}{k}."))
    return keys


def _model_at(cls: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The config class that owns the field at `loc` (for suggesting sibling keys)."""
    annotation: Any = cls
    for part in loc:
        if isinstance(part, int):
            annotation = _item_annotation(annotation)
            continue
        owner = _config_class(annotation)
        if owner is None or part not in owner.model_fields:
            return None
        annotation = owner.model_fields[part].annotation
    return _config_class(annotation)


def _config_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _config_class(arg)
            if found is not None:
                return found
    return None


def _item_annotation(annotation: Any) -> Any:
    """`list[X]`, `tuple[X, ...]` or `list[X] | None` -> X (None for anything else)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        found = [_item_annotation(arg) for arg in typing.get_args(annotation)]
        return next((f for f in found if f is not None), None)
    if typing.get_origin(annotation) in (list, tuple, Sequence):
        args = typing.get_args(annotation)
        return args[0] if args else None
    return None


def closest_key(name: str, keys: Sequence[str]) -> str | None:
    """The key a mistyped `name` most likely meant: one holding all of its words
    (`num_layers` -> `num_hidden_layers`), else the closest spelling (`wieght` -> `weight`)."""
    words = set(name.lower().split("_"))
    holding = [k for k in keys if words <= set(k.lower().split("_"))]
    if holding:
        return min(holding, key=len)
    close = difflib.get_close_matches(name, list(keys), n=1)
    return close[0] if close else None


def _describe(err: dict, schema: type[BaseModel], origin: dict[str, str]) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-union")))]
    key = ".".join(str(p) for p in loc) or "(top level)"
    where = origin.get(key, CLI)
    if err["type"] == "extra_forbidden":
        owner = _model_at(schema, loc[:-1])
        close = closest_key(str(loc[-1]), list(owner.model_fields) if owner else [])
        hint = f"; did you mean `{'.'.join([*map(str, loc[:-1]), close])}`?" if close else ""
        return f"unknown key `{key}` (set in {where}){hint}"
    if err["type"] == "missing":
        return f"missing required value `{key}`: set it in the config file or as {key}=..."
    message = err["msg"].removeprefix("Value error, ")
    if isinstance(err.get("input"), dict):  # a check across keys: its message names them
        return f"{message} (in `{key}`)" if loc else message
    given = f" (got {err['input']!r}, set in {where})" if "input" in err else ""
    return f"`{key}`: {message}{given}"


def load_config(schema: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Load `path` (with its bases), apply `overrides`, interpolate `${...}`, and validate."""
    tree: dict = {}
    origin: dict[str, str] = {}
    if path is not None:
        tree, origin = _load_yaml(Path(path), ())
    cli_tree = parse_overrides(overrides)
    tree = _merge(tree, cli_tree)
    origin.update({k: CLI for k in _flat_keys(cli_tree)})
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    except Exception as e:  # OmegaConf raises several unrelated types for bad interpolation
        raise ConfigError(f"{path or CLI}: cannot resolve interpolation: {e}") from None
    try:
        return schema.model_validate(resolved)
    except ValidationError as e:
        lines = [_describe(err, schema, origin) for err in e.errors()]
        head = f"invalid config ({path})" if path else "invalid config"
        raise ConfigError(head + ":\n  " + "\n  ".join(lines)) from None


def describe_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per key: `dotted.key: type = default  # description` (for `--help`)."""
    lines = []
    for name, field in schema.model_fields.items():
        key = f"{prefix}{name}"
        sub = _config_class(field.annotation)
        if sub is not None and field.annotation is sub:
            lines.extend(describe_keys(sub, f"{key}."))
            continue
        type_name = getattr(field.annotation, "__name__", None) or str(field.annotation).replace(
            "typing.", ""
        )
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        doc = f"  # {field.description}" if field.description else ""
        lines.append(f"{key}: {type_name} = {default}{doc}")
    return lines


def dump_config(cfg: BaseModel) -> str:
    """The config as YAML, for manifests and run directories."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
