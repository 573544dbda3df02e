"""Every stage against the same bad inputs, each case a real `python -m ipt.cli` process.

Each case must end with status 2 and an error that starts `ipt STAGE: error:`, names the file
(and the line or key where the kind has one), prints no traceback and is the last thing on
stderr (a config error may list its problems on a few lines after its head), and it must
leave nothing a later stage would accept: no `ipt_complete.json` (nor, for tokenize, a
`manifest.json`), no checkpoint step, no converted model directory.

What each kind is for each stage (its own input, or the nearest equivalent):

stage        missing        directory         malformed   non_utf8         missing_field      empty           unknown_key
synthesize   input file     input: plain dir  line 2      counted (stats)  line 2: no text    0-byte input    --config key
cook         input file     input: plain dir  line 2      counted (counts) line 2: no QA_list 0-byte input    --config key
tokenize     input file     input: plain dir  line 2      counted (stats)  line 2: no text    0-byte input    --config key
train        source dir     manifest: a dir   manifest    manifest         manifest: shards   0-byte shard    --config key
convert      export source  config.json: dir  config.json config.json      config.json key    0-byte weights  --config key
data inspect shard dir      manifest: a dir   manifest    manifest         manifest: shards   0-byte shard    manifest key
data plan    source dir     --config: a dir   manifest    --config YAML    manifest key       0-byte manifest --config key

Non-UTF-8 bytes in text are by design replaced and counted, not an error, in synthesize, cook
and tokenize (ipt/data/readers.py): those cells assert exit 0 and a count of 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("missing", "directory", "malformed", "non_utf8", "missing_field", "empty", "unknown_key")
ERROR_HEAD = re.compile(r"^ipt [a-z ]+: error: ")
MAX_ERROR_LINES = 4  # a head, and at most a few lines of detail (a config error's list of problems)

# A small Mistral in Hugging Face's config.json form (`ipt convert direction=import` input).
HF_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@dataclass(frozen=True)
class Case:
    """One command and what its outcome must show."""

    argv: list[str]  # after `python -m ipt.cli`
    names: tuple[str, ...] = ()  # what the error must name: the file, and the line or key
    output: Path | None = None  # where the stage writes (must hold nothing a later stage accepts)
    counted: tuple[str, str] | None = None  # (file under output, key): exit 0 and a count of 1


@dataclass(frozen=True)
class Inputs:
    """Good inputs of every stage, shared by the module; each case damages a copy."""

    text_line: str  # a {"text": ...} record
    collection_line: str  # a read collection
    shards: Path  # a shard directory (the Mistral v1 tokenizer, fits the tiny model)
    tokenizer: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mistral_tokenizer_dir, corpus_docs) -> Inputs:
    from shards import write_corpus_source

    from ipt.collection import Entry, collection_line

    root = tmp_path_factory.mktemp("matrix-inputs")
    texts = [d["text"] for d in corpus_docs[:6]]
    write_corpus_source(root / "shards", mistral_tokenizer_dir, texts, docs_per_shard=3)
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    for shard in manifest["shards"]:  # sizes, as `ipt tokenize` records them
        shard["bytes"] = (root / "shards" / shard["file"]).stat().st_size
    (root / "shards" / "manifest.json").write_text(json.dumps(manifest))
    entry = Entry(texts[0][:300], (("What is described?", "A part of Python."),))
    return Inputs(
        text_line=json.dumps({"text": texts[0]}) + "\n",
        collection_line=collection_line([entry]),
        shards=root / "shards",
        tokenizer=mistral_tokenizer_dir,
    )


def write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def latin1_inside(line: str) -> bytes:
    """`line` with a Latin-1 byte (not UTF-8) at the start of its first string value."""
    raw = line.encode()
    at = raw.index(b'": "') + 4
    return raw[:at] + b"caf\xe9 " + raw[at:]


def bad_text_input(
    kind: str, tmp: Path, good: str, no_field: str, field: str
) -> tuple[Path, tuple[str, ...]]:
    """The input file of a text-reading stage for `kind`, and what the error must name."""
    path = tmp / "in.jsonl"
    if kind == "missing":
        return tmp / "absent.jsonl", (str(tmp / "absent.jsonl"),)
    if kind == "directory":
        (tmp / "docs").mkdir()
        (tmp / "docs" / "in.jsonl").write_text(good)
        return tmp / "docs", (str(tmp / "docs"),)
    body = {
        "malformed": (good + '{"text": oops\n').encode(),
        "non_utf8": good.encode() + latin1_inside(good),
        "missing_field": (good + no_field).encode(),
        "empty": b"",
        "unknown_key": good.encode(),
    }[kind]
    path.write_bytes(body)
    names = {"malformed": (f"{path}:2",), "missing_field": (f"{path}:2", field), "empty": (str(path),)}
    return path, names.get(kind, ())


def text_stage(stage: str, fixed: list[str], typo: str, no_field: str, field: str, counted: tuple[str, str]):
    """The builder of synthesize, cook or tokenize: an input file for each kind of bad input."""

    def build(kind: str, w: Inputs, tmp: Path) -> Case:
        good = w.collection_line if stage == "cook" else w.text_line
        inp, names = bad_text_input(kind, tmp, good, no_field, field)
        out = tmp / "out"
        argv = [stage, f"input={inp}", f"output_dir={out}", *(a.format(tok=w.tokenizer) for a in fixed)]
        if kind == "unknown_key":
            cfg = write_config(tmp / "stage.yaml", {typo: 1})
            argv += ["--config", str(cfg)]
            names = (str(cfg), f"`{typo}`")
        return Case(argv, names, out, counted if kind == "non_utf8" else None)

    return build


def damaged_shards(kind: str, w: Inputs, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    """A shard directory for `kind` (train, data inspect), and what the error must name."""
    src = tmp / "shards"
    if kind == "missing":
        return src, (str(src),)
    shutil.copytree(w.shards, src)
    manifest = src / "manifest.json"
    raw = manifest.read_bytes()
    if kind == "directory":
        manifest.unlink()
        manifest.mkdir()
    elif kind == "malformed":
        manifest.write_bytes(raw[: len(raw) // 2])
    elif kind == "non_utf8":
        manifest.write_bytes(raw.replace(b'"num_docs"', b'"num_\xffdocs"', 1))
    elif kind == "missing_field":
        tree = json.loads(raw)
        del tree["shards"]
        manifest.write_text(json.dumps(tree))
        return src, (str(manifest), "shards")
    elif kind == "empty":
        shard = sorted(src.glob("shard-*"))[-1]
        shard.write_bytes(b"")
        return src, (str(shard),)
    elif kind == "unknown_key":
        manifest.write_text(json.dumps({**json.loads(raw), "bogus_key": 1}))
        return src, (str(manifest), "bogus_key")
    return src, (str(manifest),)


def train_case(kind: str, w: Inputs, tmp: Path) -> Case:
    src, names = damaged_shards(kind if kind != "unknown_key" else "good", w, tmp)
    tree = {
        "run_dir": str(tmp / "run"),
        "model": {"base": str(ROOT / "configs/model/tiny.yaml")},
        "data": {"sources": [{"name": "corpus", "path": str(src)}], "seq_len": 32, "batch_size": 8},
        "steps": 2,
        "checkpoint": {"every": 1},
        "metrics": {"progress_bar": False, "tensorboard": False},
    }
    if kind == "unknown_key":
        tree["checkpoint"] = {"evry": 1}
    cfg = write_config(tmp / "train.yaml", tree)
    if kind == "unknown_key":
        names = (str(cfg), "`checkpoint.evry`")
    return Case(["train", "--config", str(cfg)], names, tmp / "run")


def convert_case(kind: str, w: Inputs, tmp: Path) -> Case:
    hf, out = tmp / "hf", tmp / "out"
    config = hf / "config.json"
    if kind == "missing":  # an ipt model directory that is not there
        return Case(
            ["convert", "direction=export", f"source={tmp / 'absent'}", f"output={out}"],
            (str(tmp / "absent"),),
            out,
        )
    hf.mkdir()
    text = json.dumps(HF_CONFIG)
    names: tuple[str, ...] = (str(config),)
    if kind == "directory":
        config.mkdir()
    elif kind == "malformed":
        config.write_text(text[: len(text) // 2])
    elif kind == "non_utf8":
        config.write_bytes(text.replace("silu", "s\xffilu").encode("latin-1"))
    elif kind == "missing_field":
        config.write_text(json.dumps({k: v for k, v in HF_CONFIG.items() if k != "hidden_size"}))
        names = (str(config), "hidden_size")
    else:
        config.write_text(text)
        (hf / "model.safetensors").write_bytes(b"")
        names = (str(hf / "model.safetensors"),)
    argv = ["convert", "direction=import", f"source={hf}", f"output={out}"]
    if kind == "unknown_key":
        cfg = write_config(tmp / "convert.yaml", {"param_dtyp": "float32"})
        argv += ["--config", str(cfg)]
        names = (str(cfg), "`param_dtyp`")
    return Case(argv, names, out)


def inspect_case(kind: str, w: Inputs, tmp: Path) -> Case:
    src, names = damaged_shards(kind, w, tmp)
    return Case(["data", "inspect", str(src)], names)


def plan_case(kind: str, w: Inputs, tmp: Path) -> Case:
    src = tmp / "shards"
    if kind == "missing":
        names: tuple[str, ...] = (str(src),)
    else:
        shutil.copytree(w.shards, src)
        names = (str(src / "manifest.json"),)
    manifest = src / "manifest.json"
    tree = {"sources": [{"name": "corpus", "path": str(src)}], "budget_tokens": "1M"}
    cfg = tmp / "plan.yaml"
    if kind == "directory":
        cfg.mkdir()
        names = (str(cfg),)
    elif kind == "malformed":
        manifest.write_text(manifest.read_text()[:100])
    elif kind == "non_utf8":
        cfg.write_bytes(yaml.safe_dump(tree).replace("corpus", "corp\xffus").encode("latin-1"))
        names = (str(cfg),)
    elif kind == "missing_field":
        manifest.write_text(
            json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "num_tokens"})
        )
        names = (str(manifest), "num_tokens")
    elif kind == "empty":
        manifest.write_bytes(b"")
    elif kind == "unknown_key":
        tree["max_epoch"] = 2
        names = (str(cfg), "`max_epoch`")
    if not cfg.exists():
        write_config(cfg, tree)
    return Case(["data", "plan", str(cfg)], names)


BUILDERS: dict[str, Callable[[str, Inputs, Path], Case]] = {
    "synthesize": text_stage(
        "synthesize",
        ["engine=rules", "chunk_texts=4", "progress=false"],
        "chunk_text",
        json.dumps({"body": "no text here"}) + "\n",
        "'text'",
        ("stats.shard-00000-of-00001.json", "non_utf8_lines"),
    ),
    "cook": text_stage(
        "cook",
        [],
        "seeds",
        json.dumps([{"context": "A text without pairs."}]) + "\n",
        "QA_list",
        ("ipt_complete.json", "non_utf8_lines"),
    ),
    "tokenize": text_stage(
        "tokenize",
        ["tokenizer={tok}", "num_workers=1", "progress=false"],
        "shard_char",
        json.dumps({"body": "no text here"}) + "\n",
        "'text'",
        ("manifest.json", "non_utf8_lines"),
    ),
    "train": train_case,
    "convert": convert_case,
    "data inspect": inspect_case,
    "data plan": plan_case,
}


def _cells():
    for stage in BUILDERS:
        for kind in KINDS:
            yield pytest.param(stage, kind, id=f"{stage.replace(' ', '-')}-{kind}")


def accepted_output(stage: str, out: Path | None) -> list[str]:
    """What in `out` a later stage would take as finished output."""
    if out is None or not out.exists():
        return []
    if stage == "train":
        steps = out / "checkpoints"
        return [str(p) for p in steps.iterdir() if p.name.isdigit()] if steps.is_dir() else []
    if stage == "convert":
        return [str(out)]  # any model directory at all: import and export write it last, whole
    from ipt.stage.completion import completion_problem

    found = [] if completion_problem(out) else [f"{out}: a complete `ipt {stage}` run"]
    return found + [str(out / "manifest.json")] * (out / "manifest.json").exists()


def count_in(path: Path, key: str) -> int:
    record = json.loads(path.read_text())
    return record.get(key, record.get("counts", {}).get(key, record.get("stats", {}).get(key)))


@pytest.mark.parametrize(("stage", "kind"), list(_cells()))
def test_bad_input_is_one_located_error_and_leaves_nothing_usable(stage, kind, inputs, tmp_path):
    case = BUILDERS[stage](kind, inputs, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "ipt.cli", *case.argv],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    err = proc.stderr
    assert "Traceback" not in err, err
    if case.counted is not None:  # replaced and counted by design, not an error
        assert proc.returncode == 0, err
        file, key = case.counted
        assert count_in(case.output / file, key) == 1
        return
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    heads = [i for i, line in enumerate(lines) if ERROR_HEAD.match(line)]
    assert heads, f"no `ipt ...: error:` line:\n{err}"
    block = lines[heads[-1] :]
    assert block[0].startswith(f"ipt {stage}: error: "), err
    assert len(block) <= MAX_ERROR_LINES and len(lines) <= 2 * MAX_ERROR_LINES, err
    message = "\n".join(block)
    for name in case.names:
        assert name in message, f"the error does not name {name!r}:\n{err}"
    assert not accepted_output(stage, case.output), err
    if stage == "convert":
        assert not list(tmp_path.glob(".out*")), "a half-written model directory was left behind"
