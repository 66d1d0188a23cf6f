"""rnnsent.inference.evaluate.predict: batches by length, answers in input order, each row's result its own (within
float rounding; bit for bit when the batches are the same: docs/reproducibility.md)."""
import json
from pathlib import Path

import pytest

from rnnsent.inference.loading import LoadedModel, load_checkpoint
from rnnsent.inference.evaluate import predict

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "imdb" / "reviews.json"
# A row's probability in a batch of other rows against its own forward: MKL rounds a row differently by how many rows
# share the matrix product and by its place among them, so they agree to float rounding only. The largest difference
# over these texts and the released models was 3.6e-7 (AMD EPYC, in the default environment, with
# ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 and with ATEN_CPU_CAPABILITY=default); a row that saw its neighbours' words
# or padding would be off by far more than this.
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def texts():
    reviews = [r["t"] for r in json.loads(FIXTURE.read_text())]
    return reviews + [t[: len(t) // 5] for t in reviews] + ["", "Fine."]  # many lengths, in no order


def widths_seen(model):
    seen = []
    handle = model.embedding.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    return seen, handle


def same_but_rounding(got, want):
    """The same Predictions but for the probabilities' float rounding (ROUNDING)."""
    assert [(p.label, p.tokens, p.words, p.unknown, p.note) for p in got] == [
        (p.label, p.tokens, p.words, p.unknown, p.note) for p in want]
    for a, b in zip(got, want):
        assert a.probabilities.keys() == b.probabilities.keys()
        assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=ROUNDING, rel=0)
    return True


@pytest.mark.parametrize("name", ["gru", "lstm", "rnn"])
def test_sorted_batches_give_each_text_its_own_answer_to_float_rounding(texts, name):
    loaded = load_checkpoint(name)
    args = (loaded.model, texts, loaded.vocab, loaded.max_len, loaded.encoding)
    alone = [predict(loaded.model, [t], *args[2:])[0] for t in texts]
    for batch_size in (2, 3, 4, 7, 64):
        assert same_but_rounding(predict(*args, batch_size=batch_size), alone)
        assert same_but_rounding(predict(*args, batch_size=batch_size, sort_by_length=False), alone)


@pytest.mark.parametrize("name", ["gru", "lstm", "rnn"])
def test_the_same_batches_give_the_same_bits(texts, name):
    loaded = load_checkpoint(name)
    args = (loaded.model, texts, loaded.vocab, loaded.max_len, loaded.encoding)
    alone = [predict(loaded.model, [t], *args[2:])[0] for t in texts]
    assert predict(*args, batch_size=1) == alone  # Prediction equality: probabilities compared exactly
    assert predict(*args, batch_size=7) == predict(*args, batch_size=7)
    in_order = predict(*args, batch_size=7, sort_by_length=False)
    for start in (0, 7, 14):  # a batch of the call, alone: its rows, in their places
        alone_batch = predict(loaded.model, texts[start: start + 7], *args[2:], batch_size=7, sort_by_length=False)
        assert alone_batch == in_order[start: start + 7]


def test_batches_are_cut_by_length_and_answers_come_back_in_input_order(texts):
    loaded = load_checkpoint("gru")
    loaded.model.impl = "torch"  # the stock path calls the embedding module, whose hook sees each batch
    seen, handle = widths_seen(loaded.model)
    try:
        out = predict(loaded.model, texts, loaded.vocab, loaded.max_len, loaded.encoding, batch_size=8)
    finally:
        handle.remove()
        loaded.model.impl = "auto"
    lengths = sorted((p.tokens for p in out), reverse=True)
    assert seen == [lengths[k] for k in range(0, len(lengths), 8)]  # each batch as wide as its longest text
    assert [p.tokens for p in out] == [predict(loaded.model, [t], loaded.vocab, loaded.max_len, "bucketed")[0].tokens
                                       for t in texts]


def test_pre_padded_texts_keep_their_width(texts):
    loaded = load_checkpoint("gru")
    keras = LoadedModel(loaded.model, loaded.vocab, 300, "keras", loaded.state)
    loaded.model.impl = "torch"
    seen, handle = widths_seen(loaded.model)
    try:
        keras.predict(texts, batch_size=8)
    finally:
        handle.remove()
        loaded.model.impl = "auto"
    assert set(seen) == {300}


def test_groups_choose_the_forwards_and_every_text_keeps_its_answer(texts):
    loaded = load_checkpoint("gru")
    seen = []

    def pairs(steps):  # in input order, two at a time: any cut must give each text its own answer
        seen.append(list(steps))
        return [list(range(i, min(i + 2, len(steps)))) for i in range(0, len(steps), 2)]

    out, ref = loaded.predict(texts, groups=pairs), loaded.predict(texts)
    assert same_but_rounding(out, ref)  # a forward over other rows rounds otherwise: the same answers to rounding
    assert seen == [[p.tokens for p in out]]  # each text's time steps, tokenized once
    with pytest.raises(ValueError, match="every text in exactly one forward"):
        loaded.predict(texts, groups=lambda steps: [list(range(len(steps) - 1))])
