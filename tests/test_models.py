"""SentimentRNN on its own: Keras' parameter counts, padding behaviour, summary, Keras-style init."""
import copy

import numpy as np
import pytest
import torch

from rnnsent.config import CELLS, canonical_cell
from rnnsent.model.sentiment import KERAS_CELL_NAMES, KERAS_GATE_ORDER, SentimentRNN, count_parameters, permute_gates

# Keras' model.summary() for Embedding(5000, 32) -> cell(100) -> Dense(1).
KERAS_COUNTS = {"lstm": (160_000, 53_200, 101), "gru": (160_000, 40_200, 101), "rnn": (160_000, 13_300, 101)}
KERAS_TOTALS = {"lstm": 213_301, "gru": 200_301, "rnn": 173_401}


def keras_layout(model, w):
    """A stacked PyTorch weight (G*H, in) or bias back in Keras' gate order."""
    order = KERAS_GATE_ORDER[model.cell]
    return permute_gates(w.detach(), tuple(order.index(k) for k in range(len(order))))


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_counts_are_keras(cell):
    model = SentimentRNN(cell)
    counts = tuple(count_parameters(m) for m in (model.embedding, model.rnn, model.fc))
    assert counts == KERAS_COUNTS[cell]
    assert count_parameters(model) == KERAS_TOTALS[cell] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_holds_exactly_the_keras_weights(cell):
    model = SentimentRNN(cell, vocab_size=20, embed_dim=4, hidden_size=3)
    keys = {"embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "fc.weight", "fc.bias"}
    if cell == "gru":
        keys.add("rnn.bias_hh_l0")  # Keras' GRU (reset_after=True) has a recurrent bias too
    assert set(model.state_dict()) == keys
    other = SentimentRNN(cell, vocab_size=20, embed_dim=4, hidden_size=3)
    other.load_state_dict(model.state_dict())  # strict: the zero bias buffer is not expected
    x = torch.randint(0, 20, (2, 5))
    torch.testing.assert_close(other(x), model(x))


def test_cell_names_and_unknown_cells():
    assert [canonical_cell(n) for n in ("LSTM", "gru", "SimpleRNN", " rnn ")] == ["lstm", "gru", "rnn", "rnn"]
    assert SentimentRNN("SimpleRNN", vocab_size=10, embed_dim=2, hidden_size=2).cell == "rnn"
    with pytest.raises(ValueError, match="unknown cell 'transformer': choose one of lstm, gru, rnn"):
        SentimentRNN("transformer")
    for bad in (dict(vocab_size=0), dict(hidden_size=2.5), dict(embed_dropout=1.0), dict(init="xavier")):
        with pytest.raises(ValueError):
            SentimentRNN("gru", **bad)


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_ignore_right_padding(cell):
    torch.manual_seed(0)
    model = SentimentRNN(cell, vocab_size=30, embed_dim=6, hidden_size=5).eval()
    rows = [torch.randint(1, 30, (n,)) for n in (7, 3, 1)]
    padded = torch.zeros(3, 9, dtype=torch.long)  # right-padded with 0 up to 9 steps
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        batched = model(padded, lengths)  # (3,)
        alone = torch.stack([model(row.view(1, -1))[0] for row in rows])  # each sequence without padding
        full = model(padded)  # no lengths: the last column's state, padding included
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)
    assert batched.shape == (3,)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, torch.full((3,), 9)), full)  # full lengths = pre-padded path


@pytest.mark.parametrize("cell", CELLS)
def test_summary_reads_like_keras(cell):
    text = SentimentRNN(cell).summary()
    emb, rnn, dense = KERAS_COUNTS[cell]
    assert f'Model: "sentiment_{cell}"' in text
    assert "embedding (Embedding)" in text and "(None, 500, 32)" in text and f"{emb:,}" in text
    assert f"{cell} ({KERAS_CELL_NAMES[cell]})" in text and "(None, 100)" in text and f"{rnn:,}" in text
    assert "dense (Dense)" in text and "(None, 1)" in text
    assert f"Total params: {KERAS_TOTALS[cell]:,}" in text and f"Trainable params: {KERAS_TOTALS[cell]:,}" in text
    assert "Non-trainable params: 0" in text
    assert "(None, None, 32)" in SentimentRNN(cell).summary(time_steps=None)


@pytest.mark.parametrize("cell", CELLS)
def test_keras_init(cell):
    torch.manual_seed(0)
    model = SentimentRNN(cell, vocab_size=5000, embed_dim=32, hidden_size=100, init="keras")
    g, h = model.gates, 100
    emb = model.embedding.weight.detach()
    assert emb.abs().max() <= 0.05 and abs(emb.std().item() - 0.05 / np.sqrt(3)) < 1e-3  # uniform(-0.05, 0.05)
    kernel = keras_layout(model, model.rnn.weight_ih_l0).t()  # (E, G*H), Keras layout
    limit = np.sqrt(6 / (32 + g * h))
    assert kernel.abs().max() <= limit and abs(kernel.std().item() / (limit / np.sqrt(3)) - 1) < 0.05
    recurrent = keras_layout(model, model.rnn.weight_hh_l0).t()  # (H, G*H): orthonormal rows
    torch.testing.assert_close(recurrent @ recurrent.t(), torch.eye(h), rtol=0, atol=1e-5)
    bias = keras_layout(model, model.rnn.bias_ih_l0)
    expected = torch.zeros(g * h)
    if cell == "lstm":
        expected[h: 2 * h] = 1.0  # unit_forget_bias: Keras blocks are i, f, c, o
    assert torch.equal(bias, expected)
    assert torch.equal(model.rnn.bias_hh_l0, torch.zeros(g * h))
    assert model.fc.weight.abs().max() <= np.sqrt(6 / 101) and torch.equal(model.fc.bias, torch.zeros(1))


def test_gru_gate_order_is_keras_z_r_h():
    # Keras' update gate z is block 0 in Keras and block 1 in PyTorch (r, z, n).
    w = torch.arange(6.0)  # 3 gates of 2 units, in Keras order z z r r h h
    assert permute_gates(w, KERAS_GATE_ORDER["gru"]).tolist() == [2, 3, 0, 1, 4, 5]


def test_torch_init_keeps_the_single_keras_bias():
    model = SentimentRNN("lstm", vocab_size=20, embed_dim=4, hidden_size=3, init="torch")
    assert torch.equal(model.rnn.bias_hh_l0, torch.zeros(12))
    assert count_parameters(model) == 20 * 4 + 4 * (3 * (4 + 3) + 3) + 4


@pytest.mark.parametrize("cell", CELLS)
def test_runs_and_trains_on_cpu(cell):
    model = SentimentRNN(cell, vocab_size=20, embed_dim=4, hidden_size=3, embed_dropout=0.1, output_dropout=0.1)
    model = copy.deepcopy(model).to("cpu")
    x = torch.randint(0, 20, (4, 6))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.ones(4))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu"
    double = SentimentRNN(cell, vocab_size=20, embed_dim=4, hidden_size=3).double()
    assert double(x).dtype == torch.float64  # the zero bias buffer follows the dtype
    assert SentimentRNN(**model.config()).config() == model.config()


def test_word_dropout_masks_words_in_training_only():
    torch.manual_seed(0)
    m = SentimentRNN("gru", vocab_size=50, embed_dim=4, hidden_size=3, word_dropout=0.5)
    seen = []
    m.embedding.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    tokens = torch.tensor([[0, 0, 1, 7, 8, 9, 10, 11, 12, 13]] * 20)  # pre-padded: pad, start, words
    m.train()
    m(tokens)
    fed = seen[-1]
    assert torch.equal(fed[:, :3], tokens[:, :3]), "padding and the start token are never dropped"
    dropped = (fed[:, 3:] == 2).float().mean().item()
    assert 0.35 < dropped < 0.65 and set(fed[:, 3:].unique().tolist()) <= {2, 7, 8, 9, 10, 11, 12, 13}
    m.eval()
    m(tokens)
    assert torch.equal(seen[-1], tokens), "no word dropout at evaluation"
    assert SentimentRNN(**m.config()).word_dropout == 0.5
    with pytest.raises(ValueError, match="word_dropout must be in"):
        SentimentRNN("gru", word_dropout=1.0)


# ----------------------------------------------------------------------------- stacked and bidirectional

STACKS = [(1, True), (2, False), (2, True), (3, True)]  # (num_layers, bidirectional)


def _right_padded(vocab: int, lengths, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), steps, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(1, vocab, (n,), generator=g)
    return tokens, torch.tensor(lengths)


@pytest.mark.parametrize("impl", ["torch", "auto"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, bidirectional", STACKS)
def test_stacked_and_bidirectional_ignore_right_padding(cell, layers, bidirectional, impl):
    """With lengths the backward direction starts at each row's last real token: padding changes nothing,
    neither in what the head sees nor in the sequence (zeros past each row's length)."""
    torch.manual_seed(0)
    model = SentimentRNN(cell, vocab_size=30, embed_dim=6, hidden_size=5, num_layers=layers,
                         bidirectional=bidirectional, impl=impl).eval()
    padded, lengths = _right_padded(30, [7, 3, 1, 9], 9)
    with torch.no_grad():
        feats, seq, logits = model.features(padded, lengths), model.sequence(padded, lengths), model(padded, lengths)
        dirs = 2 if bidirectional else 1
        assert feats.shape == (4, 5 * dirs) and seq.shape == (4, 9, 5 * dirs) and logits.shape == (4,)
        for i, n in enumerate(lengths.tolist()):
            row = padded[i: i + 1, :n]  # the review alone, no padding: pre-padded and right-padded agree
            torch.testing.assert_close(feats[i], model.features(row)[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(seq[i, :n], model.sequence(row)[0], rtol=0, atol=1e-6)
            assert torch.equal(seq[i, n:], torch.zeros_like(seq[i, n:]))
            torch.testing.assert_close(feats[i, :5], seq[i, n - 1, :5])  # forward: after the last real token
            if bidirectional:
                torch.testing.assert_close(feats[i, 5:], seq[i, 0, 5:])  # backward: ends at the first token
        torch.testing.assert_close(logits, model.fc(feats).squeeze(-1))


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_without_lengths_runs_both_directions_over_every_column(cell):
    """Pre-padded input, as Keras feeds it: the backward direction reads the padding too (Keras without a mask),
    so it is PyTorch's layer over the whole batch, backward final state at column 0."""
    torch.manual_seed(0)
    model = SentimentRNN(cell, vocab_size=30, embed_dim=6, hidden_size=5, num_layers=2, bidirectional=True).eval()
    tokens = torch.randint(0, 30, (3, 8))
    with torch.no_grad():
        out, _ = model.rnn(model.embedding(tokens))  # (B, T, 2H)
        torch.testing.assert_close(model.sequence(tokens), out)
        torch.testing.assert_close(model.features(tokens), torch.cat([out[:, -1, :5], out[:, 0, 5:]], dim=-1))


@pytest.mark.parametrize("cell", CELLS)
def test_defaults_are_one_unidirectional_layer(cell):
    model = SentimentRNN(cell)
    assert (model.num_layers, model.bidirectional, model.layer_dropout) == (1, False, 0.0)
    assert (model.rnn.num_layers, model.rnn.bidirectional) == (1, False)
    assert set(model.config()) >= {"num_layers", "bidirectional", "layer_dropout"}
    old = {k: v for k, v in model.config().items() if k not in ("num_layers", "bidirectional", "layer_dropout")}
    assert SentimentRNN(**old).config() == model.config()  # an old checkpoint's config: the same model


@pytest.mark.parametrize("cell", CELLS)
def test_keras_init_for_every_layer_and_direction(cell):
    torch.manual_seed(0)
    h = 6
    model = SentimentRNN(cell, vocab_size=40, embed_dim=5, hidden_size=h, num_layers=2, bidirectional=True)
    g = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    names = [f"_l{k}{d}" for k in range(2) for d in ("", "_reverse")]
    kernels = []
    for sfx in names:
        recurrent = keras_layout(model, getattr(model.rnn, f"weight_hh{sfx}")).t()  # (H, G*H)
        if g > 1:
            torch.testing.assert_close(recurrent @ recurrent.t(), torch.eye(h), rtol=0, atol=1e-5)
        kernel = getattr(model.rnn, f"weight_ih{sfx}")
        fan_in = 5 if sfx.startswith("_l0") else 2 * h
        assert kernel.shape == (g * h, fan_in) and kernel.abs().max() <= (6 / (fan_in + g * h)) ** 0.5
        kernels.append(kernel)
        bias = keras_layout(model, getattr(model.rnn, f"bias_ih{sfx}"))
        want = torch.zeros(g * h)
        if cell == "lstm":
            want[h: 2 * h] = 1.0  # unit_forget_bias in every layer and direction
        assert torch.equal(bias, want)
        assert torch.equal(getattr(model.rnn, f"bias_hh{sfx}"), torch.zeros(g * h))
    assert not torch.equal(kernels[0], kernels[1])  # each direction initialised on its own
    assert model.fc.weight.shape == (1, 2 * h)


def test_layer_settings_are_checked_with_one_line_errors():
    for bad, message in [({"num_layers": 0}, "num_layers must be at least 1 and at most 100, got 0"),
                         ({"num_layers": 1.5}, "num_layers must be a whole number, got 1.5"),
                         ({"bidirectional": "yes"}, "bidirectional must be True or False"),
                         ({"layer_dropout": 1.0}, r"layer_dropout must be in \[0, 1\)")]:
        with pytest.raises(ValueError, match=message) as e:
            SentimentRNN("gru", **bad)
        assert len(str(e.value).splitlines()) == 1


def test_layer_dropout_acts_between_layers_in_training_only():
    torch.manual_seed(0)
    model = SentimentRNN("gru", vocab_size=30, embed_dim=6, hidden_size=5, num_layers=2, layer_dropout=0.5)
    assert model.rnn.dropout == 0.5
    tokens = torch.randint(1, 30, (4, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens), model(tokens))
        eval_out = model(tokens)
        model.train()
        assert not torch.allclose(model(tokens), eval_out)
    assert SentimentRNN("gru", layer_dropout=0.5).rnn.dropout == 0.0  # one layer: nothing between, no warning
