"""rnnsent: Keras-exact recurrent sentiment classifiers on IMDB, trained fast in PyTorch.

    model = rnnsent.SentimentRNN("gru")                 # Embedding(5000, 32) -> GRU(100) -> Dense(1)
    loaded = rnnsent.load_checkpoint("runs/gru")        # model + vocabulary + encoding settings
    rnnsent.predict(loaded, ["A wonderful film."])      # probabilities and labels
    model = rnnsent.from_keras("gru_model.h5")          # a Keras 2 or 3 model, no TensorFlow needed
"""
import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # OpenMP threads that finish their share of a parallel section sleep instead of spinning (libgomp spins
    # ~300,000 rounds by default). On a busy machine a spinning thread holds the core that its descheduled
    # partner needs: two threads ran at 0.3-0.6x of one thread beside a busy process (issue 17). libgomp
    # reads this once, when PyTorch loads it, hence here and only before torch is imported; a value the
    # user set wins.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rnnsent.models import CELLS, SentimentRNN, count_parameters
from rnnsent.keras_io import KerasFormatError, from_keras, save_keras, to_keras

__version__ = "0.1.0"

__all__ = [
    "CELLS", "SentimentRNN", "count_parameters", "KerasFormatError", "from_keras", "to_keras", "save_keras",
    "load_checkpoint", "predict", "TrainConfig", "train", "__version__",
]


def __getattr__(name):
    # The trainer, checkpoints and prediction pull in the data pipeline; import them on first use so
    # `import rnnsent` stays light for code that only wants the model.
    if name == "load_checkpoint":
        from rnnsent.checkpoint import load_checkpoint

        return load_checkpoint
    if name == "predict":
        return _predict
    if name in ("TrainConfig", "train"):
        import rnnsent.train as t

        return getattr(t, name)
    raise AttributeError(f"module 'rnnsent' has no attribute {name!r}")


def _predict(model, texts, vocab=None, max_len: int = 500, encoding: str = "keras", device=None, batch_size: int = 256):
    """Sentiment of raw review texts, from a loaded checkpoint or from a model plus its vocabulary."""
    from rnnsent.checkpoint import LoadedModel
    from rnnsent.evaluate import predict

    if isinstance(model, LoadedModel):
        return predict(model.model, texts, model.vocab, model.max_len, model.encoding, device, batch_size)
    if vocab is None:
        raise ValueError("predict() needs the vocabulary the model was trained with: pass vocab=, or a loaded checkpoint")
    return predict(model, texts, vocab, max_len, encoding, device, batch_size)
