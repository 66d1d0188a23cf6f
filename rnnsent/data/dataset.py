"""prepare_imdb: source -> verified split -> vocabulary -> encoded tensors, cached on disk.

The vocabulary is built from the whole canonical training split (validation rows included, test
rows never): it then depends on the data and vocab_size alone, not on how validation was carved,
and validation rows contribute only word frequencies, never labels. For Keras' imdb.npz the
vocabulary is Keras' own word index, so the ids equal imdb.load_data(num_words=vocab_size).

The prepared result is cached as a .pt file keyed by a hash of every parameter that changes it and
of the source's identity. It holds only tensors, lists, dicts, str and int, so it loads with
torch.load(weights_only=True); rows are stored unpadded (flat ids + lengths) to keep it small. It is
wrapped in rnnsent.storage.envelope's checksummed envelope, like a checkpoint: a damaged cache is rebuilt.
Caches written before the envelope (a bare dict) still load, unverified, and are kept as they are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnsent.config import canonical_encoding, check_held_out, check_setting
from rnnsent.storage.envelope import first_line, seal, unseal
from rnnsent.storage.files import atomic_write
from rnnsent.data.fetch import (Source, block_size, cache_root, find_imdb, load_imdb_reviews, read_blocks,
                                read_keras_word_index)
from rnnsent.data.text import (
    TOKENIZER_NAME,
    EncodedSplit,
    PreparedData,
    Vocab,
    encode_bucketed,
    encode_keras,
    pad_flat,
    tokenize,
    tokenizer_for,
)
from rnnsent.data.given_vocab import map_words, vocab_key

# Caches are keyed by the encoding's name from before "fast" became "bucketed", so they keep hitting.
_CACHE_NAMES = {"keras": "keras", "bucketed": "fast"}
CACHE_VERSION = 1  # bump when the stored layout or the preparation itself changes
CACHE_FORMAT = "rnnsent-prepared-data"  # the envelope's marker; its version is CACHE_VERSION
log = logging.getLogger(__name__)


def train_val_split(
    n: int, val_fraction: float, seed: int, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx), each sorted, partitioning range(n); a function of (n, val_fraction, seed, labels).

    With labels, each label gives round(count * val_fraction) rows to validation, so both halves keep
    the label balance (the total can differ by one per label from round(n * val_fraction)).
    """
    check_held_out(val_fraction)
    g = torch.Generator().manual_seed(int(seed))
    groups = (
        [torch.arange(n)]
        if labels is None
        else [torch.nonzero(labels == y).flatten() for y in torch.unique(torch.as_tensor(labels))]
    )
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for n={n}")
    val = []
    for rows in groups:
        k = int(round(len(rows) * val_fraction))
        val.append(rows[torch.randperm(len(rows), generator=g)[:k]])
    val_idx = torch.sort(torch.cat(val)).values if val else torch.zeros(0, dtype=torch.long)
    in_val = torch.zeros(n, dtype=torch.bool)
    in_val[val_idx] = True
    return torch.nonzero(~in_val).flatten(), val_idx


class _Index(dict):
    """word -> provisional id in order of first appearance; new words get the next id."""

    def __missing__(self, word: str) -> int:
        i = self[word] = len(self)
        return i


def _index_texts(texts: list[str], index: _Index, tokenize=tokenize) -> list[np.ndarray]:
    # The hot loop of preparation: one regex pass per review, dictionary lookups in C via map.
    get = index.__getitem__
    out = []
    for text in texts:
        tokens = tokenize(text)
        out.append(np.fromiter(map(get, tokens), dtype=np.int64, count=len(tokens)))
    return out


def _limited(rows: list, limit: int | None, label: int) -> list:
    # limit N keeps N // 2 negatives and N - N // 2 positives, the first ones in canonical order.
    if limit is None:
        return rows
    return rows[: limit // 2 if label == 0 else limit - limit // 2]


def _build(source: Source, vocab_size: int, max_len: int, encoding: str, val_fraction: float, seed: int,
           limit: int | None, vocab: Vocab | None = None, extend_vocab: int = 0) -> tuple[dict[str, EncodedSplit],
                                                                                         Vocab, dict]:
    blocks = read_blocks(source)
    rows: dict[str, list] = {}
    labels: dict[str, list[int]] = {}
    for split in ("train", "test"):
        neg, pos = _limited(blocks[(split, 0)], limit, 0), _limited(blocks[(split, 1)], limit, 1)
        rows[split], labels[split] = neg + pos, [0] * len(neg) + [1] * len(pos)

    extra = {}
    if source.kind == "keras_npz" and vocab is not None:
        raise ValueError(f"{source.path}: Keras' imdb.npz holds word ranks, not text, so a checkpoint's vocabulary "
                         "cannot encode it; give --data another IMDB source (aclImdb, its .tar.gz or reviews.json)")
    if source.kind == "keras_npz":
        vocab = Vocab.from_keras_word_index(read_keras_word_index(source), vocab_size)
        # Keras: rank r -> id r + 3, and every id >= num_words becomes the out-of-vocabulary id.
        ids = {s: [np.where(r + 3 < vocab_size, r + 3, 2) for r in rows[s]] for s in rows}
    else:
        index = _Index()
        # train first: its first appearances rank ties
        read = tokenizer_for(vocab.tokenizer) if vocab is not None else tokenize  # a given vocabulary's own
        provisional = {s: _index_texts(rows[s], index, read) for s in ("train", "test")}
        words = list(index)
        if vocab is None:
            train_flat = np.concatenate(provisional["train"]) if provisional["train"] else np.zeros(0, np.int64)
            counts = np.bincount(train_flat, minlength=len(words))  # test words get count 0 and are left out
            vocab = Vocab.from_counts(words, counts, vocab_size)
            to_id = np.full(len(words), 2, dtype=np.int64)
            kept = np.array([index[w] for w in vocab.words], dtype=np.int64)
            to_id[kept] = np.arange(3, 3 + len(kept))
        else:  # the training split (validation carved out as below) counts the words a given vocabulary lacks
            train_idx, _ = train_val_split(len(rows["train"]), val_fraction, seed,
                                           torch.tensor(labels["train"], dtype=torch.float32))
            train_flat = np.concatenate([provisional["train"][i] for i in train_idx.tolist()] or [np.zeros(0, int)])
            vocab, to_id, note = map_words(vocab, words, train_flat, extend_vocab, str(source.path))
            extra["notes"] = [note]
        ids = {s: [to_id[p] for p in provisional[s]] for s in provisional}

    encode = encode_keras if encoding == "keras" else encode_bucketed
    train_all = encode(ids["train"], labels["train"], max_len)
    test = encode(ids["test"], labels["test"], max_len)
    train_idx, val_idx = train_val_split(len(train_all), val_fraction, seed, train_all.labels)
    splits = {"train": train_all.select(train_idx), "val": train_all.select(val_idx), "test": test}
    return splits, vocab, {"vocab_words": len(vocab.words), **extra}


def _counts(split: EncodedSplit) -> dict[str, int]:
    pos = int(split.labels.sum())
    return {"total": len(split), "pos": pos, "neg": len(split) - pos}


def _pack(split: EncodedSplit) -> dict[str, Any]:
    flat, lengths = split.unpadded()
    # Ids fit int16 for any vocabulary below 32768 words: a quarter of the int64 size on disk.
    small = torch.int16 if len(flat) == 0 or int(flat.max()) < 2**15 else torch.int32
    return {"flat": flat.to(small), "lengths": lengths, "labels": split.labels, "padding": split.padding,
            "width": split.tokens.shape[1]}


def _unpack(d: dict[str, Any]) -> EncodedSplit:
    return pad_flat(d["flat"], d["lengths"], d["labels"], int(d["width"]), str(d["padding"]))


def load_cached(path: Path) -> PreparedData | None:
    """The prepared data in the cache file `path`; None when there is none, or when it fails verification
    (said in one log line: the caller rebuilds it from the data, which is still there)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, weights_only=True)
        # else a cache from before the envelope
        if not (isinstance(stored, dict) and "meta" in stored and "format" not in stored):
            stored = unseal(stored, str(path), CACHE_FORMAT, CACHE_VERSION, "rnnsent prepared-data cache")
        meta = dict(stored["meta"], cache_file=str(path), cache_hit=True)
        return PreparedData(
            *(_unpack(stored[s]) for s in ("train", "val", "test")), Vocab.from_dict(stored["vocab"]), meta
        )
    except Exception as e:  # any unreadable cache is rebuilt
        log.warning(
            f"ignoring unreadable prepared-data cache {path} ({type(e).__name__}: {first_line(e)}); rebuilding it"
        )
        return None


def save_cached(path: Path, splits: dict[str, EncodedSplit], vocab: Vocab, meta: dict) -> bool:
    """Write prepared data to the cache in a checksummed envelope; readers never see a half-written file.
    False, said in one log line, when it cannot be written (a full disk, a read-only cache): the cache only
    saves time, so the run goes on with the data in memory."""
    try:
        with atomic_write(path, suffix=".partial") as f:
            torch.save(seal({**{s: _pack(splits[s]) for s in splits}, "vocab": vocab.to_dict(), "meta": meta},
                            CACHE_FORMAT, CACHE_VERSION), f)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        if isinstance(e, NotImplementedError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        log.warning(f"could not write the prepared-data cache {path} ({reason}: a full disk?); going on without it, "
                    "so the next run prepares the data again")
        return False
    return True


def prepare_imdb(
    vocab_size: int = 5000,
    max_len: int = 500,
    encoding: str = "keras",
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    use_cache: bool = True,
    vocab: Vocab | None = None,
    extend_vocab: int = 0,
) -> PreparedData:
    """Load, verify, tokenize, build the vocabulary, encode and split IMDB, or read all that from the cache.

    encoding "keras" gives Keras-parity pre-padded rows of width max_len; "bucketed" (once "fast") gives the same ids
    right-padded to the longest row, for length bucketing. `limit` keeps that many reviews per split
    (half of each label, the first in canonical order) for smoke runs. The source's own size is checked
    (rnnsent.data.fetch.block_size). `vocab` and `extend_vocab`: a trained model's vocabulary encodes the reviews
    instead of one built from them, as prepare_labelled's (rnnsent.data.given_vocab).
    """
    encoding = canonical_encoding(encoding)
    if check_setting("extend_vocab", extend_vocab) and vocab is None:
        raise ValueError("extend_vocab adds words to a given vocabulary (a checkpoint's: --init-from); pass vocab=")
    for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("limit", limit)):
        check_setting(name, value)  # fail before any reading
    check_held_out(val_fraction)

    source = find_imdb(root, cache_dir, download)
    params = {
        "version": CACHE_VERSION, "source": source.identity(), "vocab_size": vocab_size, "max_len": max_len,
        "encoding": _CACHE_NAMES[encoding], "val_fraction": val_fraction, "seed": seed, "limit": limit,
        "expected_per_block": block_size(source), "tokenizer": TOKENIZER_NAME,  # the key name caches have always had
    }
    if vocab is not None:  # only then: the caches of data prepared as before keep their keys
        params.update(vocab=vocab_key(vocab), extend_vocab=extend_vocab, tokenizer=vocab.tokenizer)
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_root(cache_dir) / "prepared" / f"imdb-{_CACHE_NAMES[encoding]}-{vocab_size}-{max_len}-{key}.pt"

    cached = load_cached(path) if use_cache else None
    if cached is not None:
        return cached

    t0 = time.perf_counter()
    splits, vocab, extra = _build(source, vocab_size, max_len, encoding, val_fraction, seed, limit, vocab, extend_vocab)
    meta = {"source": source.kind, "source_path": str(source.path),
            "params": {k: v for k, v in params.items() if k != "source"} | {"vocab_size": max(vocab_size, len(vocab))},
            "counts": {s: _counts(splits[s]) for s in splits}, "prepare_seconds": round(time.perf_counter() - t0, 3),
            **extra}
    cached = use_cache and save_cached(path, splits, vocab, meta)
    return PreparedData.fresh(splits, vocab, meta, cache_file=path if cached else None)


def imdb_split_texts(split: str, val_fraction: float = 0.1, seed: int = 0, limit: int | None = None,
                     root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                     download: bool = True) -> list[str]:
    """The texts of prepare_imdb's split `split` ("train", "val" or "test") with these settings, in its row order
    (Keras' imdb.npz: rebuilt from its word index, as load_imdb_reviews does)."""
    reviews = load_imdb_reviews("test" if split == "test" else "train", root, cache_dir, download)
    texts = [t for y in (0, 1) for t in _limited([t for t, label in reviews if label == y], limit, y)]
    if split == "test":
        return texts
    labels = torch.tensor([float(y) for y in (0, 1) for _ in _limited([r for r in reviews if r[1] == y], limit, y)])
    train_idx, val_idx = train_val_split(len(texts), val_fraction, seed, labels)
    return [texts[i] for i in (train_idx if split == "train" else val_idx).tolist()]
