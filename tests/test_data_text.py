"""Tokenizer, vocabulary and the two encodings, checked against hand-written references."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnsent.data.text import (
    OOV_ID,
    RESERVED_NAMES,
    UNUSED_NAME,
    EncodedSplit,
    Vocab,
    encode_bucketed,
    encode_keras,
    tokenize,
)

# ------------------------------------------------------------------ tokenizer


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Hello, World! It's 7/10...") == ["hello", ",", "world", "!", "it's", "7", "/", "10", ".", ".", "."]


@pytest.mark.parametrize("br", ["<br />", "<br/>", "<br>", "<BR />", "< br / >"])
def test_tokenize_drops_line_breaks(br):
    assert tokenize(f"great film.{br}{br}Loved it") == ["great", "film", ".", "loved", "it"]


def test_tokenize_keeps_inner_apostrophes_only():
    assert tokenize("don't 'quoted' rock'n'roll o’clock") == ["don't", "'", "quoted", "'", "rock'n'roll", "o'clock"]


def test_tokenize_unicode_and_underscores():
    assert tokenize("Café NAÏVE 東京 __x__") == ["café", "naïve", "東京", "_", "_", "x", "_", "_"]


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u00a0\u2003"])
def test_tokenize_empty_and_whitespace(text):
    assert tokenize(text) == []


def test_tokenize_bytes_never_crash_on_bad_utf8():
    assert tokenize(b"good \xff\xfe movie \xc3") == ["good", "\ufffd", "\ufffd", "movie", "\ufffd"]
    assert tokenize("Café".encode("utf-8")) == ["café"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary()))
def test_tokenize_properties(text):
    tokens = tokenize(text)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)
    # Tokens are a fixed point: re-tokenizing their space-joined form gives them back.
    assert tokenize(" ".join(tokens)) == tokens


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=8), st.integers(4, 30))
def test_encode_properties(texts, vocab_size):
    token_lists = [tokenize(t) for t in texts]
    vocab = Vocab.build(token_lists, vocab_size)
    assert len(vocab) <= vocab_size
    for tokens in token_lists:
        ids = vocab.encode(tokens)
        assert len(ids) == len(tokens)
        assert all(ids[k] == OOV_ID or 3 <= ids[k] < len(vocab) for k in range(len(ids)))
        # Every in-vocabulary token decodes back to itself.
        assert all(vocab.decode([i])[0] == t for i, t in zip(ids, tokens) if i != OOV_ID)


# ------------------------------------------------------------------ vocabulary


def test_vocab_ids_follow_keras_conventions():
    docs = [["b", "a", "c"], ["a", "b", "d", "a"], ["e", "c", "b"]]  # a:3 b:3 c:2 d:1 e:1
    vocab = Vocab.build(docs, vocab_size=7)
    # ties keep first appearance: b before a, d before e
    assert vocab.itos == ["<pad>", "<start>", "<oov>", "b", "a", "c", "d"]
    assert len(vocab) == 7
    assert vocab.encode(["a", "e", "zzz", "d"]) == [4, OOV_ID, OOV_ID, 6]


def test_vocab_size_counts_reserved_ids():
    tokens = [[f"w{i}"] * (100 - i) for i in range(50)]
    assert len(Vocab.build(tokens, 5000).words) == 50
    assert len(Vocab.build(tokens, 20).words) == 17
    assert len(Vocab.build(tokens, 4).words) == 1


@pytest.mark.parametrize("bad", [3, 0, -5, 4.0, "5000"])
def test_vocab_size_below_four_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        Vocab.build([["a"]], bad)


def test_reserved_names_cannot_be_produced_or_encoded():
    vocab = Vocab.build([["x"]], 10)
    for name in RESERVED_NAMES + (UNUSED_NAME,):
        assert tokenize(name) != [name]
        assert vocab.encode([name]) == [OOV_ID]


def test_vocab_dict_round_trip_is_plain_json():
    vocab = Vocab.build([tokenize("The film, the plot; don't.")], 8)
    d = vocab.to_dict()
    again = Vocab.from_dict(json.loads(json.dumps(d)))
    assert again == vocab and again.encode(["the", "plot"]) == vocab.encode(["the", "plot"])
    assert d["lower"] is True and d["tokenizer"] == "rnnsent-v1"
    with pytest.raises(ValueError, match="to_dict"):
        Vocab.from_dict({"words": []})


def test_keras_word_index_ids_equal_keras_num_words_cut():
    index = {"the": 1, "and": 2, "a": 3, "of": 4, "to": 5, "is": 7}  # rank 6 missing
    vocab = Vocab.from_keras_word_index(index, vocab_size=9)  # Keras keeps rank + 3 < 9: ranks 1..5
    assert vocab.encode(["the", "and", "to", "is", "zzz"]) == [4, 5, 8, OOV_ID, OOV_ID]
    assert vocab.itos[3] == UNUSED_NAME and len(vocab) == 9
    gap = Vocab.from_keras_word_index(index, vocab_size=20)
    assert gap.encode(["is"]) == [10] and gap.itos[9] == UNUSED_NAME  # the gap does not shift rank 7
    assert len(gap) == 11 and gap.tokenizer == "keras-imdb"
    with pytest.raises(ValueError, match="rank 1"):
        Vocab.from_keras_word_index({"x": 1, "y": 1}, 10)


# ------------------------------------------------------------------ encodings


def reference_pad_sequences(seqs, maxlen):
    """keras.utils.pad_sequences(seqs, maxlen) with its defaults, written out by hand."""
    out = []
    for s in seqs:
        s = list(s)
        if len(s) > maxlen:
            s = s[len(s) - maxlen :]  # truncating="pre": drop from the front
        out.append([0] * (maxlen - len(s)) + s)  # padding="pre"
    return out


def random_id_lists(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(2, 50) for _ in range(rng.choice([0, 1, 2, 5, 9, 10, 11, 30]))] for _ in range(n)]


@pytest.mark.parametrize("max_len", [1, 2, 10, 11, 64])
def test_encode_keras_matches_pad_sequences_reference(max_len):
    ids = random_id_lists(40)
    labels = [i % 2 for i in range(40)]
    enc = encode_keras(ids, labels, max_len)
    expected = reference_pad_sequences([[1] + s for s in ids], max_len)
    assert enc.padding == "pre" and enc.tokens.shape == (40, max_len)
    assert enc.tokens.tolist() == expected
    assert enc.lengths.tolist() == [min(len(s) + 1, max_len) for s in ids]
    assert enc.labels.dtype == torch.float32 and enc.labels.tolist() == labels


@pytest.mark.parametrize("max_len", [1, 3, 10, 11, 64])
def test_encode_bucketed_has_the_same_ids_right_padded(max_len):
    ids = random_id_lists(40, seed=1)
    fast, keras = encode_bucketed(ids, [0] * 40, max_len), encode_keras(ids, [0] * 40, max_len)
    rows = [([1] + s)[-max_len:] for s in ids]
    width = max(len(r) for r in rows)
    assert fast.padding == "post" and fast.tokens.shape == (40, width)
    assert fast.tokens.tolist() == [r + [0] * (width - len(r)) for r in rows]
    assert torch.equal(fast.lengths, keras.lengths)
    for i in range(40):  # same ids, other side
        n = int(fast.lengths[i])
        assert torch.equal(fast.tokens[i, :n], keras.tokens[i, max_len - n :])


def test_encode_matches_keras_itself():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras_utils = pytest.importorskip("keras.utils")
    ids = random_id_lists(30, seed=2)
    ours = encode_keras(ids, [0] * 30, 10).tokens.numpy()
    theirs = keras_utils.pad_sequences([[1] + s for s in ids], maxlen=10)
    assert (ours == theirs).all()


def test_empty_review_is_the_start_token():
    for enc in (encode_keras([[]], [1], 5), encode_bucketed([[]], [1], 5)):
        assert enc.lengths.tolist() == [1]
    assert encode_keras([[]], [1], 5).tokens.tolist() == [[0, 0, 0, 0, 1]]
    assert encode_bucketed([[]], [1], 5).tokens.tolist() == [[1]]


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_max_len_below_one_is_a_clear_error(bad):
    for encode in (encode_keras, encode_bucketed):
        with pytest.raises(ValueError, match="max_len"):
            encode([[3]], [0], bad)


def test_label_count_mismatch_and_split_validation():
    with pytest.raises(ValueError, match="labels"):
        encode_keras([[3], [4]], [0], 5)
    good = encode_bucketed([[3, 4], [5]], [0, 1], 5)
    with pytest.raises(ValueError, match="start token"):
        EncodedSplit(good.tokens, torch.tensor([0, 1]), good.labels, "post")
    with pytest.raises(ValueError, match="padding"):
        EncodedSplit(good.tokens, good.lengths, good.labels, "left")


def test_select_cuts_post_padding_to_new_longest_row():
    enc = encode_bucketed([[3, 4, 5, 6], [7]], [0, 1], 10)
    sub = enc.select(torch.tensor([1]))
    assert sub.tokens.tolist() == [[1, 7]] and sub.labels.tolist() == [1.0]
    flat, lengths = enc.unpadded()
    assert flat.tolist() == [1, 3, 4, 5, 6, 1, 7] and lengths.tolist() == [5, 2]
