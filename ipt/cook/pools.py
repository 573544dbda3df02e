"""Template pools: the YAML files in `ipt/cook/pools/`, validated and compiled once.

The pools are data, not code, so that phrasing can be reviewed and extended without touching
the renderer. Every template is checked at load time for the `{slots}` it must (and may)
contain, and split into literal pieces once, so filling it is a join that never re-parses the
user's text (which may itself contain braces).
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

POOL_DIR = Path(__file__).parent / "pools"
POOL_FILES = ("qa", "lead_ins", "options", "cot", "dialog", "inversion", "layouts")
MODES = ("classic", "dialog", "numbered", "inline", "next_turn")
_SLOT = re.compile(r"\{(\w+)\}")


class Template:
    """A string with `{slot}` placeholders, pre-split so `fill` is a single join."""

    __slots__ = ("pieces", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.pieces = tuple(_SLOT.split(source))

    @property
    def slots(self) -> set[str]:
        return set(self.pieces[1::2])

    def fill(self, values: dict[str, str]) -> str:
        pieces = self.pieces
        out = [pieces[0]]
        for i in range(1, len(pieces), 2):
            out.append(values[pieces[i]])
            out.append(pieces[i + 1])
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _template(text: str, required: set[str], allowed: set[str] | None = None) -> Template:
    tpl = Template(text)
    allowed = required if allowed is None else allowed
    missing, extra = required - tpl.slots, tpl.slots - allowed
    if missing or extra:
        raise ValueError(
            f"template {text!r}: needs slots {sorted(required)}"
            + (f", may use {sorted(allowed)}" if allowed != required else "")
            + f"; missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    return tpl


class _Pool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class QAPattern(_Pool):
    question: Template
    answer: Template
    join: str

    @field_validator("question", mode="before")
    @classmethod
    def _q(cls, v: str) -> Template:
        return _template(v, {"question"})

    @field_validator("answer", mode="before")
    @classmethod
    def _a(cls, v: str) -> Template:
        return _template(v, {"answer"})


class CotPattern(_Pool):
    question: Template
    answer: Template

    @field_validator("question", mode="before")
    @classmethod
    def _q(cls, v: str) -> Template:
        return _template(v, {"question"})

    @field_validator("answer", mode="before")
    @classmethod
    def _a(cls, v: str) -> Template:
        return _template(v, {"rationale", "answer"})


class ItemStyle(_Pool):
    labels: Literal["letters", "lower", "numbers", "roman", "lower_roman"]
    format: Template

    @field_validator("format", mode="before")
    @classmethod
    def _f(cls, v: str) -> Template:
        return _template(v, {"label"})


class OptionDelimiter(_Pool):
    after_stem: str
    after_header: str
    between: str


class Speakers(_Pool):
    asker: str = Field(min_length=1)
    answerer: str = Field(min_length=1)


class NumberedFrame(_Pool):
    questions: str = Field(min_length=1)
    answers: str = Field(min_length=1)


class NumberedStyle(_Pool):
    labels: Literal["letters", "lower", "numbers", "roman", "lower_roman"]
    question: Template
    answer: Template

    @field_validator("question", "answer", mode="before")
    @classmethod
    def _t(cls, v: str) -> Template:
        return _template(v, {"label"})


class InlineFrame(_Pool):
    intro: str
    example: Template
    task: Template

    @field_validator("example", "task", mode="before")
    @classmethod
    def _t(cls, v: str) -> Template:
        return _template(v, {"question", "answer"})


def _nonempty_unique(values: list) -> list:
    if not values:
        raise ValueError("must not be empty")
    seen = [v.source if isinstance(v, Template) else repr(v) for v in values]
    dupes = sorted({s for s in seen if seen.count(s) > 1})
    if dupes:
        raise ValueError(f"repeated entries: {dupes}")
    return values


class Pools(_Pool):
    """Every pool, from all files (keys are unique across files)."""

    qa_patterns: list[QAPattern]
    pair_separators: list[str]
    lead_ins: list[str]
    lead_in_probability: float = Field(ge=0, le=1)
    option_headers: list[str]
    item_styles: list[ItemStyle]
    option_delimiters: list[OptionDelimiter]
    answer_forms: list[Template]
    cot_patterns: list[CotPattern]
    speakers: list[Speakers]
    dialog_openers: list[str]
    next_turn_prompts: list[str]
    turn_separators: list[str]
    inversion_instructions: list[str]
    mode_weights: dict[Literal[MODES], float]
    few_pair_mode_weights: dict[Literal["classic", "dialog"], float]
    inversion_weights: dict[Literal["inverted", "plain"], float]
    example_separators: list[str]
    numbered_frames: list[NumberedFrame]
    numbered_styles: list[NumberedStyle]
    inline_frames: list[InlineFrame]
    digest: str = ""

    @field_validator("answer_forms", mode="before")
    @classmethod
    def _answer_forms(cls, v: list[str]) -> list[Template]:
        return [_template(s, set(), {"label", "item"}) for s in v]

    @field_validator(
        "qa_patterns",
        "lead_ins",
        "option_headers",
        "item_styles",
        "cot_patterns",
        "speakers",
        "next_turn_prompts",
        "inversion_instructions",
        "numbered_frames",
        "numbered_styles",
        "inline_frames",
    )
    @classmethod
    def _unique(cls, v: list) -> list:
        return _nonempty_unique(v)

    @field_validator("mode_weights", "few_pair_mode_weights", "inversion_weights")
    @classmethod
    def _weights(cls, v: dict) -> dict:
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {v}")
        return v


def load_pools(directory: str | Path = POOL_DIR) -> Pools:
    """Read and validate the pool files of `directory`; errors name the file and the key."""
    directory = Path(directory)
    merged: dict = {}
    origin: dict[str, str] = {}
    digest = hashlib.sha256()
    for name in POOL_FILES:
        path = directory / f"{name}.yaml"
        raw = path.read_bytes()
        digest.update(name.encode() + b"\0" + raw + b"\0")
        try:
            tree = yaml.safe_load(raw) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        for key, value in tree.items():
            if key in merged:
                raise ValueError(f"{path}: key {key!r} is already defined in {origin[key]}")
            merged[key], origin[key] = value, str(path)
    merged["digest"] = digest.hexdigest()
    try:
        return Pools.model_validate(merged)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = str(err["loc"][0])
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"{origin.get(key, directory)}: `{where}`: {err['msg']}")
        raise ValueError("invalid template pools:\n  " + "\n  ".join(lines)) from None


@functools.cache
def default_pools() -> Pools:
    """The pools shipped with ipt (loaded once per process)."""
    return load_pools(POOL_DIR)
