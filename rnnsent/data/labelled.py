"""The user's labelled texts -> the same prepared splits as IMDB's (an PreparedData), cached on disk.

prepare_labelled(path) reads a file or class folder (rnnsent.data.tabular); prepare_texts(texts, labels)
takes Python lists. Both go through one function, so a file and the same rows as lists give the same data.

  - classes: class_order() of the training labels (integers numerically, strings sorted); a row's label
    tensor holds its class index (0.0, 1.0, ...), so two classes are exactly IMDB's 0/1 targets.
  - test: the test file, the split column's "test" rows or the folder's test/; otherwise a stratified
    test_fraction of the rows, by a fixed seed, said in meta["notes"].
  - validation: the split column's "val" rows, else a stratified val_fraction of the training rows.
  - vocabulary: from training rows only (validation rows give word counts, never labels, as for IMDB);
    ties in frequency keep the order of first appearance in the training rows. Or a trained model's, given
    (vocab=, for --init-from): it and its tokenizer encode the rows, extended by extend_vocab words of the
    training split (rnnsent.data.given_vocab).
  - limit: at most that many rows of each split, a stratified sample by a fixed seed (each class keeps its
    share of the rows, at least one row each where the limit allows), in file order.
  - missing labels (empty, blank, NaN-like: rnnsent.data.tabular): the rows are counted and skipped with one
    note, or refused with on_missing_label="error"; never a class.
  - texts: tokenize_scripts (rnnsent-v2): IMDB's tokenizer plus one token per character of scripts written
    without spaces. The vocabulary records it, so prediction tokenizes the same way.
  - the record (meta["split"], kept in a run's checkpoint): the files' SHA-256 and each split's rows and
    fingerprint, so that remake_split finds a run's split again from its file, without tokenizing the rest,
    and rnnsent.inference.heldout proves it is the same.

Tokenizing is the cost; rows are tokenized in chunks, on every core for large files (fork), and each
chunk's provisional word ids are merged into one index in file order, so the result does not depend on
the number of processes. The cache is written only after every check has passed.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from rnnsent.config import canonical_encoding, check_held_out, check_setting
from rnnsent.data.dataset import _Index, load_cached, save_cached, train_val_split
from rnnsent.data.fetch import cache_root, file_digest
from rnnsent.data.given_vocab import map_words, vocab_key
from rnnsent.data.tabular import MISSING_LABELS, Columns, DataFileError, Row, class_order, label_kind, read_rows
from rnnsent.data.text import (START_ID, SCRIPT_TOKENIZER_NAME, EncodedSplit, PreparedData, Vocab, encode_bucketed,
                               encode_keras, pad_flat, tokenizer_for)

CACHE_VERSION = 1
CHUNK_ROWS = 2000  # rows per tokenizing task: large enough to amortise the hand-over, small enough to stream
PARALLEL_MIN_ROWS = 4 * CHUNK_ROWS  # below this, worker start-up costs more than it saves
TEST_SEED_OFFSET = 7919  # the carved test split uses its own stream, so it never mirrors the validation carve
LIMIT_SEED_OFFSET = 104729  # and so does the --limit sample
log = logging.getLogger(__name__)


def _tokenize_chunk(texts: list[str], tokenizer: str = SCRIPT_TOKENIZER_NAME) -> tuple[list[str], np.ndarray,
                                                                                         np.ndarray]:
    """(words in first-appearance order, every row's provisional ids back to back, row lengths), the texts read by
    the tokenizer named `tokenizer` (a given vocabulary's: rnnsent.data.given_vocab)."""
    index = _Index()  # word -> id in order of first appearance
    tokenize = tokenizer_for(tokenizer)
    rows = [tokenize(text) for text in texts]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(
        map(index.__getitem__, itertools.chain.from_iterable(rows)), dtype=np.int32, count=int(lengths.sum())
    )
    return list(index), flat, lengths


def _first_appearance(flat: np.ndarray, size: int, block: int = 1 << 20) -> np.ndarray:
    """The distinct ids of `flat` in the order they first appear. Block by block, only ids not seen in an
    earlier block are sorted, so the cost is about one pass instead of a sort of everything."""
    seen = np.zeros(size, dtype=bool)
    order = []
    for start in range(0, len(flat), block):
        part = flat[start:start + block]
        new = part[~seen[part]]
        if len(new):
            ids, first = np.unique(new, return_index=True)
            ids = ids[np.argsort(first, kind="stable")]
            seen[ids] = True
            order.append(ids)
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)


@dataclass
class _Rows:
    """Rows tokenized so far: provisional ids in one global index, and each row's label, group and origin."""

    index: dict = field(default_factory=dict)
    flats: list = field(default_factory=list)
    lengths: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    splits: list = field(default_factory=list)  # "train" | "test" | "val" | None per row
    wheres: list = field(default_factory=list)
    skipped: int = 0
    first_skipped: str | None = None
    on_missing_label: str = "skip"  # see ON_MISSING_LABEL
    missing: int = 0  # rows skipped for a missing label
    first_missing: str | None = None
    kind: tuple | None = None  # (label kind, where it was first seen)

    def merge(self, words: list[str], flat: np.ndarray, lengths: np.ndarray) -> None:
        setdefault, index = self.index.setdefault, self.index
        to_global = np.fromiter((setdefault(w, len(index)) for w in words), dtype=np.int32, count=len(words))
        self.flats.append(to_global[flat] if len(flat) else flat)
        self.lengths.append(lengths)


def _chunks(rows: Iterable[Row], acc: _Rows, split: str | None) -> Iterable[list[str]]:
    """Check each row (label kind, split value, empty text) and yield its texts CHUNK_ROWS at a time."""
    texts: list[str] = []
    for row in rows:
        if not row.text.strip():
            acc.skipped += 1
            acc.first_skipped = acc.first_skipped or row.where
            continue
        if row.label is None:
            if acc.on_missing_label == "error":
                raise DataFileError(
                    f"{row.where}: the label is missing (empty, blank or NaN-like); give the row its label "
                    "or remove it (--on-missing-label skip skips such rows)"
                )
            acc.missing += 1
            acc.first_missing = acc.first_missing or row.where
            continue
        kind = label_kind(row.label)
        if acc.kind is None:
            acc.kind = (kind, row.where)
        elif kind != acc.kind[0]:
            raise DataFileError(
                f"{row.where}: the label {row.label!r} is {'an' if kind == 'integer' else 'a'} {kind}, but the "
                f"label at {acc.kind[1]} is {'an' if acc.kind[0] == 'integer' else 'a'} {acc.kind[0]}; make every "
                "label a name or every label a whole number"
            )
        s = split if split is not None else row.split
        if s is not None and s not in ("train", "test", "val"):
            raise DataFileError(
                f"{row.where}: split {row.split!r} is not train, test or val; fix the split column's value"
            )
        acc.labels.append(row.label)
        acc.splits.append(s)
        acc.wheres.append(row.where)
        texts.append(row.text)
        if len(texts) == CHUNK_ROWS:
            yield texts
            texts = []
    if texts:
        yield texts


def _ignore_sigint() -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops the pool and says so in one line;
    # the workers must not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _tokenize_all(sources: list[tuple[Iterable[Row], str | None]], processes: int | None,
                  on_missing_label: str = "skip", tokenizer: str = SCRIPT_TOKENIZER_NAME) -> _Rows:
    check_setting("on_missing_label", on_missing_label)
    acc = _Rows(on_missing_label=on_missing_label)
    stream = (chunk for rows, split in sources for chunk in _chunks(rows, acc, split))
    procs = processes if processes is not None else (os.cpu_count() or 1)
    pool = None
    if procs > 1 and "fork" in multiprocessing.get_all_start_methods():
        first = [c for _, c in zip(range(PARALLEL_MIN_ROWS // CHUNK_ROWS), stream)]  # small data stays in this process
        if len(first) == PARALLEL_MIN_ROWS // CHUNK_ROWS:
            pool = multiprocessing.get_context("fork").Pool(procs, initializer=_ignore_sigint)
        stream = (c for part in (first, stream) for c in part)
    if pool is None:
        for chunk in stream:
            acc.merge(*_tokenize_chunk(chunk, tokenizer))
        return acc
    # At most two chunks per worker in flight: the file is read as fast as it is tokenized, never ahead of
    # it into memory. Results are merged in submission order, so first appearances are the file's.
    pending: deque = deque()
    try:
        for chunk in stream:
            pending.append(pool.apply_async(_tokenize_chunk, (chunk, tokenizer)))
            if len(pending) >= 2 * procs:
                acc.merge(*pending.popleft().get())
        while pending:
            acc.merge(*pending.popleft().get())
    finally:
        pool.terminate()
    return acc


def _settings_check(vocab_size, max_len, encoding, val_fraction, test_fraction, limit, vocab=None,
                    extend_vocab=0) -> str:
    encoding = canonical_encoding(encoding)
    if check_setting("extend_vocab", extend_vocab) and vocab is None:
        raise ValueError("extend_vocab adds words to a given vocabulary (a checkpoint's: --init-from); pass vocab=")
    if vocab is not None and len(vocab) > vocab_size:
        raise ValueError(f"the given vocabulary has {len(vocab)} ids but vocab_size is {vocab_size}")
    for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("test_fraction", test_fraction),
                        ("limit", limit)):
        check_setting(name, value)
    check_held_out(val_fraction)
    return encoding


def _build(acc: _Rows, vocab_size: int, max_len: int, encoding: str, val_fraction: float, test_fraction: float,
           seed: int, limit: int | None, where: str, test_where: str | None, vocab: Vocab | None = None,
           extend_vocab: int = 0) -> tuple[dict, Vocab, list, list[str]]:
    """The tokenized rows -> the encoded splits, their vocabulary (built from the training rows, or `vocab` given,
    extended by extend_vocab words: rnnsent.data.given_vocab), the classes, and the notes to log."""
    notes = _skip_notes(acc)
    if not acc.labels:
        raise DataFileError(f"{where}: no row has any text; every text is empty or whitespace")
    classes, y, rows, carve_notes = _carve(acc, val_fraction, test_fraction, seed, limit, where)
    notes += carve_notes

    lengths = np.concatenate(acc.lengths)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    flat = np.concatenate(acc.flats) if acc.flats else np.zeros(0, np.int32)
    # The vocabulary of the training and validation rows is the same whichever way validation is carved from them.
    fit_rows = np.sort(np.concatenate([rows["train"], rows["val"]]))
    if not rows["val"].size:  # no "val" rows given: carve validation from training rows only
        train_idx, val_idx = train_val_split(len(rows["train"]), val_fraction, seed, y[torch.from_numpy(rows["train"])])
        rows["train"], rows["val"] = rows["train"][train_idx.numpy()], rows["train"][val_idx.numpy()]
    if vocab is None:
        vocab, to_id = _fit_vocab(acc.index, _rows_flat(flat, offsets, lengths, fit_rows)[0], vocab_size)
    else:
        vocab, to_id, note = map_words(vocab, list(acc.index), _rows_flat(flat, offsets, lengths, rows["train"])[0],
                                       extend_vocab, where)
        notes.append(note)
    out = {}
    for s in ("train", "val", "test"):
        ids, row_lengths = _rows_flat(flat, offsets, lengths, rows[s])
        out[s] = _encode(to_id[ids], row_lengths, y[torch.from_numpy(rows[s])], max_len, encoding)
    _check_not_empty(out, limit, where, test_where)
    return out, vocab, classes, notes


def _carve(acc: _Rows, val_fraction: float, test_fraction: float, seed: int, limit: int | None,
           where: str) -> tuple[list, torch.Tensor, dict, list[str]]:
    """(classes, every row's class index, the rows of each split, notes): the test rows given or a stratified
    carve, the --limit sample, and the validation rows given or carved from the training rows. A function of the
    rows' labels and split values alone, so a run's splits can be made again without tokenizing (remake_split)."""
    splits = np.array([s or "train" for s in acc.splits])
    classes, y = _classes_and_targets(acc, splits, where)
    notes = [_hold_out_test(splits, y, test_fraction, seed)] if not (splits == "test").any() else []
    rows = {s: np.nonzero(splits == s)[0] for s in ("train", "val", "test")}
    if limit is not None:
        rows = _limit_rows(rows, y, limit, len(classes), seed, where)
    if not rows["val"].size:  # no "val" rows given: carve validation from training rows only
        train_idx, val_idx = train_val_split(len(rows["train"]), val_fraction, seed, y[torch.from_numpy(rows["train"])])
        rows["train"], rows["val"] = rows["train"][train_idx.numpy()], rows["train"][val_idx.numpy()]
    return classes, y, rows, notes


def _skip_notes(acc: _Rows) -> list[str]:
    """A note for the rows skipped for an empty text, and one for those skipped for a missing label."""
    notes = []
    if acc.skipped:
        notes.append(
            f"skipped {acc.skipped} row(s) whose text is empty or only whitespace (the first at {acc.first_skipped})"
        )
    if acc.missing:
        notes.append(f"skipped {acc.missing} row(s) whose label is missing (empty, blank or NaN-like; the first at "
                     f"{acc.first_missing}); --on-missing-label error refuses them instead")
    return notes


def _classes_and_targets(acc: _Rows, splits: np.ndarray, where: str) -> tuple[list, torch.Tensor]:
    """The classes of the training rows (at least two) and every row's class index; a label no training row has
    is refused."""
    train_rows = np.nonzero(splits != "test")[0]
    classes = class_order(acc.labels[i] for i in train_rows if splits[i] == "train")
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no training rows"
        raise DataFileError(f"{where}: the training rows hold {found}; a classifier needs at least two classes")
    class_id = {c: k for k, c in enumerate(classes)}
    for i in range(len(acc.labels)):
        if acc.labels[i] not in class_id:
            raise DataFileError(
                f"{acc.wheres[i]}: label {acc.labels[i]!r} never occurs in the training rows "
                f"(classes: {', '.join(map(repr, classes))}); remove the row or add training examples of it"
            )
    return classes, torch.tensor([class_id[v] for v in acc.labels], dtype=torch.float32)


def _hold_out_test(splits: np.ndarray, y: torch.Tensor, test_fraction: float, seed: int) -> str:
    """Mark a stratified test_fraction of the rows "test" in `splits`; the note that says so."""
    _, test_idx = train_val_split(len(splits), test_fraction, seed + TEST_SEED_OFFSET, y)
    splits[test_idx.numpy()] = "test"
    return (f"no test set given: holding out a stratified {test_fraction:.0%} of the rows ({len(test_idx)}) "
            f"for testing, chosen by the fixed seed {seed} (pass --test-data or a --split-column to choose it)")


def _limit_rows(rows: dict, y: torch.Tensor, limit: int, n_classes: int, seed: int, where: str) -> dict:
    """At most `limit` rows of each split, a stratified sample (_stratified_take); refused below one row a class."""
    if limit < n_classes:
        raise DataFileError(f"{where}: --limit {limit} keeps fewer rows per split than the {n_classes} classes; "
                            f"give a --limit of at least {n_classes} (a row of each class), or leave it out")
    return {s: _stratified_take(r, y, limit, seed + LIMIT_SEED_OFFSET) for s, r in rows.items()}


def _fit_vocab(index: dict, fit_flat: np.ndarray, vocab_size: int) -> tuple[Vocab, np.ndarray]:
    """The vocabulary of the provisional ids `fit_flat` (the training and validation rows'), and the map from every
    provisional id to its vocabulary id (2, unknown, for the words left out)."""
    words = list(index)
    order = _first_appearance(fit_flat, len(words))  # ties in frequency keep the order of first appearance
    counts = np.bincount(fit_flat, minlength=len(words))
    vocab = Vocab.from_counts([words[i] for i in order], counts[order], vocab_size)
    vocab = Vocab(vocab.words, tokenizer=SCRIPT_TOKENIZER_NAME)
    to_id = np.full(len(words), 2, dtype=np.int32)
    kept = np.array([index[w] for w in vocab.words], dtype=np.int64)
    to_id[kept] = np.arange(3, 3 + len(kept))
    return vocab, to_id


def _check_not_empty(out: dict, limit: int | None, where: str, test_where: str | None) -> None:
    """Refuse a split left without rows, naming the file it should have come from."""
    for s in ("train", "val", "test"):
        if len(out[s]) == 0:
            what = (
                "validation rows are left (each class gives round(its rows x the validation fraction))"
                if s == "val"
                else f"{s} rows are left"
            )
            raise DataFileError(f"{test_where if s == 'test' and test_where else where}: no {what}; "
                                "give more rows" + (" or a larger --limit" if limit else ""))


def _stratified_take(idx: np.ndarray, y: torch.Tensor, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of the rows `idx`, each class keeping its share (largest remainders; at least one row of
    each class while the limit allows), chosen by `seed`, in file order. Taking the first rows instead would
    take one class only from a class folder, which is read class by class."""
    if len(idx) <= limit:
        return idx
    labels = y[torch.from_numpy(idx)].numpy()
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * limit / len(idx)
    quota = np.minimum(np.maximum(np.floor(share).astype(np.int64), 1), counts)
    for k in np.argsort(-(share - np.floor(share)), kind="stable"):  # hand out what is left, largest remainder first
        if quota.sum() >= limit:
            break
        if quota[k] < counts[k]:
            quota[k] += 1
    while quota.sum() > limit:  # the at-least-one rule overshot: take back from the largest classes
        quota[int(np.argmax(quota))] -= 1
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c, q in zip(classes, quota):
        rows = idx[labels == c]
        chosen.append(rows[torch.randperm(len(rows), generator=g)[:q].numpy()])
    return np.sort(np.concatenate(chosen))


def _rows_flat(
    flat: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ids of rows `idx` back to back, and their lengths (no Python loop over rows)."""
    n = lengths[idx]
    within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # position inside its row
    return flat[np.repeat(offsets[idx], n) + within], n


def _encode(ids: np.ndarray, lengths: np.ndarray, labels: torch.Tensor, max_len: int, encoding: str):
    """encode_keras / encode_bucketed of rows given back to back, without a Python loop over rows: a row of L ids
    becomes [1] + ids when L + 1 <= max_len, else its last max_len ids (pad_sequences' truncating="pre")."""
    start = lengths + 1 <= max_len  # (N,) rows that keep their start token
    out_len = np.where(start, lengths + 1, max_len)
    kept = out_len - start  # ids kept per row
    within = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    src = np.repeat(np.cumsum(lengths) - lengths + (lengths - kept), kept) + within
    row_out = np.cumsum(out_len) - out_len
    out = np.empty(int(out_len.sum()), dtype=np.int64)
    out[row_out[start]] = START_ID
    out[np.repeat(row_out + start, kept) + within] = ids[src]
    padding = "pre" if encoding == "keras" else "post"
    width = max_len if padding == "pre" else int(out_len.max()) if len(out_len) else 0
    return pad_flat(torch.from_numpy(out), torch.from_numpy(out_len.astype(np.int64)), labels, width, padding)


def _meta(out: dict, classes: list, notes: list[str], source: str, params: dict, seconds: float, vocab: Vocab) -> dict:
    counts = {
        s: {"total": len(out[s]), **{str(c): int((out[s].labels == k).sum()) for k, c in enumerate(classes)}}
        for s in out
    }
    return {"source": "labelled", "source_path": source, "params": params, "classes": list(classes), "notes": notes,
            "counts": counts, "prepare_seconds": round(seconds, 3), "vocab_words": len(vocab.words)}


def _sized(params: dict, vocab: Vocab) -> dict:
    """`params` saying the embedding rows the data needs: vocab_size, or more for a vocabulary extended past it."""
    return dict(params, vocab_size=max(params["vocab_size"], len(vocab)))


def _identity(path: Path) -> list[str]:
    """(name, size, mtime) of the file, or of every file of a class folder: a changed file gets a new key."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]


def _data_paths(path: str | os.PathLike, test_path: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """The data and test paths, refused if missing or if the test file is the data file itself."""
    path = Path(path).expanduser()
    test = Path(test_path).expanduser() if test_path is not None else None
    for p in (path, test):
        if p is not None and not p.exists():
            raise DataFileError(f"{p}: no such file or folder")
    if test is not None and os.path.samefile(path, test):
        raise DataFileError(
            f"--test-data {test} is the same file as --data {path}: the test scores would be on training "
            "rows; give a file of other rows, or leave --test-data out to hold out a stratified share"
        )
    return path, test


def _cache_file(cache_dir: str | os.PathLike | None, path: Path, test: Path | None, params: dict) -> Path:
    """Where the prepared data is cached: keyed by the settings and the files' identity (_identity)."""
    ident = {"data": _identity(path), "test": _identity(test) if test else None}
    key = hashlib.sha256(json.dumps([params, ident], sort_keys=True).encode()).hexdigest()[:20]
    return cache_root(cache_dir) / "prepared" / f"labelled-{path.stem[:40]}-{key}.pt"


def prepare_labelled(
    path: str | os.PathLike,
    test_path: str | os.PathLike | None = None,
    columns: Columns = Columns(),
    vocab_size: int = 5000,
    max_len: int = 500,
    encoding: str = "bucketed",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    processes: int | None = None,
    on_missing_label: str = "skip",
    vocab: Vocab | None = None,
    extend_vocab: int = 0,
) -> PreparedData:
    """Read, check, tokenize, build the vocabulary, encode and split the user's data at `path` (see
    rnnsent.data.tabular for the formats), or read all that from the cache. `limit` keeps N rows of each split,
    a stratified seeded sample. Rows with a missing label are skipped with a note (on_missing_label="skip") or
    refused ("error"). Every rejected input raises DataFileError naming the file and line, before anything is cached.
    `vocab`: a trained model's vocabulary, which (with its tokenizer) encodes the data instead of one built from
    it, extended by the `extend_vocab` most frequent words of the training split it lacks (given_vocab); vocab_size
    is then the model's embedding rows, and meta["params"]["vocab_size"] the rows the data needs."""
    encoding = _settings_check(vocab_size, max_len, encoding, val_fraction, test_fraction, limit, vocab, extend_vocab)
    path, test = _data_paths(path, test_path)
    params = {"version": CACHE_VERSION, "vocab_size": vocab_size, "max_len": max_len, "encoding": encoding,
              "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed, "limit": limit,
              "columns": [columns.text, columns.label, columns.split], "tokenizer": SCRIPT_TOKENIZER_NAME}
    if columns.quoting != "csv":  # only then: the caches of files read as before keep their keys
        params["quoting"] = columns.quoting
    if vocab is not None:  # only then, likewise
        params.update(tokenizer=vocab.tokenizer, vocab=vocab_key(vocab), extend_vocab=extend_vocab)
    cache = _cache_file(cache_dir, path, test, params)
    cached = load_cached(cache) if use_cache else None
    if cached is not None and on_missing_label == "error" and cached.meta.get("missing_labels"):
        cached = None  # read again: the refusal names the row
    if cached is not None:
        splits = {"train": cached.train, "val": cached.val, "test": cached.test}
        cached.meta.setdefault("split", split_record(splits, path, test))  # a cache written before the record
        return cached

    t0 = time.perf_counter()
    sources = [(read_rows(path, columns), None)]
    if test is not None:
        sources.append((read_rows(test, columns), "test"))
    acc = _tokenize_all(sources, processes, on_missing_label, params["tokenizer"])
    if test is not None and not any(s == "test" for s in acc.splits):
        raise DataFileError(f"{test}: no row has any text; every text is empty or whitespace")
    out, vocab, classes, notes = _build(acc, vocab_size, max_len, encoding, val_fraction, test_fraction, seed, limit,
                                        str(path), str(test) if test else None, vocab, extend_vocab)
    missing = acc.missing
    del acc  # the provisional ids: free them before the cache is packed
    for note in notes:
        log.info(note)
    meta = _meta(out, classes, notes, str(path), _sized(params, vocab), time.perf_counter() - t0, vocab)
    meta["missing_labels"] = missing
    meta["split"] = split_record(out, path, test)
    if test is not None:
        meta["test_path"] = str(test)
    cached = use_cache and save_cached(cache, out, vocab, meta)
    return PreparedData.fresh(out, vocab, meta, cache_file=cache if cached else None)


def prepare_texts(
    texts: Sequence[str],
    labels: Sequence[str | int],
    test_texts: Sequence[str] | None = None,
    test_labels: Sequence[str | int] | None = None,
    vocab_size: int = 5000,
    max_len: int = 500,
    encoding: str = "bucketed",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    processes: int | None = None,
    vocab: Vocab | None = None,
    extend_vocab: int = 0,
) -> PreparedData:
    """prepare_labelled for Python lists (nothing is cached): Trainer(config, prepare_texts(texts, labels)).

    The config's vocab_size, max_len and encoding must be the ones given here; num_classes is
    len(data.meta["classes"]) (2 for two classes). `vocab` and `extend_vocab`: as prepare_labelled's."""
    encoding = _settings_check(vocab_size, max_len, encoding, val_fraction, test_fraction, limit, vocab, extend_vocab)

    def rows(xs, ys, name):
        if len(xs) != len(ys):
            raise DataFileError(f"{name}: {len(xs)} texts but {len(ys)} labels; give one label per text")
        for i, (x, y) in enumerate(zip(xs, ys)):
            if not isinstance(x, str):
                raise DataFileError(f"{name}[{i}]: the text is a {type(x).__name__}, not a string")
            if (
                y is None
                or isinstance(y, float)
                and y != y
                or isinstance(y, str)
                and y.strip().lower() in MISSING_LABELS
            ):
                y = None  # a missing label, as in a file: skipped with a note, never a class
            elif isinstance(y, bool) or not isinstance(y, (str, int, np.integer)):
                raise DataFileError(f"{name}[{i}]: the label {y!r} is neither a string nor an integer")
            yield Row(x, int(y) if isinstance(y, np.integer) else y.strip() if isinstance(y, str) else y, None, i,
                      f"{name}[{i}]")

    t0 = time.perf_counter()
    sources = [(rows(texts, labels, "texts"), None)]
    if test_texts is not None:
        sources.append((rows(test_texts, test_labels if test_labels is not None else [], "test_texts"), "test"))
    tokenizer = vocab.tokenizer if vocab is not None else SCRIPT_TOKENIZER_NAME
    acc = _tokenize_all(sources, processes, tokenizer=tokenizer)
    out, vocab, classes, notes = _build(acc, vocab_size, max_len, encoding, val_fraction, test_fraction, seed, limit,
                                        "texts", "test_texts" if test_texts is not None else None, vocab, extend_vocab)
    for note in notes:
        log.info(note)
    params = {"vocab_size": vocab_size, "max_len": max_len, "encoding": encoding, "val_fraction": val_fraction,
              "test_fraction": test_fraction, "seed": seed, "limit": limit, "tokenizer": tokenizer}
    meta = _meta(out, classes, notes, "python lists", _sized(params, vocab), time.perf_counter() - t0, vocab)
    return PreparedData.fresh(out, vocab, meta)


def encode_labelled(path: str | os.PathLike, vocab: Vocab, max_len: int, encoding: str, classes: Sequence | None,
                    columns: Columns = Columns()):
    """Every row of the user's file (or class folder) encoded as a trained model reads text: its vocabulary and
    tokenizer, max_len and encoding; labels mapped to `classes` (IMDB's models: 0 and 1). For evaluate.py --data."""
    return read_labelled(path, vocab, max_len, encoding, classes, columns)[0]


def read_labelled(path: str | os.PathLike, vocab: Vocab, max_len: int, encoding: str, classes: Sequence | None,
                  columns: Columns = Columns()) -> tuple[EncodedSplit, list[str]]:
    """encode_labelled's split, and the texts of its rows in order."""
    classes = list(classes) if classes is not None else [0, 1]
    class_id = {c: k for k, c in enumerate(classes)}
    tokenize = tokenizer_for(vocab.tokenizer)
    ids, labels, texts, skipped, missing = [], [], [], 0, 0
    for row in read_rows(path, columns):
        if not row.text.strip():
            skipped += 1
            continue
        if row.label is None:  # nothing to score it against
            missing += 1
            continue
        if row.label not in class_id:
            raise DataFileError(f"{row.where}: label {row.label!r} is not one of the model's classes "
                                f"({', '.join(map(repr, classes))}); remove the row or fix its label")
        ids.append(vocab.encode(tokenize(row.text)))
        labels.append(class_id[row.label])
        texts.append(row.text)
    if skipped:
        log.info(f"skipped {skipped} row(s) whose text is empty or only whitespace")
    if missing:
        log.info(f"skipped {missing} row(s) whose label is missing (empty, blank or NaN-like)")
    if not ids:
        raise DataFileError(f"{path}: no row has any text; every text is empty or whitespace")
    encode = encode_keras if canonical_encoding(encoding, warn=False) == "keras" else encode_bucketed
    return encode(ids, labels, max_len), texts


def files_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes; of a class folder, of every file's relative path and bytes, in sorted order."""
    path = Path(path)
    if path.is_file():
        return file_digest(path, "sha256").hex()
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + file_digest(p, "sha256"))
    return h.hexdigest()


def fingerprint(split: EncodedSplit) -> str:
    """SHA-256 of a split's rows as the model reads them (each row's ids, unpadded) and their labels: equal for two
    splits exactly when they hold the same rows, encoded the same way, in the same order."""
    flat, lengths = split.unpadded()
    h = hashlib.sha256()
    for t in (lengths, flat, split.labels):
        h.update(t.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def split_record(out: dict, path: Path, test: Path | None) -> dict:
    """How a run's splits were made, kept in its checkpoint so that evaluate finds exactly its test rows again: the
    files' SHA-256 and each split's rows and fingerprint (the settings that carve them are the run's config)."""
    return {"data_sha256": files_digest(path), "test_data_sha256": files_digest(test) if test is not None else None,
            "rows": {s: len(out[s]) for s in out}, "fingerprints": {s: fingerprint(out[s]) for s in out}}


def _split_rows(settings) -> tuple[list[str], torch.Tensor, dict, list, Path]:
    """(every kept row's text, its class index, the rows of each split, the classes, the data's path) of the data
    that `settings` (a DataConfig or TrainConfig) name: prepare_labelled's reading and carve, without tokenizing."""
    path, test = _data_paths(settings.data_root, settings.test_data)
    columns = Columns(settings.text_column, settings.label_column, settings.split_column, settings.quoting)
    acc = _Rows(on_missing_label=settings.on_missing_label)
    sources = [(read_rows(path, columns), None)] + ([(read_rows(test, columns), "test")] if test is not None else [])
    texts = [t for rows, split in sources for chunk in _chunks(rows, acc, split) for t in chunk]
    if not acc.labels:
        raise DataFileError(f"{path}: no row has any text; every text is empty or whitespace")
    classes, y, rows, _ = _carve(acc, settings.val_fraction, settings.test_fraction, settings.split_seed,
                                 settings.limit, str(path))
    return texts, y, rows, classes, path


def remake_split(settings, which: str, vocab: Vocab, classes: Sequence) -> tuple[EncodedSplit, list[str]]:
    """The split `which` ("train", "val" or "test") of the run whose data settings (a DataConfig or TrainConfig)
    are `settings`, and its texts, read again from settings.data_root (and test_data): prepare_labelled's carve,
    without tokenizing the other rows, encoded with the run's vocabulary. The caller compares fingerprint() of it
    with the run's record."""
    texts, y, rows, found, path = _split_rows(settings)
    if [str(c) for c in found] != [str(c) for c in classes]:
        raise DataFileError(f"{path}: the training rows hold the classes {', '.join(map(repr, found))}, but the model "
                            f"was trained on {', '.join(map(repr, classes))}; this is not the data it was trained on")
    chosen = [texts[i] for i in rows[which]]
    tokenize = tokenizer_for(vocab.tokenizer)
    encode = encode_keras if canonical_encoding(settings.encoding, warn=False) == "keras" else encode_bucketed
    split = encode([vocab.encode(tokenize(t)) for t in chosen], y[torch.from_numpy(rows[which])], settings.max_len)
    return split, chosen


def trained_texts(settings) -> set[str]:
    """The texts of the training and validation rows of the run whose data settings are `settings`."""
    texts, _, rows, _, _ = _split_rows(settings)
    return {texts[i] for s in ("train", "val") for i in rows[s]}


def take_rows(split: EncodedSplit, texts: list[str], limit: int) -> tuple[EncodedSplit, list[str]]:
    """At most `limit` rows of a split and their texts: the stratified, seeded sample --limit takes."""
    idx = _stratified_take(np.arange(len(split)), split.labels, limit, LIMIT_SEED_OFFSET)
    return split.select(torch.from_numpy(idx)), [texts[i] for i in idx]
