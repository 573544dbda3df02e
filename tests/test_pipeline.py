"""The grain input pipeline: determinism, resume, mixture shares, host sharding, source checks."""

from __future__ import annotations

import collections
import json

import grain
import numpy as np
import pytest
from shards import write_corpus_source

from ipt.config import ConfigError, load_config
from ipt.data.integrity import ShardError
from ipt.data.pipeline import DataConfig, make_batch_iterator, make_eval_iterators
from ipt.data.sources import SourceConfig

WEIGHTS = {"manual": 0.5, "library": 0.3, "howto": 0.2}
KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, corpus_docs, mistral_tokenizer_dir) -> dict[str, tuple[SourceConfig, list]]:
    """Three shard directories cut from the built-in corpus (the second with loss masks)."""
    root = tmp_path_factory.mktemp("sources")
    texts = [d["text"] for d in corpus_docs]
    parts = {"manual": texts[:400], "library": texts[400:800], "howto": texts[800:]}
    out = {}
    for name, part in parts.items():
        docs = write_corpus_source(
            root / name, mistral_tokenizer_dir, part, with_masks=name == "library", docs_per_shard=150
        )
        out[name] = (SourceConfig(name=name, path=str(root / name), weight=WEIGHTS[name]), docs)
    return out


def config(sources, names=("manual", "library", "howto"), **kw) -> DataConfig:
    kw = {"seq_len": 128, "batch_size": 4, "seed": 3, "docs_per_read": 48, **kw}
    return DataConfig(sources=[sources[n][0] for n in names], **kw)


def take(cfg: DataConfig, n: int | None = None, **host) -> list[dict[str, np.ndarray]]:
    host = host or {"process_index": 0, "process_count": 1}
    it = make_batch_iterator(cfg, **host)
    try:
        return list(it) if n is None else [next(it) for _ in range(n)]
    finally:
        it.close()


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for k in KEYS:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_are_int32_arrays_of_local_batch_by_seq_len(sources):
    for packing in ("concat", "pack"):
        (batch,) = take(config(sources, packing=packing, batch_size=8), 1, process_index=1, process_count=2)
        assert sorted(batch) == sorted(KEYS)
        for k in KEYS:
            assert batch[k].shape == (4, 128) and batch[k].dtype == np.int32, k


@pytest.mark.parametrize("packing", ["concat", "pack"])
def test_same_seed_and_config_give_identical_batches(sources, packing):
    first = take(config(sources, packing=packing), 20)
    assert_same_batches(first, take(config(sources, packing=packing), 20))
    other = take(config(sources, packing=packing, seed=4), 20)
    assert not all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("packing", ["concat", "pack"])
def test_restored_state_continues_with_identical_batches(sources, packing):
    """Save the state after every step of an epoch; each restore (also via JSON) replays the rest."""
    cfg = config(sources, packing=packing)
    it = make_batch_iterator(cfg, process_index=0, process_count=1)
    states, batches = [], []
    for _ in range(40):
        states.append(it.get_state())
        batches.append(next(it))
    it.close()
    for step in (0, 1, 7, 23, 36):
        for state in (states[step], json.loads(json.dumps(states[step]).encode())):
            resumed = make_batch_iterator(cfg, process_index=0, process_count=1)
            resumed.set_state(state)
            assert_same_batches(batches[step:], [next(resumed) for _ in range(40 - step)])
            resumed.close()


def test_state_restores_through_the_orbax_grain_checkpoint_handler(sources, tmp_path):
    cfg = config(sources, packing="concat")
    it = make_batch_iterator(cfg, process_index=0, process_count=1)
    for _ in range(5):
        next(it)
    grain.checkpoint.CheckpointHandler().save(tmp_path, item=it)
    expected = [next(it) for _ in range(10)]
    resumed = make_batch_iterator(cfg, process_index=0, process_count=1)
    grain.checkpoint.CheckpointHandler().restore(tmp_path, item=resumed)
    assert_same_batches(expected, [next(resumed) for _ in range(10)])


def test_worker_processes_resume_exactly(sources):
    cfg = config(sources, packing="pack", worker_count=2)
    it = make_batch_iterator(cfg, process_index=0, process_count=1)
    for _ in range(6):
        next(it)
    state = json.dumps(it.get_state())
    expected = [next(it) for _ in range(8)]
    it.close()
    resumed = make_batch_iterator(cfg, process_index=0, process_count=1)
    resumed.set_state(json.loads(state))
    got = [next(resumed) for _ in range(8)]
    resumed.close()
    assert_same_batches(expected, got)


def split_docs(stream: np.ndarray, bos: int) -> list[tuple[int, ...]]:
    starts = np.flatnonzero(stream == bos)
    return [tuple(stream[a:b].tolist()) for a, b in zip(starts, [*starts[1:], len(stream)], strict=True)]


def concat_stream(batches: list[dict]) -> np.ndarray:
    """Concat rows are consecutive slices of seq_len + 1 tokens: inputs plus the last target."""
    rows = [
        np.append(b["inputs"][r], b["targets"][r, -1])
        for b in batches
        for r in range(len(b["inputs"]))
        if b["segment_ids"][r, 0]
    ]
    return np.concatenate(rows)


def test_mixture_token_shares_are_within_two_percent_of_weights(sources):
    batches = take(config(sources, packing="concat", seq_len=256, batch_size=8), 1000)
    owner = {tuple(d.tolist()): name for name, (_, docs) in sources.items() for d in docs}
    tokens = collections.Counter()
    for doc in split_docs(concat_stream(batches), bos=1)[1:-1]:  # the ends are partial documents
        tokens[owner[doc]] += len(doc)
    total = sum(tokens.values())
    assert total > 0.95 * 1000 * 8 * 257
    for name, weight in WEIGHTS.items():
        assert abs(tokens[name] / total - weight) < 0.02, (name, tokens[name] / total)


def test_concat_yields_every_token_of_every_document_once_per_epoch(sources):
    _, docs = sources["manual"]
    batches = take(config(sources, names=("manual",), packing="concat", num_epochs=1, batch_size=3))
    stream = concat_stream(batches)
    last = batches[-1]
    real = last["segment_ids"] > 0
    assert not real.all() and not last["loss_mask"][~real].any()  # only the epoch's tail is padding
    n_tokens = sum(len(d) for d in docs)
    assert np.all(stream[n_tokens:] == 0)
    seen = split_docs(stream[:n_tokens], bos=1)
    assert sorted(seen) == sorted(tuple(d.tolist()) for d in docs)
    assert seen != [tuple(d.tolist()) for d in docs]  # shuffled
    for b in batches[:-1]:  # GPT-3 style: one span per row, targets are the next tokens
        assert (b["segment_ids"] == 1).all() and (b["loss_mask"] == 1).all()
        np.testing.assert_array_equal(b["positions"], np.broadcast_to(np.arange(128), (3, 128)))
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


def test_each_epoch_reads_every_document_once_in_a_new_order(sources):
    _, docs = sources["manual"]
    batches = take(config(sources, names=("manual",), packing="concat", num_epochs=2, batch_size=3))
    stream = concat_stream(batches)
    n_tokens = sum(len(d) for d in docs)
    assert np.all(stream[2 * n_tokens :] == 0)
    seen = split_docs(stream[: 2 * n_tokens], bos=1)
    first, second = seen[: len(docs)], seen[len(docs) :]
    assert sorted(first) == sorted(second) == sorted(tuple(d.tolist()) for d in docs)
    assert first != second  # reshuffled for the second epoch
    endless = take(config(sources, names=("manual",), packing="concat", batch_size=3), n=len(batches))
    assert_same_batches(endless[:-1], batches[:-1])  # num_epochs=None repeats the same epochs forever


def pack_pieces(batch: dict) -> list[tuple[int, ...]]:
    """Every segment of every row as tokens, checking the row's packing invariants on the way."""
    pieces = []
    for r in range(len(batch["inputs"])):
        seg, pos = batch["segment_ids"][r], batch["positions"][r]
        inputs, targets, mask = batch["inputs"][r], batch["targets"][r], batch["loss_mask"][r]
        n_real = np.count_nonzero(seg)
        assert (seg[n_real:] == 0).all() and not mask[n_real:].any()  # padding only at the end
        if n_real == 0:  # a padding row filling the epoch's last batch
            continue
        assert seg[0] == 1 and set(np.diff(seg[:n_real]).tolist()) <= {0, 1}  # ids 1, 2, ... in order
        for s in np.unique(seg[:n_real]):
            idx = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
            # inside a segment the target is the next input; its last target is real only if the
            # segment continues past the row's inputs (into the row's final token)
            np.testing.assert_array_equal(targets[idx[:-1]], inputs[idx[1:]])
            assert mask[idx[:-1]].all()
            piece = inputs[idx].tolist()
            if mask[idx[-1]]:
                piece.append(int(targets[idx[-1]]))
            else:
                assert targets[idx[-1]] == 0  # a target never reaches into the next document
            pieces.append(tuple(piece))
    return pieces


def test_pack_places_whole_documents_with_correct_segments_and_positions(sources):
    _, docs = sources["manual"]
    seq_len = 128
    batches = take(config(sources, names=("manual",), packing="pack", num_epochs=1, seq_len=seq_len))
    seen = [p for b in batches for p in pack_pieces(b)]
    expected = []  # documents longer than a row come as pieces overlapping by one token
    for d in docs:
        starts = range(0, max(len(d) - 1, 1), seq_len) if len(d) > seq_len + 1 else [0]
        expected += [tuple(d[s : s + seq_len + 1].tolist()) for s in starts]
    assert any(len(d) > seq_len + 1 for d in docs)
    assert sorted(seen) == sorted(expected)


def test_loss_mask_follows_the_record_mask(sources):
    """`library` masks the first third of each document; the batch must mask the same targets."""
    _, docs = sources["library"]
    masks = {tuple(d.tolist()): (np.arange(len(d)) >= len(d) // 3) for d in docs}
    batches = take(config(sources, names=("library",), packing="pack", num_epochs=1, seq_len=1200))
    checked = 0
    for b in batches:
        for r in range(len(b["inputs"])):
            seg = b["segment_ids"][r]
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                doc = b["inputs"][r, idx].tolist()
                last_target = int(b["targets"][r, idx[-1]])
                if last_target:  # the document's last token is the row's final token
                    doc.append(last_target)
                want = np.append(masks[tuple(doc)][1:], False)[: len(idx)]
                np.testing.assert_array_equal(b["loss_mask"][r, idx], want)
                checked += 1
    assert checked == len(docs)


def test_concat_loss_mask_follows_the_record_mask(sources):
    _, docs = sources["library"]
    masks = {tuple(d.tolist()): (np.arange(len(d)) >= len(d) // 3) for d in docs}
    batches = take(config(sources, names=("library",), packing="concat", num_epochs=1))
    stream = concat_stream(batches)
    n_tokens = sum(len(d) for d in docs)
    mask_stream = np.concatenate([masks[d] for d in split_docs(stream[:n_tokens], bos=1)])
    rows = [(b, r) for b in batches for r in range(len(b["inputs"])) if b["segment_ids"][r, 0]]
    for i, (b, r) in enumerate(rows):  # row i holds stream[i * 129 : (i + 1) * 129]
        want = mask_stream[i * 129 + 1 : (i + 1) * 129]
        got = b["loss_mask"][r]
        np.testing.assert_array_equal(got[: len(want)], want)
        assert not got[len(want) :].any()


def test_hosts_read_disjoint_shares_of_the_data(sources):
    _, docs = sources["manual"]
    cfg = config(sources, names=("manual",), packing="concat", num_epochs=1, batch_size=4)
    per_host = []
    for host in range(2):
        batches = take(cfg, process_index=host, process_count=2)
        assert batches[0]["inputs"].shape == (2, 128)
        stream = concat_stream(batches)
        per_host.append(set(split_docs(stream[stream > 0], bos=1)))
    assert not per_host[0] & per_host[1]
    assert per_host[0] | per_host[1] == {tuple(d.tolist()) for d in docs}
    with pytest.raises(ValueError, match="not divisible by the 3 hosts"):
        take(cfg, process_index=0, process_count=3)


def test_eval_iterators_read_each_source_once_in_record_order(sources):
    _, docs = sources["howto"]
    cfg = config(sources, names=("manual",), eval_sources=[sources["howto"][0]], packing="concat")
    (name, it), *_ = make_eval_iterators(cfg, process_index=0, process_count=1).items()
    stream = concat_stream(list(it))
    assert name == "howto"
    assert split_docs(stream[stream > 0], bos=1) == [tuple(d.tolist()) for d in docs]


def test_sources_from_different_tokenizers_are_refused(sources, tmp_path, bpe_tokenizer_dir, corpus_docs):
    write_corpus_source(tmp_path / "bpe", bpe_tokenizer_dir, [d["text"] for d in corpus_docs[:20]])
    bpe = SourceConfig(name="bpe", path=str(tmp_path / "bpe"))
    cfg = DataConfig(sources=[sources["manual"][0], bpe], seq_len=64, batch_size=2)
    with pytest.raises(ValueError, match=r"source 'bpe' .* re-tokenize them with one tokenizer"):
        make_batch_iterator(cfg, process_index=0, process_count=1)


def test_concat_separates_documents_written_without_eos(tmp_path, mistral_tokenizer_dir, corpus_docs):
    texts = [d["text"] for d in corpus_docs[:30]]
    docs = write_corpus_source(tmp_path / "no-eos", mistral_tokenizer_dir, texts, add_eos=False)
    src = SourceConfig(name="no-eos", path=str(tmp_path / "no-eos"))
    cfg = DataConfig(sources=[src], seq_len=64, batch_size=2, num_epochs=1, docs_per_read=8)
    stream = concat_stream(take(cfg))
    seen = split_docs(stream[stream > 0], bos=1)
    assert sorted(seen) == sorted((*d.tolist(), 2) for d in docs)  # 2 = Mistral's eos


def test_shards_that_disagree_with_their_manifest_are_refused(tmp_path, mistral_tokenizer_dir, corpus_docs):
    texts = [d["text"] for d in corpus_docs[:30]]
    write_corpus_source(tmp_path / "a", mistral_tokenizer_dir, texts[:10], docs_per_shard=5)
    write_corpus_source(tmp_path / "b", mistral_tokenizer_dir, texts[10:], docs_per_shard=20)
    (tmp_path / "b" / "shard-00000.array_record").replace(tmp_path / "a" / "shard-00000.array_record")
    cfg = DataConfig(sources=[SourceConfig(name="a", path=str(tmp_path / "a"))], seq_len=64, batch_size=2)
    shard = tmp_path / "a" / "shard-00000.array_record"
    with pytest.raises(ShardError, match=rf"source 'a': {shard} holds 20 records, but manifest.json says 5"):
        make_batch_iterator(cfg, process_index=0, process_count=1)


def test_config_errors_name_the_key(sources, tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text("sources: [{name: a, path: /x}]\npacking: stack\n")
    with pytest.raises(ConfigError, match="packing"):
        load_config(DataConfig, path)
    with pytest.raises(ConfigError, match="repeated"):
        load_config(DataConfig, None, ["sources=[{name: a, path: /x}, {name: a, path: /y}]"])
