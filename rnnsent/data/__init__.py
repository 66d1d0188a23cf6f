"""Data pipeline: fetch (IMDB) or read (your own labelled text) -> split -> tokenize/vocab -> encode -> batches.

Nothing here imports the models or the trainer; data flows one way.
"""
from rnnsent.data.batches import Batcher
from rnnsent.data.dataset import prepare_imdb, train_val_split
from rnnsent.data.fetch import load_imdb_reviews
from rnnsent.data.labelled import encode_labelled, prepare_labelled, prepare_texts
from rnnsent.data.prepare import prepare_data
from rnnsent.data.tabular import DataFileError
from rnnsent.data.text import EncodedSplit, PreparedData, Vocab, encode_bucketed, encode_keras, tokenize

__all__ = [
    "Batcher",
    "DataFileError",
    "EncodedSplit",
    "PreparedData",
    "Vocab",
    "encode_bucketed",
    "encode_labelled",
    "encode_keras",
    "load_imdb_reviews",
    "prepare_data",
    "prepare_imdb",
    "prepare_labelled",
    "prepare_texts",
    "tokenize",
    "train_val_split",
]
