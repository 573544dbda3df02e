"""Pack mode's block packer: pieces, placement, row layout, and exact restore through grain."""

from __future__ import annotations

import json
import math

import grain
import numpy as np
import pytest

from ipt.data.block_packing import (
    POSITIONS,
    SEGMENT_IDS,
    PackBlocks,
    best_fit_decreasing,
    pack_block,
    split_into_pieces,
)
from ipt.data.packing import MASK, TOKENS

ROW_LEN = 16


def make_blocks(n_blocks: int, docs_per_block: int, seed: int = 0) -> list[list[dict[str, np.ndarray]]]:
    """Documents of 1..40 tokens with globally unique ids, so every token says where it came from."""
    rng = np.random.default_rng(seed)
    blocks, next_id = [], 1
    for _ in range(n_blocks):
        block = []
        for n in rng.integers(1, 41, docs_per_block).tolist():
            block.append(
                {
                    TOKENS: np.arange(next_id, next_id + n, dtype=np.uint32),
                    MASK: (rng.random(n) < 0.7).astype(np.uint8),
                }
            )
            next_id += n
        blocks.append(block)
    return blocks


def expected_pieces(doc: np.ndarray, row_len: int) -> list[tuple[int, ...]]:
    if len(doc) <= row_len:
        return [tuple(doc.tolist())]
    return [tuple(doc[s : s + row_len].tolist()) for s in range(0, len(doc) - 1, row_len - 1)]


def row_pieces(rows: dict[str, np.ndarray]) -> list[tuple[int, ...]]:
    """The pieces of every row, checking the layout: segments 1..k in order, positions, padding last."""
    pieces = []
    for r in range(len(rows[TOKENS])):
        seg, pos, tok = rows[SEGMENT_IDS][r], rows[POSITIONS][r], rows[TOKENS][r]
        n_real = np.count_nonzero(seg)
        assert n_real > 0
        assert (seg[n_real:] == 0).all() and (tok[n_real:] == 0).all() and (pos[n_real:] == 0).all()
        assert seg[0] == 1 and set(np.diff(seg[:n_real]).tolist()) <= {0, 1}
        firsts = []
        for s in range(1, seg[n_real - 1] + 1):
            idx = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
            pieces.append(tuple(tok[idx].tolist()))
            firsts.append(int(tok[idx[0]]))
        assert firsts == sorted(firsts)  # segments keep the block's document order
    return pieces


def test_long_documents_become_pieces_overlapping_by_one_token():
    lengths = np.array([0, 1, 15, 16, 17, 31, 32, 46])
    doc, start, length = split_into_pieces(lengths, ROW_LEN)
    got = [(int(d), int(s), int(n)) for d, s, n in zip(doc, start, length, strict=True)]
    want = [
        (d, s, min(ROW_LEN, int(n) - s))
        for d, n in enumerate(lengths)
        if n
        for s in (range(0, int(n) - 1, ROW_LEN - 1) if n > ROW_LEN else [0])
    ]
    assert got == want
    assert (length >= 1).all() and (length <= ROW_LEN).all()
    assert got[-3:] == [(7, 0, 16), (7, 15, 16), (7, 30, 16)]  # 46 = 16 + 15 + 15 new tokens


def test_best_fit_decreasing_fills_rows_without_overflow():
    lengths = np.random.default_rng(1).integers(1, ROW_LEN + 1, 500)
    rows, n_rows = best_fit_decreasing(lengths, ROW_LEN)
    fill = np.bincount(rows, weights=lengths, minlength=n_rows)
    assert rows.min() == 0 and rows.max() == n_rows - 1 and len(fill) == n_rows
    assert (fill <= ROW_LEN).all()
    assert n_rows <= math.ceil(lengths.sum() / ROW_LEN) * 1.05
    # best fit: 9 goes to the row with 9 free (after 7), not the one with 10 free (after 6)
    rows, n_rows = best_fit_decreasing(np.array([6, 7, 9]), ROW_LEN)
    assert n_rows == 2 and rows.tolist() == [1, 0, 0]


@pytest.mark.parametrize("shuffle", [False, True])
def test_pack_block_places_every_piece_once_with_its_mask(shuffle):
    (block,) = make_blocks(1, 200)
    rng = np.random.default_rng(5) if shuffle else None
    rows = pack_block(block, ROW_LEN, rng)
    assert set(rows) == {TOKENS, MASK, SEGMENT_IDS, POSITIONS}
    assert all(v.shape == (len(rows[TOKENS]), ROW_LEN) for v in rows.values())
    want = sorted(p for d in block for p in expected_pieces(d[TOKENS], ROW_LEN))
    assert sorted(row_pieces(rows)) == want
    mask_of = {int(t): int(m) for d in block for t, m in zip(d[TOKENS], d[MASK], strict=True)}
    real = rows[SEGMENT_IDS] > 0
    np.testing.assert_array_equal(rows[MASK][real], [mask_of[int(t)] for t in rows[TOKENS][real]])
    assert not rows[MASK][~real].any()
    n_tokens = sum(len(p) for p in want)
    assert len(rows[TOKENS]) == math.ceil(n_tokens / ROW_LEN)  # small pieces: no row wasted


def test_pack_block_row_shuffle_is_seeded():
    (block,) = make_blocks(1, 100)
    a, b = (pack_block(block, ROW_LEN, np.random.default_rng(s)) for s in (1, 1))
    np.testing.assert_array_equal(a[TOKENS], b[TOKENS])
    c = pack_block(block, ROW_LEN, np.random.default_rng(2))
    assert not np.array_equal(a[TOKENS], c[TOKENS])
    assert sorted(map(tuple, a[TOKENS].tolist())) == sorted(map(tuple, c[TOKENS].tolist()))


def packed_rows(blocks, **kw) -> grain.DatasetIterator:
    kw = {"seed": 7, "shuffle_rows": True, **kw}
    return PackBlocks(grain.MapDataset.source(blocks).to_iter_dataset(), ROW_LEN, **kw).__iter__()


def test_pack_blocks_yields_every_piece_of_every_block_once():
    blocks = make_blocks(4, 60)
    rows = list(packed_rows(blocks))
    stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    want = sorted(p for block in blocks for d in block for p in expected_pieces(d[TOKENS], ROW_LEN))
    assert sorted(row_pieces(stacked)) == want
    assert len(rows) == sum(len(pack_block(b, ROW_LEN)[TOKENS]) for b in blocks)


def test_empty_documents_take_no_space_and_an_empty_block_no_row():
    empty = {TOKENS: np.zeros(0, np.uint32), MASK: np.zeros(0, np.uint8)}
    (block,) = make_blocks(1, 20)
    with_empty = pack_block([empty, *block[:10], empty, *block[10:]], ROW_LEN)
    for k, v in pack_block(block, ROW_LEN).items():
        np.testing.assert_array_equal(with_empty[k], v, err_msg=k)
    assert all(v.shape == (0, ROW_LEN) for v in pack_block([empty, empty], ROW_LEN).values())
    rows = list(packed_rows([[empty], block, [empty]]))
    assert len(rows) == len(pack_block(block, ROW_LEN)[TOKENS])


def test_pack_blocks_shuffles_each_block_differently():
    block = make_blocks(1, 60)[0]
    rows = [r[TOKENS] for r in packed_rows([block, block])]
    first, second = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    unshuffled = [r[TOKENS] for r in packed_rows([block, block], shuffle_rows=False)]
    assert all(
        np.array_equal(a, b)
        for a, b in zip(unshuffled[: len(rows) // 2], unshuffled[len(rows) // 2 :], strict=True)
    )


def test_pack_blocks_restores_at_every_row_also_after_json():
    blocks = make_blocks(3, 50)
    it = packed_rows(blocks)
    states, rows = [it.get_state()], []
    for row in it:
        rows.append(row)
        states.append(it.get_state())
    assert len(rows) > 3 * 5 and len({json.dumps(s) for s in states}) == len(states)
    for step in range(len(rows) + 1):
        for state in (states[step], json.loads(json.dumps(states[step]))):
            resumed = packed_rows(blocks)
            resumed.set_state(state)
            rest = list(resumed)
            assert len(rest) == len(rows) - step
            for got, want in zip(rest, rows[step:], strict=True):
                for k in want:
                    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_state_after_a_finished_block_points_past_it():
    blocks = make_blocks(2, 30)
    it = packed_rows(blocks)
    n_first = len(pack_block(blocks[0], ROW_LEN)[TOKENS])
    for _ in range(n_first):
        next(it)
    state = it.get_state()
    parent = grain.MapDataset.source(blocks).to_iter_dataset().__iter__()
    next(parent)
    assert state == {"parent": parent.get_state(), "next_row": 0, "blocks": 1}  # block 0 is not re-read
    resumed = packed_rows(blocks)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)[TOKENS], next(it)[TOKENS])


def test_a_state_from_another_packer_is_refused():
    it = packed_rows(make_blocks(1, 10))
    with pytest.raises(ValueError, match=r"keys \['counter', 'next_row', 'parent'\], expected"):
        it.set_state({"parent": {"next_index": 0}, "next_row": 3, "counter": 3})
