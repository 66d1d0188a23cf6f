"""rnnsent.inference.evaluate.predict: batches by length, answers in input order, each row's result its own (bit for
bit)."""
import json
from pathlib import Path

import pytest

from rnnsent.inference.loading import LoadedModel, load_checkpoint
from rnnsent.inference.evaluate import predict

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "imdb" / "reviews.json"


@pytest.fixture(scope="module")
def texts():
    reviews = [r["t"] for r in json.loads(FIXTURE.read_text())]
    return reviews + [t[: len(t) // 5] for t in reviews] + ["", "Fine."]  # many lengths, in no order


def widths_seen(model):
    seen = []
    handle = model.embedding.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    return seen, handle


@pytest.mark.parametrize("name", ["gru", "lstm", "rnn"])
def test_sorted_batches_give_each_texts_own_answer_bit_for_bit(texts, name):
    loaded = load_checkpoint(name)
    args = (loaded.model, texts, loaded.vocab, loaded.max_len, loaded.encoding)
    alone = [predict(loaded.model, [t], *args[2:])[0] for t in texts]
    assert predict(*args, batch_size=7) == alone  # Prediction equality: probabilities compared exactly
    assert predict(*args, batch_size=7, sort_by_length=False) == alone


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
    # (a forward over rows of other lengths may sum in another order: float rounding apart, the same answers)
    assert [(p.label, p.tokens, p.words) for p in out] == [(p.label, p.tokens, p.words) for p in ref]
    assert [p.probability for p in out] == pytest.approx([p.probability for p in ref], abs=1e-6)
    assert seen == [[p.tokens for p in out]]  # each text's time steps, tokenized once
    with pytest.raises(ValueError, match="every text in exactly one forward"):
        loaded.predict(texts, groups=lambda steps: [list(range(len(steps) - 1))])
