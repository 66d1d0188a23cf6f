"""IMDB data pipeline: fetch -> verified split -> tokenize/vocab -> encode -> batches.

Nothing here imports the models or the trainer; data flows one way.
"""
from rnnsent.data.batches import Batcher
from rnnsent.data.dataset import ImdbData, prepare_imdb, train_val_split
from rnnsent.data.fetch import load_imdb_reviews
from rnnsent.data.text import EncodedSplit, Vocab, encode_fast, encode_keras, tokenize

__all__ = [
    "Batcher",
    "EncodedSplit",
    "ImdbData",
    "Vocab",
    "encode_fast",
    "encode_keras",
    "load_imdb_reviews",
    "prepare_imdb",
    "tokenize",
    "train_val_split",
]
