"""Keras interop checked against Keras itself: live Keras 3 models built here (torch backend, see
conftest.py) and small files written by real Keras 2 and Keras 3 (tools/make_keras_fixtures.py)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rnnsent.config import CELLS, KERAS_CELL_NAMES as KERAS_NAMES
from rnnsent.inference.keras_io import KerasFormatError, from_keras, keras_weights, save_keras, to_keras
from rnnsent.model.sentiment import SentimentRNN, count_parameters

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
TOL = 1e-5

# Keras 3 on numpy 2 warns about __array__ inside its own code; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def build_keras(keras, cell, vocab=50, embed=8, units=6, seed=0, middle=None, randomize=True):
    """Keras' Sequential Embedding -> cell -> Dense(1, sigmoid); random weights, biases included."""
    layers = middle if middle is not None else [getattr(keras.layers, KERAS_NAMES[cell])(units)]
    k = keras.Sequential([keras.Input(shape=(None,), dtype="int32"), keras.layers.Embedding(vocab, embed), *layers,
                          keras.layers.Dense(1, activation="sigmoid")])
    if randomize:
        rng = np.random.default_rng(seed)
        k.set_weights([rng.normal(0.0, 0.3, size=w.shape).astype("float32") for w in k.get_weights()])
    return k


def prepadded(vocab, batch=4, steps=500, seed=0):
    """Token ids pre-padded with zeros like keras.utils.pad_sequences, rows of different lengths."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, size=(batch, steps)).astype("int32")
    for row in range(batch):
        x[row, : rng.integers(0, steps - 1)] = 0
    return x


def torch_probs(model, x):
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x).long())).numpy()


def keras_probs(k, x):
    return np.asarray(k.predict(x, verbose=0)).reshape(-1)


def keras_logits(keras, k, x):
    """Keras' Dense input run through the Dense weights by hand: the logit before the sigmoid."""
    rnn = next(layer for layer in k.layers if type(layer).__name__ in KERAS_NAMES.values())
    dense = k.layers[-1]
    h = np.asarray(keras.Model(k.inputs, rnn.output).predict(x, verbose=0))  # (B, H)
    kernel, bias = dense.get_weights()
    return (h.astype(np.float64) @ kernel + bias).reshape(-1)


# ----------------------------------------------------------------------------- live Keras 3 models


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_counts_match_keras_layer_by_layer(keras, cell):
    k = build_keras(keras, cell, vocab=5000, embed=32, units=100, randomize=False)
    model = SentimentRNN(cell, vocab_size=5000, embed_dim=32, hidden_size=100)
    ours = [count_parameters(m) for m in (model.embedding, model.rnn, model.fc)]
    assert ours == [layer.count_params() for layer in k.layers]
    assert sum(ours) == k.count_params() == count_parameters(model)


@pytest.mark.parametrize("cell", CELLS)
def test_from_keras_matches_keras_predictions(keras, cell):
    k = build_keras(keras, cell, seed=1)
    model = from_keras(k)
    assert (model.cell, model.vocab_size, model.embed_dim, model.hidden_size) == (cell, 50, 8, 6)
    x = prepadded(50)
    assert np.abs(torch_probs(model, x) - keras_probs(k, x)).max() <= TOL
    with torch.no_grad():
        logits = model(torch.from_numpy(x).long()).double().numpy()
    assert np.abs(logits - keras_logits(keras, k, x)).max() <= TOL


@pytest.mark.parametrize("cell", CELLS)
def test_from_keras_full_size(keras, cell):
    # The exercise's size: 5000 words, 32-d embeddings, 100 units, 500 pre-padded steps.
    k = build_keras(keras, cell, vocab=5000, embed=32, units=100, seed=2)
    for w in k.layers[1].weights:  # keep 100 units of N(0, 0.3) from saturating every gate
        w.assign(w.numpy() * 0.3)
    model = from_keras(k)
    x = prepadded(5000, seed=3)
    diff = np.abs(torch_probs(model, x) - keras_probs(k, x)).max()
    assert diff <= TOL, diff


@pytest.mark.parametrize("cell", CELLS)
def test_to_keras_round_trip(keras, cell):
    k = build_keras(keras, cell, seed=4)
    back = to_keras(from_keras(k))
    for a, b in zip(k.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = prepadded(50, steps=40, seed=5)
    assert np.abs(keras_probs(back, x) - keras_probs(k, x)).max() <= TOL
    # And from rnnsent's side: a fresh PyTorch model survives torch -> Keras -> torch unchanged.
    model = SentimentRNN(cell, vocab_size=30, embed_dim=5, hidden_size=7)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    again = from_keras(to_keras(model))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    xs = prepadded(30, steps=40, seed=6)
    assert np.abs(keras_probs(to_keras(model), xs) - torch_probs(model, xs)).max() <= TOL


@pytest.mark.parametrize("cell", CELLS)
def test_from_keras_reads_files_saved_by_keras3(keras, cell, tmp_path):
    k = build_keras(keras, cell, seed=7)
    x = prepadded(50, steps=60, seed=8)
    expected = keras_probs(k, x)
    for name in ("m.keras", "m.h5"):
        k.save(tmp_path / name)
        assert np.abs(torch_probs(from_keras(tmp_path / name), x) - expected).max() <= TOL


def test_save_keras_writes_a_file_keras_loads(keras, tmp_path):
    model = SentimentRNN("gru", vocab_size=30, embed_dim=5, hidden_size=7)
    save_keras(model, tmp_path / "m.keras")
    x = prepadded(30, steps=20)
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert np.abs(keras_probs(loaded, x) - torch_probs(model, x)).max() <= TOL
    with pytest.raises(ValueError, match=".keras or .h5"):
        save_keras(model, tmp_path / "m.pt")


def test_dropout_layers_become_dropout_rates(keras):
    L = keras.layers
    k = build_keras(keras, "lstm", middle=[L.Dropout(0.25), L.LSTM(6), L.Dropout(0.5)], seed=9)
    model = from_keras(k)
    assert (model.embed_dropout, model.output_dropout) == (0.25, 0.5)
    x = prepadded(50, steps=30)
    assert np.abs(torch_probs(model, x) - keras_probs(k, x)).max() <= TOL
    assert [type(layer).__name__ for layer in to_keras(model).layers] == ["Embedding", "Dropout", "LSTM", "Dropout",
                                                                          "Dense"]
    assert from_keras(k, embed_dropout=0.0).embed_dropout == 0.0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda L: [L.Bidirectional(L.GRU(6), merge_mode="sum")], "merge_mode='sum'.*concat"),
        (lambda L: [L.Bidirectional(L.GRU(6), merge_mode="mul")], "merge_mode='mul'"),
        (lambda L: [L.GRU(6, return_sequences=True), L.LSTM(6)], "different kinds or sizes"),
        (lambda L: [L.GRU(6, return_sequences=True), L.GRU(5)], "different kinds or sizes"),
        (lambda L: [L.Bidirectional(L.GRU(6, return_sequences=True)), L.GRU(6)], "different kinds or sizes"),
        (lambda L: [L.GRU(6, return_sequences=True), L.Dropout(0.1), L.GRU(6, return_sequences=True), L.Dropout(0.2),
                    L.GRU(6)], "different rates"),
        (lambda L: [L.TimeDistributed(L.Dense(4)), L.GRU(6)], "TimeDistributed wrapper"),
        (lambda L: [L.GRU(6, reset_after=False)], "reset_after=False"),
        (lambda L: [L.LSTM(6, return_sequences=True), L.GlobalMaxPooling1D()], "return_sequences=True"),
        (lambda L: [L.LSTM(6, go_backwards=True)], "go_backwards=True"),
        (lambda L: [L.SimpleRNN(6, activation="relu")], "activation='relu'"),
        (lambda L: [L.GRU(6), L.Dense(4)], "extra layer"),
        (lambda L: [L.Conv1D(8, 3, padding="same"), L.GRU(6)], "extra layer .conv1d. \\(Conv1D\\)"),
    ],
)
def test_refuses_other_architectures(keras, make, message):
    k = build_keras(keras, "gru", middle=make(keras.layers), randomize=False)
    with pytest.raises(KerasFormatError, match=message):
        from_keras(k)


def test_refuses_other_dense_heads_and_masking(keras):
    L = keras.layers
    seq = lambda *layers: keras.Sequential([keras.Input(shape=(None,), dtype="int32"), *layers])  # noqa: E731
    cases = [
        (seq(L.Embedding(50, 8), L.GRU(6), L.Dense(2, activation="sigmoid")), "units=2"),
        (seq(L.Embedding(50, 8), L.GRU(6), L.Dense(1)), "activation='linear'"),
        (seq(L.Embedding(50, 8), L.GRU(6), L.Dense(1, activation="softmax")), "activation='softmax'"),
        (seq(L.Embedding(50, 8, mask_zero=True), L.GRU(6), L.Dense(1, activation="sigmoid")), "mask_zero=True"),
        (seq(L.Embedding(50, 8), L.GRU(6)), "expected Dense at position 3"),
    ]
    for k, message in cases:
        with pytest.raises(KerasFormatError, match=message):
            from_keras(k)


def test_overrides_must_agree_with_the_model(keras):
    k = build_keras(keras, "gru", randomize=False)
    with pytest.raises(KerasFormatError, match="vocab_size=5000 was asked for but the model has vocab_size=50"):
        from_keras(k, vocab_size=5000)
    with pytest.raises(KerasFormatError, match="recurrent layer is GRU"):
        from_keras(k, cell="lstm")
    with pytest.raises(ValueError, match="choose one of lstm, gru, rnn"):
        from_keras(k, cell="transformer")
    with pytest.raises(TypeError, match="units"):
        from_keras(k, units=6)
    assert from_keras(k, cell="GRU", hidden_size=6).hidden_size == 6


@pytest.mark.parametrize("cell", CELLS)
def test_keras_init_statistics_match_a_fresh_keras_model(keras, cell):
    """init="keras" draws from Keras' distributions: compare with a fresh Keras 3 model's weights."""
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    k = build_keras(keras, cell, vocab=5000, embed=32, units=100, randomize=False)
    theirs = [layer.get_weights() for layer in k.layers]
    w = keras_weights(SentimentRNN(cell, vocab_size=5000, embed_dim=32, hidden_size=100, init="keras"))
    ours = [w["embedding"], w["rnn"], w["dense"]]
    for layer_ours, layer_theirs in zip(ours, theirs):
        for a, b in zip(layer_ours, layer_theirs):
            assert a.shape == b.shape and a.dtype == b.dtype
    (emb,), (emb_k,) = ours[0], theirs[0]
    assert abs(emb.std() / emb_k.std() - 1) < 0.02 and np.abs(emb).max() <= 0.05
    kernel, recurrent, bias = ours[1]
    kernel_k, recurrent_k, bias_k = theirs[1]
    limit = np.sqrt(6 / (kernel.shape[0] + kernel.shape[1]))  # glorot_uniform over the whole (E, G*H) kernel
    assert np.abs(kernel).max() <= limit and np.abs(kernel_k).max() <= limit
    assert abs(kernel.std() / kernel_k.std() - 1) < 0.06
    assert abs(recurrent.std() / recurrent_k.std() - 1) < 0.02
    for r in (recurrent, recurrent_k):  # (H, G*H) with orthonormal rows in Keras' layout
        np.testing.assert_allclose(r @ r.T, np.eye(100), atol=1e-5)
    np.testing.assert_array_equal(bias, bias_k)  # zeros, and LSTM's forget-gate ones
    dense, dense_bias = ours[2]
    dense_k, dense_bias_k = theirs[2]
    limit = np.sqrt(6 / 101)  # glorot_uniform for (100, 1)
    assert np.abs(dense).max() <= limit and np.abs(dense_k).max() <= limit
    assert abs(dense.std() / dense_k.std() - 1) < 0.4  # 100 draws each
    np.testing.assert_array_equal(dense_bias, dense_bias_k)


# ----------------------------------------------------------------------------- committed fixture files


FIXTURE_MODELS = [(v, cell, ext) for v in (2, 3) for cell in CELLS for ext in ("h5", "keras")]


@pytest.mark.parametrize("version, cell, ext", FIXTURE_MODELS)
def test_fixture_files_reproduce_keras_predictions(version, cell, ext):
    ref = np.load(FIXTURES / f"k{version}_{cell}.npz")
    assert str(ref["keras_version"]).startswith(f"{version}.")
    model = from_keras(FIXTURES / f"k{version}_{cell}.{ext}")
    assert (model.cell, model.vocab_size, model.embed_dim, model.hidden_size) == (cell, 20, 4, 3)
    assert np.abs(torch_probs(model, ref["x"]) - ref["y"]).max() <= TOL


def test_keras2_file_without_input_layer():
    # Keras 2 tutorials' form, as in the exercise: Embedding(..., input_length=T) and no Input layer.
    ref = np.load(FIXTURES / "k2_gru_input_length.npz")
    model = from_keras(FIXTURES / "k2_gru_input_length.h5")
    assert np.abs(torch_probs(model, ref["x"]) - ref["y"]).max() <= TOL


@pytest.mark.parametrize("version", (2, 3))
@pytest.mark.parametrize(
    "name, message",
    [("gru_reset_before", "reset_after=False")],
)
def test_fixture_files_refused(version, name, message):
    with pytest.raises(KerasFormatError, match=message):
        from_keras(FIXTURES / f"k{version}_{name}.h5")


def test_reading_files_needs_neither_keras_nor_tensorflow():
    code = (
        "import sys; from rnnsent.inference.keras_io import from_keras; "
        f"m = from_keras({str(FIXTURES / 'k2_gru.h5')!r}); m = from_keras({str(FIXTURES / 'k3_lstm.keras')!r}); "
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, 'keras was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# A process as a new user runs it: no KERAS_BACKEND, Keras' home (KERAS_HOME, else ~/.keras) at `home`. Exports a
# fixture model to Keras, checks its predictions there, and says which backend Keras took.
TO_KERAS = f"""
import numpy as np, torch, rnnsent
model = rnnsent.from_keras({str(FIXTURES / 'k3_gru.keras')!r})
x = np.array([[3, 5, 7, 11, 2, 1]])
with torch.no_grad():
    want = torch.sigmoid(model.eval()(torch.from_numpy(x))).numpy()
k = rnnsent.to_keras(model)
import keras
assert np.abs(k.predict(x, verbose=0).reshape(-1) - want.reshape(-1)).max() <= {TOL}
print(keras.backend.backend())
"""


def to_keras_in(home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", TO_KERAS], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[1], env=dict(env, KERAS_HOME=str(home)))
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed here")
def test_to_keras_takes_the_torch_backend_where_keras_json_names_one_not_installed(tmp_path):
    # Keras' first run writes a keras.json naming TensorFlow whatever backend it ran on: without TensorFlow, the next
    # process found it and died with ModuleNotFoundError: tensorflow.
    first = to_keras_in(tmp_path)
    assert first.stdout.strip() == "torch" and "keras.json" not in first.stderr  # nothing overruled
    assert json.loads((tmp_path / "keras.json").read_text())["backend"] == "tensorflow"
    again = to_keras_in(tmp_path)
    assert again.stdout.strip() == "torch"
    assert (f"rnnsent: {tmp_path / 'keras.json'} names Keras' 'tensorflow' backend, which is not installed here: "
            "using Keras' torch backend (set KERAS_BACKEND to choose another)") in again.stderr


def _edit_config(path, edit):
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit([layer["config"] for layer in config["config"]["layers"]])
        f.attrs["model_config"] = json.dumps(config)


def test_weights_of_other_sizes_than_the_config_says(tmp_path):
    path = tmp_path / "m.h5"
    shutil.copy(FIXTURES / "k2_gru.h5", path)
    _edit_config(path, lambda layers: layers[2].update(units=5))  # InputLayer, Embedding, GRU, Dense
    with pytest.raises(KerasFormatError, match="other sizes than the file says"):
        from_keras(path)
    shutil.copy(FIXTURES / "k3_lstm.h5", path)
    _edit_config(path, lambda layers: layers[1].update(input_dim=21))
    with pytest.raises(KerasFormatError, match=r"embeddings has shape \(20, 4\) .* says \(21, 4\)"):
        from_keras(path)


def test_missing_and_foreign_files_give_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Keras model file"):
        from_keras(tmp_path / "nothing.h5")
    text = tmp_path / "x.h5"
    text.write_text("this is not HDF5\n")
    zipped = tmp_path / "x.keras"
    shutil.make_archive(str(tmp_path / "x"), "zip", root_dir=tmp_path, base_dir="x.h5")
    (tmp_path / "x.zip").rename(zipped)
    weights_only = tmp_path / "w.h5"
    with h5py.File(weights_only, "w") as f:
        f.attrs["layer_names"] = [b"gru"]
    cases = [(text, "neither an HDF5"), (zipped, "not a Keras .keras file"), (weights_only, "weights-only"),
             (tmp_path, "is a directory")]
    for path, message in cases:
        with pytest.raises(KerasFormatError, match=message) as info:
            from_keras(path)
        assert "\n" not in str(info.value)


def _edit_keras_zip(src, dst, edit_text):
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, edit_text(data.decode()).encode() if item.filename == "config.json" else data)


@pytest.mark.parametrize("edit", [
    lambda t: t[: len(t) // 2],  # cut short: not JSON
    lambda t: json.dumps({"class_name": "Sequential", "config": {"layers": ["gru", "dense"]}}),  # entries not dicts
    lambda t: json.dumps({"class_name": "Sequential", "config": {"layers": [{"class_name": "Embedding"}]}}),
    lambda t: t.replace('"input_dim"', '"input_dimension"'),  # a field missing
    lambda t: t.replace('"units": 1', '"units": [1]').replace('"output_dim": 4', '"output_dim": "four"'),
    lambda t: json.dumps([1, 2, 3]),
], ids=["truncated-json", "string-layers", "no-config", "missing-field", "wrong-types", "a-list"])
def test_malformed_keras_configs_are_keras_format_errors(tmp_path, edit):
    path = tmp_path / "m.keras"
    _edit_keras_zip(FIXTURES / "k3_gru.keras", path, edit)
    with pytest.raises(KerasFormatError) as info:
        from_keras(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("entry", [{"registered_name": "Custom>GRU"}, {"registered_name": "mylib>GRU"},
                                   {"module": "mylib.layers", "registered_name": "GRU"}])
def test_custom_layer_classes_are_refused_like_lambda_layers(tmp_path, entry):
    path = tmp_path / "m.keras"

    def edit(text):
        config = json.loads(text)
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "GRU":
                layer.update(entry)
        return json.dumps(config)

    _edit_keras_zip(FIXTURES / "k3_gru.keras", path, edit)
    with pytest.raises(KerasFormatError, match="is a custom class"):
        from_keras(path)


def _h5_with_first_dense_weight(tmp_path, **dataset) -> Path:
    """k2_gru.h5 with the dense layer's first listed weight (its kernel) replaced by h5py.create_dataset(**dataset)."""
    path = tmp_path / "m.h5"
    shutil.copy(FIXTURES / "k2_gru.h5", path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights"]["dense_1"]
        name = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
        del group[name]
        group.create_dataset(name, dtype="f4", **dataset)
    return path


def _shapes_read(monkeypatch) -> list:
    """The shapes of every h5py dataset that is read from now on."""
    reads = []
    original = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: reads.append(self.shape) or original(self, key))
    return reads


def test_h5_external_storage_is_refused(tmp_path):
    """A dataset stored in another file would copy that file into the weights: refused, never read."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = _h5_with_first_dense_weight(tmp_path, shape=(1,), external=[(str(secret), 0, 4)])
    with pytest.raises(KerasFormatError, match="external"):
        from_keras(path)


def test_h5_shapes_are_checked_before_reading(tmp_path, monkeypatch):
    """A compressed dataset declaring a huge shape is refused from its declared shape, before it inflates."""
    # 8 GiB of zeros
    path = _h5_with_first_dense_weight(tmp_path, shape=(1 << 31,), compression="gzip", chunks=(1 << 20,))
    reads = _shapes_read(monkeypatch)
    with pytest.raises(KerasFormatError, match="declares shape"):
        from_keras(path)
    assert (1 << 31,) not in reads


def test_h5_shape_against_the_config_is_checked_before_reading(tmp_path, monkeypatch):
    """A weight whose declared shape differs from what the config implies is refused without being read."""
    path = _h5_with_first_dense_weight(tmp_path, shape=(12345,), compression="gzip")
    reads = _shapes_read(monkeypatch)
    with pytest.raises(KerasFormatError, match=r"dense_1/kernel has shape \(12345,\) but the config"):
        from_keras(path)
    assert (12345,) not in reads


@pytest.mark.parametrize(
    "member,bound", [("config.json", "MAX_CONFIG_BYTES"), ("model.weights.h5", "MAX_MEMBER_BYTES")]
)
def test_keras_zip_member_over_the_bound_is_refused_before_reading(tmp_path, monkeypatch, member, bound):
    import rnnsent.inference.keras_io as keras_io

    monkeypatch.setattr(keras_io, bound, 100)
    read = []
    monkeypatch.setattr(keras_io.zipfile.ZipFile, "read", lambda self, name, pwd=None: read.append(name))  # never whole
    path = FIXTURES / "k3_gru.keras"
    with pytest.raises(KerasFormatError, match=rf"^{path}:{member} declares [\d,]+ bytes, over the bound of 100;") as e:
        from_keras(path)
    assert len(str(e.value).splitlines()) == 1 and read == []


# ----------------------------------------------------------------------------- more than two classes: Dense(K, softmax)


def build_keras_multiclass(keras, cell, classes=4, vocab=50, embed=8, units=6, seed=0, randomize=True):
    k = keras.Sequential(
        [keras.Input(shape=(None,), dtype="int32"), keras.layers.Embedding(vocab, embed),
         getattr(keras.layers, KERAS_NAMES[cell])(units), keras.layers.Dense(classes, activation="softmax")]
    )
    if randomize:
        rng = np.random.default_rng(seed)
        k.set_weights([rng.normal(0.0, 0.3, size=w.shape).astype("float32") for w in k.get_weights()])
    return k


@pytest.mark.parametrize("cell", CELLS)
def test_multiclass_counts_predictions_and_loss_match_keras(keras, cell):
    from rnnsent.model import objective

    k = build_keras_multiclass(keras, cell, classes=5, vocab=5000, embed=32, units=100, randomize=False)
    model = SentimentRNN(cell, vocab_size=5000, embed_dim=32, hidden_size=100, num_classes=5)
    assert [count_parameters(m) for m in (model.embedding, model.rnn, model.fc)] == [
        layer.count_params() for layer in k.layers
    ]
    assert "(None, 5)" in model.summary()

    k = build_keras_multiclass(keras, cell, classes=4, seed=11)
    model = from_keras(k)
    assert model.num_classes == 4 and model.fc.out_features == 4
    x = prepadded(50, seed=12)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x).long())  # (B, 4)
    expected = np.asarray(k.predict(x, verbose=0))
    assert np.abs(objective.probabilities(logits).numpy() - expected).max() <= TOL
    # The training loss is Keras' sparse categorical cross-entropy of the same rows.
    y = np.array([0, 3, 1, 2])
    keras_loss = float(keras.losses.SparseCategoricalCrossentropy()(y, expected))
    ours = float(objective.loss(logits, torch.tensor(y, dtype=torch.float32)))
    assert abs(ours - keras_loss) <= 1e-5


@pytest.mark.parametrize("cell", CELLS)
def test_multiclass_round_trips_through_keras_and_files(keras, cell, tmp_path):
    k = build_keras_multiclass(keras, cell, classes=3, seed=13)
    back = to_keras(from_keras(k))
    assert back.layers[-1].get_config()["activation"] == "softmax"
    for a, b in zip(k.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = prepadded(50, steps=30, seed=14)
    k.save(tmp_path / "m.keras")
    model = from_keras(tmp_path / "m.keras")
    with torch.no_grad():
        probs = torch.softmax(model.eval()(torch.from_numpy(x).long()), -1).numpy()
    assert np.abs(probs - np.asarray(k.predict(x, verbose=0))).max() <= TOL
    with pytest.raises(KerasFormatError, match="num_classes=5 was asked for but the model has num_classes=3"):
        from_keras(k, num_classes=5)


def test_refuses_two_class_softmax_and_multiclass_sigmoid(keras):
    L = keras.layers
    seq = lambda *layers: keras.Sequential([keras.Input(shape=(None,), dtype="int32"), *layers])  # noqa: E731
    with pytest.raises(KerasFormatError, match="units=2"):
        from_keras(seq(L.Embedding(50, 8), L.GRU(6), L.Dense(2, activation="softmax")))
    with pytest.raises(KerasFormatError, match="units=4 and activation='sigmoid'"):
        from_keras(seq(L.Embedding(50, 8), L.GRU(6), L.Dense(4, activation="sigmoid")))


# ----------------------------------------------------------------------------- stacked and bidirectional layers

REVIEWS = Path(__file__).parent / "fixtures" / "imdb" / "reviews.json"


def real_reviews(vocab_size: int, rows: int = 8, max_len: int = 120) -> np.ndarray:
    """Real IMDB reviews encoded as Keras feeds them: [1] + ids, pre-padded and pre-truncated to max_len."""
    from rnnsent.data.text import Vocab, encode_keras, tokenize

    texts = [r["t"] for r in json.loads(REVIEWS.read_text())[:rows]]
    tokens = [tokenize(t) for t in texts]
    vocab = Vocab.build(tokens, vocab_size)
    x = encode_keras([vocab.encode(t) for t in tokens], [0.0] * rows, max_len).tokens
    return x.numpy().astype("int32")


def build_stack(keras, cell, layers, bidirectional, vocab=50, embed=8, units=6, dropout=None):
    L = keras.layers
    middle = []
    for k in range(layers):
        if k and dropout:
            middle.append(L.Dropout(dropout))
        rnn = getattr(L, KERAS_NAMES[cell])(units, return_sequences=k < layers - 1)
        middle.append(L.Bidirectional(rnn) if bidirectional else rnn)
    return build_keras(keras, cell, vocab=vocab, embed=embed, units=units, middle=middle)


def summary_counts(model) -> list[int]:
    rows = model.summary().splitlines()[4:-5]  # between the header's and the totals' rules
    return [int(row.split()[-1].replace(",", "")) for row in rows]


@pytest.mark.parametrize("cell", CELLS)
def test_stacked_and_bidirectional_parameter_counts_are_keras(keras, cell):
    for layers in (1, 2, 3):
        for bidirectional in (False, True):
            k = build_stack(keras, cell, layers, bidirectional, vocab=5000, embed=32, units=100)
            model = SentimentRNN(cell, vocab_size=5000, embed_dim=32, hidden_size=100, num_layers=layers,
                                 bidirectional=bidirectional)
            assert count_parameters(model) == k.count_params(), (layers, bidirectional)
            assert summary_counts(model) == [layer.count_params() for layer in k.layers], (layers, bidirectional)
            assert [
                name.split(" (")[-1].rstrip(")")
                for name in (r.split("  ")[0] for r in model.summary().splitlines()[4:-5])
            ][1:-1] == [f"Bidirectional({KERAS_NAMES[cell]}" if bidirectional else KERAS_NAMES[cell]] * layers


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, bidirectional", [(1, True), (2, False), (3, True)])
def test_stacked_and_bidirectional_models_match_keras(keras, cell, layers, bidirectional, tmp_path):
    k = build_stack(keras, cell, layers, bidirectional, dropout=0.25 if layers > 1 else None)
    x = real_reviews(50)
    want = keras_probs(k, x)
    model = from_keras(k)
    assert (model.num_layers, model.bidirectional, model.layer_dropout) == (layers, bidirectional,
                                                                            0.25 if layers > 1 else 0.0)
    assert np.abs(torch_probs(model, x) - want).max() <= TOL
    for suffix in (".keras", ".h5"):
        k.save(tmp_path / f"m{suffix}")
        assert np.abs(torch_probs(from_keras(tmp_path / f"m{suffix}"), x) - want).max() <= TOL
    back = to_keras(model)
    assert [type(layer).__name__ for layer in back.layers] == [type(layer).__name__ for layer in k.layers]
    assert np.abs(keras_probs(back, x) - want).max() <= TOL


@pytest.mark.parametrize("version", (2, 3))
@pytest.mark.parametrize("name, layers", [("bidirectional", ["Bidirectional(LSTM(3))"]),
                                          ("stacked", ["LSTM(3, return_sequences=True)", "LSTM(3)"])])
def test_stacked_and_bidirectional_files_of_keras_2_and_3(keras, version, name, layers):
    """Files written by real Keras 2 and 3: their arrays, in the file's weight_names order, set into the same
    model built in Keras here give the predictions rnnsent's import gives."""
    path = FIXTURES / f"k{version}_{name}.h5"
    L = keras.layers
    k = build_keras(keras, "lstm", vocab=20, embed=4, middle=[eval(m, {}, vars(L)) for m in layers], randomize=False)
    with h5py.File(path) as f:
        groups = f["model_weights"]
        arrays = {}
        for layer in groups:
            for n in groups[layer].attrs.get("weight_names", []):
                arrays.setdefault(layer, []).append(np.asarray(groups[layer][n]))
    order = [
        n
        for n in json.loads(h5py.File(path).attrs["model_config"])["config"]["layers"]
        if n["class_name"] != "InputLayer"
    ]
    k.set_weights([a for entry in order for a in arrays.get(entry["config"]["name"], [])])
    x = real_reviews(20, max_len=30)
    assert np.abs(torch_probs(from_keras(path), x) - keras_probs(k, x)).max() <= TOL


def test_keras_imdb_example_model_gives_keras_predictions(keras, tmp_path):
    """Keras' own IMDB example: Embedding(20000, 128) -> Bidirectional(LSTM(64, return_sequences=True)) ->
    Bidirectional(LSTM(64)) -> Dense(1, sigmoid), 2,757,761 parameters, saved by Keras and read back."""
    L = keras.layers
    k = keras.Sequential([keras.Input(shape=(None,), dtype="int32"), L.Embedding(20000, 128),
                          L.Bidirectional(L.LSTM(64, return_sequences=True)), L.Bidirectional(L.LSTM(64)),
                          L.Dense(1, activation="sigmoid")])
    rng = np.random.default_rng(5)
    k.set_weights([rng.normal(0.0, 0.3, size=w.shape).astype("float32") for w in k.get_weights()])
    assert k.count_params() == 2_757_761
    k.save(tmp_path / "bidirectional_lstm_imdb.keras")
    x = real_reviews(20000, rows=16, max_len=200)
    want = keras_probs(k, x)
    assert want.std() > 0.01  # predictions that differ per review, so equal ones mean something
    model = from_keras(tmp_path / "bidirectional_lstm_imdb.keras")
    assert count_parameters(model) == 2_757_761
    assert "bidirectional_1 (Bidirectional(LSTM))" in model.summary()
    assert np.abs(torch_probs(model, x) - want).max() <= TOL
    model.impl = "torch"
    assert np.abs(torch_probs(model, x) - want).max() <= TOL


def test_a_layer_rnnsent_cannot_map_is_named_with_what_is_supported(keras, tmp_path):
    k = build_keras(
        keras,
        "gru",
        middle=[keras.layers.GRU(6, return_sequences=True), keras.layers.Conv1D(4, 3, name="conv"),
                keras.layers.GRU(6)],
        randomize=False,
    )
    k.save(tmp_path / "conv.keras")
    with pytest.raises(KerasFormatError, match=r"extra layer 'conv' \(Conv1D\); rnnsent reads only Embedding -> .*"
                                               r"Bidirectional\(merge_mode='concat'\)") as e:
        from_keras(tmp_path / "conv.keras")
    assert len(str(e.value).splitlines()) == 1
