"""Cooking: pools, pair parsing, multiple-choice labels, layouts and their shares, pair coverage."""

from __future__ import annotations

import random
import re
import shutil
from collections import Counter

import pytest

from ipt.collection import Entry
from ipt.cook.pairs import OptionStyle, Pair, item_labels, parse_pair, render_options, strip_markers
from ipt.cook.pools import POOL_DIR, POOL_FILES, default_pools, load_pools
from ipt.cook.render import cook_collection

MARKERS = ("<CON>", "</CON>", "<QUE>", "<ANS>", "</END>", "<s>", "</s>")


def _all_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if hasattr(value, "source"):
        return [value.source]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _all_strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _all_strings(v)]
    if hasattr(value, "model_fields"):
        return [s for k in type(value).model_fields for s in _all_strings(getattr(value, k))]
    return []


def test_pools_meet_the_diversity_floor_and_hold_no_marker():
    p = default_pools()
    assert len(p.qa_patterns) >= 60
    assert len(p.lead_ins) >= 30
    assert len(p.option_headers) >= 15
    assert len(p.item_styles) >= 10
    assert len(p.cot_patterns) >= 30
    assert len(p.speakers) >= 10
    assert len(p.inversion_instructions) >= 10
    assert p.mode_weights == {"classic": 80, "dialog": 5, "numbered": 5, "inline": 5, "next_turn": 5}
    assert p.few_pair_mode_weights == {"classic": 95, "dialog": 5}
    assert p.inversion_weights == {"inverted": 5, "plain": 95}
    strings = _all_strings(p)
    assert len(strings) > 300
    assert not [s for s in strings if any(m in s for m in MARKERS)]


def test_a_broken_pool_is_reported_with_its_file_and_key(tmp_path):
    for name in POOL_FILES:
        shutil.copy(POOL_DIR / f"{name}.yaml", tmp_path / f"{name}.yaml")
    path = tmp_path / "cot.yaml"
    path.write_text(path.read_text().replace("Therefore, the answer is {answer}.", "Therefore.", 1))
    with pytest.raises(ValueError, match=r"cot\.yaml: `cot_patterns\.0\.answer`.*missing \['answer'\]"):
        load_pools(tmp_path)


@pytest.mark.parametrize(
    ("q", "a", "expected"),
    [
        ("Who wrote it?", " Ada ", Pair("Who wrote it?", "Ada")),
        (
            "Is it hot?\nLet's think step by step.",
            "The sun is out.\nTherefore, the answer is yes.",
            Pair("Is it hot?", "yes", rationale="The sun is out"),
        ),
        ("Is it hot?\nLet's think step by step.", "Yes, because the sun is out.", "cot_unsplit"),
        ("Is it hot?\nLet's think step by step.", "\nTherefore, the answer is yes", "cot_unsplit"),
        (
            "Pick one.\nOptions:\n- red\n- Green\n- blue",
            "green.",
            Pair("Pick one.", "Green", ("red", "Green", "blue"), 1),
        ),
        ("Pick one.\nOptions:\n- red\n- green", "purple", "mc_no_match"),
        (
            "Pick one.\nOptions:\n- red\n- green\nLet's think step by step.",
            "Leaves are green.\nTherefore, the answer is green",
            Pair("Pick one.", "green", ("red", "green"), 1, "Leaves are green"),
        ),
        ("   ", "x", "empty"),
    ],
)
def test_parse_pair_splits_cot_matches_options_and_drops_the_rest(q, a, expected):
    assert parse_pair(q, a) == expected


def test_strip_markers_removes_wire_format_only():
    assert strip_markers("<s> <CON> a b </CON>") == ("a b", 3)
    assert strip_markers("x <QUE> y <ANS> z </END></s>") == ("x y z", 4)
    assert strip_markers("a <b>bold</b> x<y") == ("a <b>bold</b> x<y", 0)


def _options_map(question: str, style: OptionStyle, n: int) -> dict[str, str]:
    """Read the rendered options back: label -> option text, walking the labels in order."""
    block = question.split(style.header + style.delimiter.after_header, 1)[1]
    labels = item_labels(style.item.labels, n)
    prefixes = [style.item.format.fill({"label": lab}) + " " for lab in labels]
    assert block.startswith(prefixes[0])
    out, pos = {}, len(prefixes[0])
    for k, label in enumerate(labels):
        end = block.index(style.delimiter.between + prefixes[k + 1], pos) if k + 1 < n else len(block)
        out[label] = block[pos:end]
        pos = end + (len(style.delimiter.between) + len(prefixes[k + 1]) if k + 1 < n else 0)
    return out


def test_multiple_choice_answer_label_points_at_the_original_answer():
    p = default_pools()
    rng = random.Random(0)
    options = ("the red one", "the green one", "a blue one", "none of them", "all of them")
    positions = Counter()
    for item in p.item_styles:
        for delim in p.option_delimiters:
            for form in p.answer_forms:
                style = OptionStyle("Choices:", item, delim, form)
                for k in range(len(options)):
                    pair = Pair("Which one?", options[k], options, k)
                    question, answer = render_options(pair, style, rng)
                    by_label = _options_map(question, style, len(options))
                    assert sorted(by_label.values()) == sorted(options)
                    if form.source == "{label}":
                        assert by_label[answer] == options[k]
                    else:
                        label = next(lab for lab, text in by_label.items() if text == options[k])
                        assert answer == style.item.format.fill({"label": label}) + " " + options[k]
                    positions[list(by_label.values()).index(options[k])] += 1
    assert set(positions) == set(range(len(options)))  # the shuffle really moves the answer


def _collection(rng: random.Random, n_entries: int, pairs: tuple[int, int]) -> list[Entry]:
    entries = []
    for i in range(n_entries):
        qa = tuple(
            (f"question {rng.random()}?", f"answer {rng.random()}") for _ in range(rng.randint(*pairs))
        )
        entries.append(Entry(f"Context {rng.random()}.", qa, i > 0))
    return entries


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ((2, 5), {"classic": 0.80, "dialog": 0.05, "numbered": 0.05, "inline": 0.05, "next_turn": 0.05}),
        ((1, 1), {"classic": 0.95, "dialog": 0.05}),
    ],
)
def test_layout_shares_follow_the_reference_weights(pairs, expected):
    rng = random.Random(1)
    pools = default_pools()
    modes, inverted = Counter(), 0
    n = 10_000
    for _ in range(n):
        cooked = cook_collection(_collection(rng, 1, pairs), 0, pools)
        [layout] = cooked.layouts
        mode, _, inv = layout.partition("+")
        modes[mode] += 1
        inverted += inv == "inversion"
    assert set(modes) == set(expected)
    for mode, share in expected.items():
        assert abs(modes[mode] / n - share) < 0.02, (mode, modes[mode] / n)
    assert abs(inverted / n - 0.05) < 0.02


def _unique(tag: str, rng: random.Random) -> str:
    return f"{tag}{rng.randrange(10**9):09d}x"


def _tricky_collection(rng: random.Random) -> tuple[list[Entry], list[tuple[str, set[int]]], list[str], int]:
    """Entries with every pair style, markers sprinkled in, and unique tokens to count.

    Returns the entries, (token, allowed counts) for kept pairs, tokens of dropped pairs, and the
    number of kept pairs. An MC answer may be named by its whole item, so its text can show twice.
    """
    entries, kept, dropped, n_kept = [], [], [], 0
    once, once_or_twice = {1}, {1, 2}
    for i in range(rng.randint(1, 4)):
        qa = []
        for _ in range(rng.choice([0, 1, 2, 3, 5])):
            q, a, r = _unique("q", rng), _unique("a", rng), _unique("r", rng)
            kind = rng.choice(["free", "mc", "cot", "mc_cot", "bad_cot", "bad_mc"])
            opts = [a, _unique("o", rng), _unique("o", rng)]
            mc_question = f"Which is {q}?\nOptions:\n- " + "\n- ".join(opts)
            if kind == "free":
                qa.append((f"<QUE> What is {q}?", f"It is {a} <ANS>"))
                kept += [(q, once), (a, once)]
            elif kind == "mc":
                qa.append((mc_question, a))
                kept += [(q, once), (a, once_or_twice), (opts[1], once), (opts[2], once)]
            elif kind == "mc_cot":
                qa.append(
                    (
                        mc_question + "\nLet's think step by step.",
                        f"Because {r}.\nTherefore, the answer is {a}",
                    )
                )
                kept += [(q, once), (r, once), (a, once_or_twice), (opts[1], once), (opts[2], once)]
            elif kind == "cot":
                qa.append(
                    (f"Why {q}?\nLet's think step by step.", f"Since {r}.\nTherefore, the answer is {a}.")
                )
                kept += [(q, once), (r, once), (a, once)]
            elif kind == "bad_cot":
                qa.append((f"Why {q}?\nLet's think step by step.", f"Just because {a}."))
                dropped += [q, a]
            else:
                qa.append((f"Which {q}?\nOptions:\n- {opts[1]}\n- {opts[2]}", a))
                dropped += [q, a]
            n_kept += kind in ("free", "mc", "mc_cot", "cot")
        context = f"<s> <CON> Text {_unique('c', rng)} says things. </CON></s>"
        entries.append(Entry(context, tuple(qa), i > 0 and rng.random() < 0.7))
    return entries, kept, dropped, n_kept


def test_every_kept_pair_appears_exactly_once_and_no_marker_survives():
    rng = random.Random(7)
    pools = default_pools()
    layouts = Counter()
    for seed in range(1500):
        entries, kept, dropped, n_kept = _tricky_collection(rng)
        cooked = cook_collection(entries, seed, pools)
        layouts.update(cooked.layouts)
        text = "\n".join(cooked.texts)
        assert not [m for m in MARKERS if m in text]
        for token, allowed in kept:
            assert text.count(token) in allowed, (token, text)
        for token in dropped:
            assert token not in text
        assert len(re.findall(r"c\d{9}x", text)) == len(entries)  # every context exactly once
        assert cooked.stats["pairs_out"] == n_kept
    modes = {layout.split("+")[0] for layout in layouts}
    assert modes == {"raw", "classic", "dialog", "numbered", "inline", "next_turn"}


def test_one_layout_draw_per_collection_shared_by_its_segments():
    rng = random.Random(3)
    pools = default_pools()
    seen = Counter()
    for seed in range(400):
        segments = [_collection(rng, 2, (2, 3)) for _ in range(3)]
        entries = [e for seg in segments for e in seg]  # each segment starts with inherit_from_prev=False
        cooked = cook_collection(entries, seed, pools)
        assert len(cooked.texts) == 3
        assert len(set(cooked.layouts)) == 1
        seen[cooked.layouts[0]] += 1
        short = [*entries, Entry("Short.", (("One question?", "One answer."),), False)]
        layouts = cook_collection(short, seed, pools).layouts
        if layouts[0].startswith("classic"):  # the classic share is read first in both tables
            assert layouts[-1] == layouts[0]
        assert layouts[-1].split("+")[0] in ("classic", "dialog")
    assert len(seen) > 3
