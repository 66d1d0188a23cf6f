"""The data a run's settings name: IMDB (the default, and any path IMDB's readers recognise) or your own
labelled data (a .csv, .tsv or .jsonl file, or a class folder). Both come back as one PreparedData."""
from __future__ import annotations

from rnnsent.config import DataConfig
from rnnsent.data.dataset import prepare_imdb
from rnnsent.data.labelled import prepare_labelled
from rnnsent.data.tabular import Columns, DataFileError, is_user_data
from rnnsent.data.text import PreparedData, Vocab


def prepare_data(settings, vocab_size: int, cache_dir=None, vocab: Vocab | None = None,
                 extend_vocab: int = 0) -> PreparedData:
    """The data a DataConfig (or TrainConfig) names, prepared (or read from the cache) with `vocab_size` words, or
    encoded with a trained model's `vocab` (its embedding has vocab_size rows), extended by `extend_vocab` words."""
    cache_dir = cache_dir if cache_dir is not None else settings.cache_dir
    if is_user_data(settings.data_root):
        return prepare_labelled(
            path=settings.data_root, test_path=settings.test_data, vocab_size=vocab_size, max_len=settings.max_len,
            encoding=settings.encoding, val_fraction=settings.val_fraction, test_fraction=settings.test_fraction,
            seed=settings.split_seed, limit=settings.limit, cache_dir=cache_dir,
            on_missing_label=settings.on_missing_label, vocab=vocab, extend_vocab=extend_vocab,
            columns=Columns(settings.text_column, settings.label_column, settings.split_column, settings.quoting))
    if settings.test_data is not None:
        raise DataFileError(
            f"--test-data {settings.test_data}: a test file goes with your own data (--data a .csv, .tsv or "
            ".jsonl file); IMDB brings its own test split"
        )
    return prepare_imdb(**DataConfig.data_args(settings, vocab_size), root=settings.data_root, cache_dir=cache_dir,
                        vocab=vocab, extend_vocab=extend_vocab)
