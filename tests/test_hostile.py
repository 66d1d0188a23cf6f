"""Hostile input: arbitrary text and bytes, huge reviews, odd encodings and forged checkpoints never crash
prediction or the data pipeline; at worst they are refused with a one-line message."""
import codecs
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnsent
from rnnsent.inference.loading import load_checkpoint
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state, save_checkpoint
from rnnsent.cli import explain_main, predict_main
from rnnsent.data import Vocab, encode_bucketed, encode_keras, prepare_imdb, tokenize
from rnnsent.data.text import OOV_ID, RESERVED_NAMES
from rnnsent.model.sentiment import SentimentRNN

FIXTURES = Path(__file__).parent / "fixtures" / "imdb"
VOCAB = Vocab(("the", "film", "good", "bad", "é", "ü", "don't", "!", "<", "br"))
HUGE = "a truly good film, " * 263_158  # 5 MB of text in one review
texts = st.text(max_size=300) | st.binary(max_size=300)
hyp = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SentimentRNN("gru", vocab_size=len(VOCAB), embed_dim=4, hidden_size=3).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, _state(model))
    return path


def _state(model, **changes) -> dict:
    state = {"model_config": model.config(), "model_state": model.state_dict(), "vocab": VOCAB.to_dict(),
             "data": {"max_len": 8, "encoding": "fast"}}
    state.update(changes)
    return state


@hyp
@given(text=texts)
def test_tokenize_takes_anything(text):
    tokens = tokenize(text)
    assert all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in tokens)
    assert not set(tokens) & set(RESERVED_NAMES), "no text can spell a reserved id"


@hyp
@given(text=texts)
def test_encode_ids_stay_inside_the_vocabulary(text):
    ids = VOCAB.encode(tokenize(text))
    assert all(OOV_ID <= i < len(VOCAB) for i in ids)


@hyp
@given(id_lists=st.lists(st.lists(st.integers(2, len(VOCAB) - 1), max_size=40), min_size=1, max_size=6),
       max_len=st.integers(1, 8))
def test_both_encodings_keep_the_same_last_ids(id_lists, max_len):
    keras, fast = (
        encode_keras(id_lists, [0] * len(id_lists), max_len),
        encode_bucketed(id_lists, [1] * len(id_lists), max_len),
    )
    assert keras.tokens.shape == (len(id_lists), max_len) and torch.equal(keras.lengths, fast.lengths)
    for row, ids in enumerate(id_lists):
        n = int(keras.lengths[row])
        assert n == min(len(ids) + 1, max_len)
        assert keras.tokens[row, max_len - n:].tolist() == fast.tokens[row, :n].tolist() == ([1] + ids)[-n:]
        assert not keras.tokens[row, : max_len - n].any() and not fast.tokens[row, n:].any()


@hyp
@given(batch=st.lists(texts, min_size=1, max_size=5), max_len=st.integers(1, 8),
       encoding=st.sampled_from(["keras", "bucketed"]))
def test_predict_takes_any_text_or_bytes(model, batch, max_len, encoding):
    preds = rnnsent.predict(model, batch, vocab=VOCAB, max_len=max_len, encoding=encoding)
    assert len(preds) == len(batch)
    for text, p in zip(batch, preds):
        # Reference: the review alone, start token and its last ids; pre-padded to max_len as pad_sequences
        # does for "keras", no padding at all for "bucketed".
        text = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
        row = ([1] + VOCAB.encode(tokenize(text)))[-max_len:]
        padded = [0] * (max_len - len(row)) + row if encoding == "keras" else row
        with torch.no_grad():
            expected = torch.sigmoid(model(torch.tensor([padded]))).item()
        assert p.tokens == len(row) and p.probability == pytest.approx(expected, abs=1e-6)
        assert p.label == ("positive" if p.probability >= 0.5 else "negative")


def test_predict_a_5_mb_review(model):
    short, huge = rnnsent.predict(model, ["a truly good film, " * 3, HUGE], vocab=VOCAB, max_len=8, encoding="bucketed")
    assert huge.tokens == 8 and huge.probability == pytest.approx(short.probability), "only the last max_len ids count"


def _predict_file(checkpoint, path, capsys) -> tuple[int, list[str], str]:
    code = predict_main(["--checkpoint", str(checkpoint), "--file", str(path), "--json"])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.strip()


@pytest.mark.parametrize("encode, lines_equal", [
    (lambda t: t.encode("latin-1"), 2),  # not UTF-8: only the accented third line changes (to U+FFFD)
    (lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le"), 3),
    (lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"), 3),
    (lambda t: codecs.BOM_UTF8 + t.encode("utf-8"), 3),
], ids=["latin-1", "utf-16-le-bom", "utf-16-be-bom", "utf-8-bom"])
def test_predict_file_in_other_encodings(checkpoint, tmp_path, capsys, encode, lines_equal):
    text = "The film was good!\nBad, bad film. Don't.\nÉté über\n"
    (tmp_path / "utf8.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "other.txt").write_bytes(encode(text))
    code, expected, _ = _predict_file(checkpoint, tmp_path / "utf8.txt", capsys)
    assert code == 0 and len(expected) == 3
    code, got, err = _predict_file(checkpoint, tmp_path / "other.txt", capsys)
    assert code == 0 and len(got) == 3, err
    assert got[:lines_equal] == expected[:lines_equal]


@pytest.mark.parametrize("data", [bytes(range(256)) * 40, b"\xff\xfe\x00", b"\n\n \n", HUGE.encode()],
                         ids=["all-bytes", "bom-and-odd-byte", "blank-lines", "5-MB-line"])
def test_predict_file_with_junk_never_crashes(checkpoint, tmp_path, capsys, data):
    (tmp_path / "junk.txt").write_bytes(data)
    code, out, err = _predict_file(checkpoint, tmp_path / "junk.txt", capsys)
    assert "Traceback" not in err
    if code == 0:
        assert out and all('"probability"' in line for line in out)
    else:  # nothing but blank lines: nothing to score
        assert code == 2 and err.startswith("error: no review given") and len(err.splitlines()) == 1


def test_predict_empty_file_is_a_one_line_error(checkpoint, tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    code, out, err = _predict_file(checkpoint, tmp_path / "empty.txt", capsys)
    assert code == 2 and out == [] and err == "error: no review given: pass texts as arguments or --file reviews.txt"


def test_data_pipeline_reads_hostile_review_files(tmp_path):
    root = shutil.copytree(FIXTURES / "aclImdb", tmp_path / "aclImdb")
    shutil.copy(FIXTURES / "imdb_subset.json", tmp_path)  # the copy's declared size
    hostile = [b"", b"\0" * 100, "Caf\xe9 tr\xe8s bien".encode("latin-1"),
               codecs.BOM_UTF16_LE + "good".encode("utf-16-le"), bytes(range(256)), HUGE.encode()]
    # The first review of a block is checked against IMDB's own (to catch a reordered copy); replace later ones.
    files = sorted((root / "train" / "pos").glob("*.txt"))[1:4] + sorted((root / "train" / "neg").glob("*.txt"))[1:4]
    for f, data in zip(files, hostile, strict=True):
        f.write_bytes(data)
    data = prepare_imdb(vocab_size=300, max_len=60, encoding="bucketed", val_fraction=0.25, root=root,
                        use_cache=False)
    assert len(data.train) + len(data.val) == 12
    assert int(data.train.lengths.min()) >= 1 and int(data.train.lengths.max()) <= 60


@pytest.mark.parametrize("data", [b"", b"\0" * 64, bytes(range(256)), b'{"not": "reviews"}', b"[" * 100_000],
                         ids=["empty", "nul", "all-bytes", "wrong-json", "deep-nesting"])
def test_data_pipeline_refuses_a_junk_reviews_json(tmp_path, data):
    (tmp_path / "reviews.json").write_bytes(data)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        prepare_imdb(vocab_size=300, root=tmp_path / "reviews.json", use_cache=False, download=False)
    # One line that names the file: not a bare json/pickle exception escaping from the reader.
    message = str(e.value)
    assert str(tmp_path / "reviews.json") in message and "\n" not in message


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(model_config=["gru", 10]), "not a dict of named settings"),
        (dict(model_config={"cell": "transformer", "vocab_size": 13}), "unknown cell 'transformer'"),
        (dict(model_config={"cell": "gru", "vocab_size": "many"}), "cannot build"),
        (
            dict(model_config={"cell": "gru", "vocab_size": 10**12, "embed_dim": 4, "hidden_size": 3}),
            "vocab_size must be at least 4 .* and at most 10,000,000, got 1000000000000",
        ),
        (
            dict(model_config={"cell": "gru", "vocab_size": 10_000_001, "embed_dim": 4, "hidden_size": 3}),
            "vocab_size must be at least 4 .* and at most 10,000,000, got 10000001",
        ),
        (dict(data={"max_len": 10**11, "encoding": "keras"}), "max_len must be at least 1 and at most 10,000,000, got"),
        (
            dict(model_config={"cell": "gru", "vocab_size": 13, "embed_dim": 4, "hidden_size": 3, "sneaky": 1}),
            "cannot build",
        ),
        (dict(model_state={"embedding.weight": torch.zeros(13, 4)}), "does not fit its own"),
        (dict(model_state="weights"), "does not fit its own"),
        (dict(vocab={"words": 5, "lower": True, "tokenizer": "rnnsent-v1"}), "no usable vocabulary"),
        (dict(vocab={"words": [1, 2, 3], "lower": True, "tokenizer": "rnnsent-v1"}), "no usable vocabulary"),
        (dict(vocab=["the", "film"]), "no usable vocabulary"),
        (
            dict(vocab={"words": ["w"] * 50, "lower": True, "tokenizer": "rnnsent-v1"}),
            "vocabulary of 53 ids but an embedding of 13",
        ),
        (dict(data={"max_len": -1, "encoding": "fast"}), "unusable encoding settings"),
        (dict(data={"max_len": "500", "encoding": "fast"}), "unusable encoding settings"),
        (dict(data={"max_len": 8, "encoding": "bert"}), "unusable encoding settings"),
        (dict(data="fast"), "unusable encoding settings"),
    ],
)
def test_forged_checkpoints_are_refused(tmp_path, model, capsys, changes, message):
    path = save_checkpoint(tmp_path / "forged.pt", _state(model, **changes))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert predict_main(["--checkpoint", str(path), "a good film"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")


def test_a_real_checkpoint_still_loads(checkpoint):
    assert load_checkpoint(checkpoint).predict(["good film"])[0].tokens == 3
    assert load_checkpoint_state(checkpoint)["data"] == {"max_len": 8, "encoding": "fast"}


def test_predict_file_gives_one_row_per_input_line_in_order(checkpoint, tmp_path, capsys):
    """Blank lines, U+2028, form feeds and other characters str.splitlines() breaks at stay inside their line."""
    lines = ["the film was good", "", "bad\u2028film", "good\x0cfilm\x1c!", "   ", "bad\rfilm", "é\u0085ü"]
    (tmp_path / "reviews.txt").write_bytes("\n".join(lines).encode("utf-8") + b"\r\n")
    code, out, err = _predict_file(checkpoint, tmp_path / "reviews.txt", capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out]
    assert [r["text"] for r in rows] == lines
    assert [r["note"] for r in rows] == [None, "empty", None, None, "empty", None, None]
    alone = rnnsent.predict(rnnsent.load_checkpoint(checkpoint), lines)
    assert [r["probability"] for r in rows] == [p.probability for p in alone]


def test_predict_file_reads_a_named_pipe(checkpoint, tmp_path, capsys):
    import os
    import threading

    fifo = tmp_path / "reviews.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"the film was good\nbad film\n"))
    writer.start()
    try:
        code, out, err = _predict_file(checkpoint, fifo, capsys)
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # a reader that never opened it must not hang the writer
        writer.join()
    assert code == 0, err
    assert [json.loads(line)["text"] for line in out] == ["the film was good", "bad film"]


def test_predict_flags_texts_with_no_known_words(checkpoint, capsys):
    loaded = rnnsent.load_checkpoint(checkpoint)
    known, foreign, empty, half = rnnsent.predict(loaded, ["the good film", "Это фильм", "", "the xyzzy"])
    assert (known.note, foreign.note, empty.note, half.note) == (None, "no known words", "empty", None)
    assert (known.oov_share, foreign.oov_share, half.oov_share) == (0.0, 1.0, 0.5)
    assert predict_main(["--checkpoint", str(checkpoint), "Это фильм", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert {"text", "label", "probability"} <= set(row) and row["note"] == "no known words" and row["oov_share"] == 1.0
    assert predict_main(["--checkpoint", str(checkpoint), "Это фильм"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("[no known words]")


@pytest.mark.parametrize("bad", [[5], [None], [1.5], [["the", "film"]]])
def test_predict_refuses_what_is_not_text(checkpoint, bad):
    with pytest.raises(TypeError, match="predict takes review texts"):
        rnnsent.predict(rnnsent.load_checkpoint(checkpoint), bad)


def test_predict_file_keeps_a_nul_byte_in_the_text(checkpoint, tmp_path, capsys):
    lines = ["The film\0 was good!", "Bad, bad\0film.", "\0"]
    (tmp_path / "nul.txt").write_bytes("\n".join(lines).encode("utf-8"))
    code, out, err = _predict_file(checkpoint, tmp_path / "nul.txt", capsys)
    assert code == 0, err
    assert all("\\u0000" in line for line in out), "JSON escapes the NUL: the line stays one line of text"
    rows = [json.loads(line) for line in out]
    assert [r["text"] for r in rows] == lines
    alone = rnnsent.predict(rnnsent.load_checkpoint(checkpoint), lines)
    assert [r["probability"] for r in rows] == [p.probability for p in alone]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_predict_file_in_utf16_or_utf32_without_a_bom_is_refused(checkpoint, tmp_path, capsys, codec):
    (tmp_path / "wide.txt").write_bytes("The film was good!\nBad film.\n".encode(codec))
    code, out, err = _predict_file(checkpoint, tmp_path / "wide.txt", capsys)
    assert code == 2 and out == [] and len(err.splitlines()) == 1
    assert "NUL bytes, so it is not UTF-8 text: UTF-16 or UTF-32 without a byte-order mark?" in err


TERMINAL_ATTACK = "\x1b]0;PWNED\x07the good \x1b[2Jfilm\x9b31m \u202egood\x00 \x7f\rbad"
# (the words of explain: split at white space, which \\r is)
ESCAPED = ("\\x1b]0;PWNED\\x07the", "\\x1b[2Jfilm\\x9b31m", "\\u202egood\\x00", "\\x7f")


def _no_control_characters(out: str) -> None:
    assert not any(c in out for c in "\x00\x07\x1b\x7f\x9b\r\u202e"), repr(out)


def test_predict_escapes_control_characters_on_the_terminal(checkpoint, capsys):
    assert predict_main(["--checkpoint", str(checkpoint), TERMINAL_ATTACK, "é ü don't, a plain review"]) == 0
    out = capsys.readouterr().out
    _no_control_characters(out)
    assert "\\x1b]0;PWNED\\x07the good \\x1b[2Jfilm" in out
    assert out.splitlines()[1].endswith("é ü don't, a plain review"), "normal text stays as it is"
    assert predict_main(["--checkpoint", str(checkpoint), "--json", TERMINAL_ATTACK]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == TERMINAL_ATTACK, "--json keeps the text whole: JSON escapes it"


def test_explain_escapes_control_characters_in_words_and_labels(model, tmp_path, capsys):
    pytest.importorskip("captum")
    forged = save_checkpoint(tmp_path / "best.pt", _state(model, data={"max_len": 40, "encoding": "bucketed",
                                                                        "classes": ["\x1b[2Jneg", "pos\x07"]}))
    assert explain_main(["--checkpoint", str(forged), TERMINAL_ATTACK, "--steps", "4"]) == 0
    out = capsys.readouterr().out
    _no_control_characters(out)
    words = out.splitlines()[1]
    assert all(w in words for w in ESCAPED) and "pos\\x07" in out.splitlines()[0]
    assert explain_main(["--checkpoint", str(forged), TERMINAL_ATTACK, "--steps", "4", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == TERMINAL_ATTACK and row["label"] in ("\x1b[2Jneg", "pos\x07")
