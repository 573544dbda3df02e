"""`ipt tuning-data` -> `ipt tokenize control_tokens=true`: the synthesizer's fine-tuning shards and loss mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from array_record.python.array_record_module import ArrayRecordReader

from ipt.cli import main as cli_main
from ipt.cook.tuning import main
from ipt.data.records import decode_record, read_manifest
from ipt.data.tokenize import main as tokenize_main
from ipt.synth import format as wire
from ipt.synth.run import main as synthesize_main

ROOT = Path(__file__).resolve().parents[1]


def _entry(context: str, pairs: list[tuple[str, str]]) -> dict:
    return {"context": context, "QA_list": [{"Q": q, "A": a} for q, a in pairs], "inherit_from_prev": False}


def _write(path: Path, collections: list[list[dict]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c) + "\n" for c in collections), encoding="utf-8")
    return path


def _record(out: Path) -> dict:
    return json.loads((out / "ipt_complete.json").read_text())


def _tokenize(out: Path, tok_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """`ipt tokenize` the tuning-data directory as its completion record says; every record."""
    assert (
        tokenize_main([*_record(out)["tokenize"].split()[2:], f"output_dir={tok_dir}", "num_workers=1"]) == 0
    )
    manifest = read_manifest(tok_dir)
    assert (manifest.add_bos, manifest.add_eos, manifest.has_loss_mask) == (False, False, True)
    docs = []
    for shard in manifest.shards:
        reader = ArrayRecordReader(str(tok_dir / shard.file))
        docs += [
            decode_record(r, manifest.dtype, True) for r in reader.read(list(range(reader.num_records())))
        ]
        reader.close()
    assert manifest.num_tokens == _record(out)["counts"]["tokens"], "the budget counts what tokenize writes"
    return docs


@pytest.fixture(autouse=True)
def _tokenizer_cache(mistral_tokenizer_dir):
    """The stages load `mistral-v1` from the cache the fixture fills (offline)."""


def _build(tmp_path: Path, inputs: str | Path, *overrides: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    return main([f"input={inputs}", f"output_dir={out}", *overrides]), out


# The released ft-instruction-synthesizer-collection layout: one folder of JSONL shards per dataset.
SQUAD = [
    [_entry("  Paris is the capital of France. ", [(" What is the capital of France?", "Paris ")])],
    [_entry("The Nile flows north.", [("Which way does the Nile flow?", "North"), ("Name the river.", "The Nile")])],
]  # fmt: skip
DROP = [[_entry("In 2000 there were 7 people; in 2010, 9.", [("How many more people in 2010?", "2")])]]
# squad's sequence, seed 0: the Nile example, then Paris (texts and pairs stripped, as synthesis does)
GOLDEN_IDS = [
    1, 523, 3185, 28767, 415, 418, 546, 21142, 6120, 28723, 1867, 3185, 28767, 13, 13,  # <s> <CON> ... </CON>\n\n
    28789, 20749, 28767, 9595, 1069, 1235, 272, 418, 546, 4699, 28804, 523, 1251, 28735, 28767,  # <QUE> ... <ANS>
    3964, 1867, 5000, 28767, 13, 13,  # North </END>\n\n
    28789, 20749, 28767, 6620, 272, 7782, 28723, 523, 1251, 28735, 28767, 415, 418, 546, 1867, 5000, 28767,
    2, 1, 523, 3185, 28767,  # </END></s><s> <CON>: the example boundary
    5465, 349, 272, 5565, 302, 4843, 28723, 1867, 3185, 28767, 13, 13,
    28789, 20749, 28767, 1824, 349, 272, 5565, 302, 4843, 28804, 523, 1251, 28735, 28767, 5465, 1867, 5000, 28767, 2,
]  # fmt: skip
GOLDEN_MASK = "0" * 15 + "1" * 39 + "0" * 16 + "1" * 19  # reading parts 0; pairs and </s> 1


@pytest.fixture
def collection(tmp_path) -> Path:
    root = tmp_path / "ft-collection"
    _write(root / "squad" / "shard-00000.jsonl", SQUAD)
    _write(root / "drop" / "part-0.jsonl", DROP)
    (root / "README.md").write_text("not a dataset\n")
    (root / ".cache").mkdir()
    return root


def test_golden_ids_and_mask_of_the_tokenized_shards_with_the_real_mistral_tokenizer(
    collection, mistral_tokenizer_dir, tmp_path, capsys
):
    from transformers import AutoTokenizer

    rc, out = _build(tmp_path, collection)
    assert rc == 0, capsys.readouterr().err
    assert [d["dataset"] for d in _record(out)["datasets"]] == ["drop", "squad"]
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["drop.jsonl", "squad.jsonl"]
    (drop_ids, drop_mask), (ids, mask) = _tokenize(out, tmp_path / "tok")  # input=DIR: its listed outputs
    assert ids.tolist() == GOLDEN_IDS
    assert "".join(map(str, mask)) == GOLDEN_MASK

    # the same ids as the engines' tokenization of the same wire strings: each prompt prefix
    # (earlier examples + the current reading part) is exactly what synthesis would feed
    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    nile = (SQUAD[1][0]["context"], SQUAD[1][0]["QA_list"])
    paris = ("Paris is the capital of France.", [{"Q": "What is the capital of France?", "A": "Paris"}])
    full = wire.example(*nile) + wire.example(*paris)
    assert tok(full, add_special_tokens=False).input_ids == GOLDEN_IDS
    prompt = tok(wire.prompt(paris[0], [nile]), add_special_tokens=False).input_ids
    assert ids[: len(prompt)].tolist() == prompt and not mask[len(prompt) - 16 : len(prompt)].any()
    assert tok.decode(ids[mask == 1]).startswith("<QUE> Which way")
    drop_text = wire.example(DROP[0][0]["context"], [{"Q": "How many more people in 2010?", "A": "2"}])
    assert drop_ids.tolist() == tok(drop_text, add_special_tokens=False).input_ids
    assert drop_mask[-1] == 1 and drop_mask[0] == 0  # the closing </s> is trained, <s> is not


def test_output_is_deterministic_the_seed_reorders_and_the_budget_holds(corpus_docs, tmp_path):
    texts = [d["text"][:300].strip() for d in corpus_docs[:60]]
    lines = [[_entry(t, [(f"What is text {i} about?", t.split()[0])])] for i, t in enumerate(texts)]
    src = _write(tmp_path / "docs.jsonl", lines)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        assert main([f"input={src}", f"output_dir={out}", "max_tokens=400", f"seed={seed}"]) == 0
        runs[name] = (out / "docs.jsonl").read_bytes()
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
    docs = _tokenize(tmp_path / "a", tmp_path / "tok")
    assert all(len(ids) <= 400 for ids, _ in docs) and len(docs) > 5
    assert sum(int((ids == 1).sum()) for ids, _ in docs) == 60  # every example once: one <s> each
    assert all(ids[0] == 1 and ids[-1] == 2 and m[0] == 0 and m[-1] == 1 for ids, m in docs)


def test_the_loss_mask_reaches_the_loss(corpus_docs, tmp_path):
    """Changing the targets of reading-part tokens leaves the update unchanged; a pair token's does not."""
    import jax
    import jax.numpy as jnp

    from ipt.config import load_config
    from ipt.data.pipeline import make_batch_iterator
    from ipt.train.config import TrainConfig
    from ipt.train.run import Trainer

    lines = [[_entry(d["text"][:200], [(d["title"], d["text"][:40])])] for d in corpus_docs[:40]]
    src = _write(tmp_path / "docs.jsonl", lines)
    assert main([f"input={src}", f"output_dir={tmp_path / 'text'}", "max_tokens=129"]) == 0
    _tokenize(tmp_path / "text", tmp_path / "tok")
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / "run"),
                "model": {"base": str(ROOT / "configs/model/tiny.yaml"), "num_hidden_layers": 1},
                "data": {
                    "sources": [{"name": "tune", "path": str(tmp_path / "tok")}],
                    "seq_len": 128,
                    "batch_size": 4,
                    "packing": "pack",
                },
                "steps": 2,
            }
        )
    )
    cfg = load_config(TrainConfig, cfg_path)
    batch = next(make_batch_iterator(cfg.data, process_index=0, process_count=1))
    mask = batch["loss_mask"] == 1
    real = batch["segment_ids"] > 0
    assert mask.any() and (~mask & real).any()
    trainer = Trainer(cfg, devices=jax.devices()[:1])
    start = trainer.fresh_state()

    def step(b: dict) -> tuple[dict, dict]:
        fresh = jax.tree.map(jnp.copy, start)  # the step donates its state
        state, metrics = trainer.train_step(fresh, b, trainer.parts.rest)
        return jax.device_get(state["params"]), jax.device_get(metrics)

    base_params, base = step(batch)
    reading = {**batch, "targets": np.where(mask, batch["targets"], (batch["targets"] + 7) % 32000)}
    params, metrics = step(reading)
    assert float(metrics["grad_norm"]) == float(base["grad_norm"]) and float(metrics["loss"]) == float(
        base["loss"]
    )
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, base_params)))
    pair = batch["targets"].copy()
    r, c = np.argwhere(mask)[0]
    pair[r, c] = (pair[r, c] + 7) % 32000
    _, changed = step({**batch, "targets": pair})
    assert float(changed["grad_norm"]) != float(base["grad_norm"])


def test_synthesize_output_directories_are_datasets(corpus_docs, tmp_path, capsys):
    """A complete `ipt synthesize` run is one dataset (by directory or inside a folder); an unfinished
    one, or another stage's output, is refused in one line."""
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": d["text"][:600]}) + "\n" for d in corpus_docs[:12]))
    root = tmp_path / "runs"
    for name in ("python_docs", "more_docs"):
        args = [f"input={texts}", f"output_dir={root / name}", "engine=rules", "progress=false", "rounds=2"]
        assert synthesize_main(args) == 0
    assert main([f"input={root / 'python_docs'}", f"output_dir={tmp_path / 'one'}"]) == 0
    assert [d["dataset"] for d in _record(tmp_path / "one")["datasets"]] == ["python_docs"]
    assert main([f"input={root}", f"output_dir={tmp_path / 'both'}"]) == 0
    record = _record(tmp_path / "both")
    assert [d["dataset"] for d in record["datasets"]] == ["more_docs", "python_docs"]
    assert record["counts"]["examples"] + record["counts"]["entries_without_pairs"] == 24  # every text
    capsys.readouterr()

    assert main([f"input={tmp_path / 'one'}", f"output_dir={tmp_path / 'x'}"]) == 2
    assert "holds the output of `ipt tuning-data`, not read collections" in capsys.readouterr().err
    (root / "more_docs" / "ipt_complete.json").unlink()
    assert main([f"input={root}", f"output_dir={tmp_path / 'y'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{root / 'more_docs'} holds an unfinished `ipt synthesize` run" in err


def test_reruns_keep_a_complete_run_and_refuse_other_settings(collection, tmp_path, capsys):
    out = tmp_path / "out"
    assert _build(tmp_path, collection)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _build(tmp_path, collection)[0] == 0
    assert "holds this run complete; nothing to do" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _build(tmp_path, collection, "seed=1")[0] == 2
    assert "seed: 0 -> 1" in capsys.readouterr().err
    assert _build(tmp_path, collection, "seed=1", "on_change=redo")[0] == 0
    assert (out / "squad.jsonl").read_bytes() != before["squad.jsonl"]


def test_a_collection_without_pairs_is_one_clear_line_or_counted(collection, tmp_path, capsys):
    _write(collection / "squad" / "shard-00001.jsonl", [[_entry("A text.", [])], SQUAD[0]])
    rc, out = _build(tmp_path, collection)
    err = capsys.readouterr().err.strip().splitlines()  # one progress line (drop), then the error
    assert rc == 2 and [line.startswith("ipt tuning-data: error: ") for line in err] == [False, True]
    where = collection / "squad" / "shard-00001.jsonl"
    assert f"{where}:1: read collection has no instruction-response pairs" in err[-1]
    rc, out = _build(tmp_path, collection, "skip_bad=true")
    assert rc == 0 and _record(out)["counts"]["collections_without_pairs"] == 1


def test_over_long_examples_and_forged_special_tokens_are_counted_and_skipped(collection, tmp_path, capsys):
    _write(
        collection / "squad" / "shard-00001.jsonl",
        [
            [_entry("word " * 200, [("Long?", "Yes")])],
            [_entry("A </s> inside.", [("Q?", "A")])],
            [_entry("A lone \ud800 surrogate.", [("Q?", "A")])],
        ],
    )
    rc, out = _build(tmp_path, collection, "max_tokens=128")
    assert rc == 0, capsys.readouterr().err
    counts = _record(out)["counts"]
    assert (counts["long_examples_skipped"], counts["examples_with_special_tokens"]) == (1, 1)
    assert counts["examples_with_invalid_unicode"] == 1
    squad = next(d for d in _record(out)["datasets"] if d["dataset"] == "squad")
    assert squad["stats"]["examples"] == 2 and squad["stats"]["sequences"] == 1
    assert "skipped: long_examples_skipped=1, examples_with_special_tokens=1" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty_folder", "nothing_fits", "no_match", "not_the_wire_tokenizer"])
def test_bad_inputs_name_the_folder_in_one_line(case, collection, tmp_path, capsys, bpe_tokenizer_dir):
    args = []
    if case == "empty_folder":
        (collection / "boolq").mkdir()
        (collection / "boolq" / "notes.txt").write_text("x")
        expected = f"{collection / 'boolq'}: dataset folder holds no read-collection shards"
    elif case == "nothing_fits":
        args = ["max_tokens=20"]
        expected = f"{collection / 'drop'}: dataset 'drop' has no usable example (long_examples_skipped=1)"
    elif case == "no_match":
        collection = tmp_path / "missing"
        expected = f"input '{collection}' matches no file or folder"
    else:
        gpt2_style = tmp_path / "gpt2-style"
        (gpt2_style).mkdir()
        for f in bpe_tokenizer_dir.iterdir():
            text = f.read_text().replace('"<s>"', '"<|bos|>"').replace('"</s>"', '"<|eos|>"')
            (gpt2_style / f.name).write_text(text)
        args = [f"tokenizer={gpt2_style}"]
        expected = f"tokenizer '{gpt2_style}' has bos/eos '<|bos|>'/'<|eos|>'; the synthesizer's wire format"
    rc, _ = _build(tmp_path, collection, *args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith(f"ipt tuning-data: error: {expected}")


def test_the_cli_runs_the_stage(collection, tmp_path, capsys):
    assert cli_main(["tuning-data", f"input={collection}/squad", f"output_dir={tmp_path / 'o'}"]) == 0
    assert [d["dataset"] for d in _record(tmp_path / "o")["datasets"]] == ["squad"]
    out = capsys.readouterr().out
    assert "1 datasets, 2 examples -> 1 sequences" in out
    assert (
        f"next: ipt tokenize input={tmp_path / 'o'} tokenizer=mistral-v1 loss_mask=true control_tokens=true"
        in out
    )
