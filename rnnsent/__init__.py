"""rnnsent: Keras-exact recurrent sentiment classifiers on IMDB, trained fast in PyTorch."""
from rnnsent.models import CELLS, SentimentRNN, count_parameters

__all__ = ["CELLS", "SentimentRNN", "count_parameters"]
__version__ = "0.1.0"
