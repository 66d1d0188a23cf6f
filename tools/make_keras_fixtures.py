"""Write the tiny Keras model files that tests/test_keras_io.py reads, with Keras' own predictions.

Run it once under each Keras major version; it writes the files for the version it finds:

    # Keras 3 (the project venv; the torch backend is used unless KERAS_BACKEND says otherwise)
    python tools/make_keras_fixtures.py
    # Keras 2 (tf.keras from TensorFlow 2.15, kept in a venv outside the repo)
    PATH/TO/venv-tf215/bin/python tools/make_keras_fixtures.py

Files, with v the Keras major version (2 or 3):
    k{v}_{lstm,gru,rnn}.h5 / .keras   Embedding(20, 4) -> cell(3) -> Dense(1, sigmoid), random weights
    k{v}_{lstm,gru,rnn}.npz           x: a fixed pre-padded int32 batch (4, 12); y: Keras' predict(x)
    k{v}_gru_reset_before.h5          GRU(reset_after=False): must be refused
    k{v}_bidirectional.h5             Bidirectional(LSTM): read (rnnsent's bidirectional=True)
    k{v}_stacked.h5                   LSTM(return_sequences=True) -> LSTM: read (rnnsent's num_layers=2)
    k2_gru_input_length.h5/.npz       Keras 2 only: Embedding(20, 4, input_length=12), no Input layer
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 only; Keras 2 ignores it
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

VOCAB, EMBED, UNITS, SEED = 20, 4, 3, 1234


def _keras_cell_names() -> dict[str, str]:
    """rnnsent.config's cell table, read without importing the package (a Keras 2 venv may have no PyTorch)."""
    spec = importlib.util.spec_from_file_location(
        "rnnsent_config", Path(__file__).resolve().parents[1] / "rnnsent" / "config.py"
    )
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KERAS_CELL_NAMES


CELLS = _keras_cell_names()  # {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}


def fixed_input() -> np.ndarray:
    """(4, 12) token ids, pre-padded with zeros as keras.utils.pad_sequences does."""
    rng = np.random.default_rng(SEED)
    x = rng.integers(1, VOCAB, size=(4, 12)).astype("int32")
    for row, pad in enumerate((0, 3, 7, 11)):
        x[row, :pad] = 0
    return x


def build(keras, *middle):
    return keras.Sequential(
        [keras.Input(shape=(None,), dtype="int32"), keras.layers.Embedding(VOCAB, EMBED), *middle,
         keras.layers.Dense(1, activation="sigmoid")]
    )


def randomize(model, rng) -> None:
    # Keras initialises biases to zero; random ones make the tests see a wrong bias layout.
    model.set_weights([rng.normal(0.0, 0.5, size=w.shape).astype("float32") for w in model.get_weights()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "keras"))
    args = parser.parse_args()
    import keras

    version = keras.__version__
    major = int(version.split(".")[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED + major)
    x = fixed_input()
    L = keras.layers

    for cell, keras_name in CELLS.items():
        model = build(keras, getattr(L, keras_name)(UNITS))
        randomize(model, rng)
        y = np.asarray(model.predict(x, verbose=0), dtype="float32").reshape(-1)
        stem = out / f"k{major}_{cell}"
        model.save(f"{stem}.h5")
        model.save(f"{stem}.keras")
        np.savez(f"{stem}.npz", x=x, y=y, keras_version=np.array(version))
        print(f"{stem}.h5/.keras/.npz  y={np.round(y, 4)}")

    if major == 2:
        # The way Keras 2 tutorials (and the exercise) build it: no Input layer, input_length on the Embedding.
        model = keras.Sequential([L.Embedding(VOCAB, EMBED, input_length=x.shape[1]), L.GRU(UNITS),
                                  L.Dense(1, activation="sigmoid")])
        randomize(model, rng)
        y = np.asarray(model.predict(x, verbose=0), dtype="float32").reshape(-1)
        model.save(str(out / "k2_gru_input_length.h5"))
        np.savez(out / "k2_gru_input_length.npz", x=x, y=y, keras_version=np.array(version))
        print(out / "k2_gru_input_length.h5")

    refused = {  # the first is refused; the other two, once refused, are read now (tests/test_keras_io.py)
        "gru_reset_before": [L.GRU(UNITS, reset_after=False)],
        "bidirectional": [L.Bidirectional(L.LSTM(UNITS))],
        "stacked": [L.LSTM(UNITS, return_sequences=True), L.LSTM(UNITS)],
    }
    for name, middle in refused.items():
        model = build(keras, *middle)
        model.save(str(out / f"k{major}_{name}.h5"))
        print(out / f"k{major}_{name}.h5")
    print(f"Keras {version}, backend {keras.backend.backend()}")


if __name__ == "__main__":
    main()
