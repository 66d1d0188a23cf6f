"""rnnsent: Keras-exact recurrent sentiment classifiers on IMDB, trained fast in PyTorch.

    model = rnnsent.SentimentRNN("gru")                 # Embedding(5000, 32) -> GRU(100) -> Dense(1)
    loaded = rnnsent.load_checkpoint("gru")             # a released model by name, or a file / run folder
    rnnsent.predict(loaded, ["A wonderful film."])      # probabilities and labels
    rnnsent.explain(loaded, ["A wonderful film."])      # and which words made it say so (needs rnnsent[explain])
    rnnsent.fine_tune("gru", data="tickets.csv")        # a released model fine-tuned on your own labels
    model = rnnsent.from_keras("gru_model.h5")          # a Keras 2 or 3 model, no TensorFlow needed
    layer = rnnsent.nn.GRU(300, 256, batch_first=True)   # torch.nn.GRU's interface on the fused CPU kernel
"""
from __future__ import annotations

import importlib
import os as _os
import sys as _sys
from typing import TYPE_CHECKING

if "torch" not in _sys.modules:
    # OpenMP threads that finish their share of a parallel section sleep instead of spinning (libgomp spins
    # ~300,000 rounds by default). On a busy machine a spinning thread holds the core that its descheduled
    # partner needs: two threads ran at 0.3-0.6x of one thread beside a busy process. libgomp
    # reads this once, when PyTorch loads it, hence here and only before torch is imported; a value the
    # user set wins. Imported after torch, rnnsent can only say so: rnnsent.runtime.check_wait_policy, when a run
    # or predict() starts on 2 or more threads.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# Where each public name lives. Each module is imported on first use of one of its names, so that
# `import rnnsent` (and with it the `rnnsent` command's --help) loads neither torch nor the data pipeline.
_EXPORTS = {
    "CELLS": "rnnsent.config", "SentimentRNN": "rnnsent.model.sentiment", "count_parameters": "rnnsent.model.sentiment",
    "KerasFormatError": "rnnsent.inference.keras_io", "from_keras": "rnnsent.inference.keras_io",
    "to_keras": "rnnsent.inference.keras_io",
    "save_keras": "rnnsent.inference.keras_io",
    "load_checkpoint": "rnnsent.inference.loading",
    "TrainConfig": "rnnsent.config",
    "train": "rnnsent.training.trainer",
    "fine_tune": "rnnsent.training.finetune",
    "prepare_texts": "rnnsent.data", "prepare_labelled": "rnnsent.data",
    "explain": "rnnsent.inference.explain", "Explanation": "rnnsent.inference.explain",
}

_SUBMODULES = ("nn",)  # public modules, imported on first use too: rnnsent.nn (docs/nn.md)

__all__ = [*_EXPORTS, *_SUBMODULES, "predict", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below does this on demand
    # (`name as name`: a re-export, as type checkers and linters read it)
    from rnnsent.config import CELLS as CELLS, TrainConfig as TrainConfig
    from rnnsent.data import prepare_labelled as prepare_labelled, prepare_texts as prepare_texts
    from rnnsent.inference.explain import Explanation as Explanation, explain as explain
    from rnnsent.inference.keras_io import (KerasFormatError as KerasFormatError, from_keras as from_keras,
                                  save_keras as save_keras, to_keras as to_keras)
    from rnnsent.inference.loading import load_checkpoint as load_checkpoint
    from rnnsent.model.sentiment import SentimentRNN as SentimentRNN, count_parameters as count_parameters
    from rnnsent.training.finetune import fine_tune as fine_tune
    from rnnsent.training.trainer import train as train


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"rnnsent.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rnnsent' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def predict(model, texts, vocab=None, max_len: int = 500, encoding: str = "keras", device=None, batch_size: int = 256,
            classes=None):
    """Sentiment (or your own classes) of raw texts (one, or any iterable of them), from a loaded checkpoint or from a
    model plus its vocabulary; `classes` names an in-memory model's classes in order (a checkpoint has its own)."""
    import torch

    from rnnsent.inference.loading import LoadedModel
    from rnnsent.inference.evaluate import predict
    from rnnsent.runtime import check_wait_policy

    check_wait_policy(torch.get_num_threads())
    if isinstance(model, LoadedModel):
        return predict(model.model, texts, model.vocab, model.max_len, model.encoding, device, batch_size,
                       model.classes, **model.decision())
    if vocab is None:
        raise ValueError(
            "predict() needs the vocabulary the model was trained with: pass vocab=, or a loaded checkpoint"
        )
    return predict(model, texts, vocab, max_len, encoding, device, batch_size, classes)
