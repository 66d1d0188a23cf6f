"""A trained model's vocabulary over new data (--init-from): the data's words mapped to its ids, the share of the
training split's tokens it does not know, and --extend-vocab's new words appended after its own.

Building a new vocabulary would give every word another id and scramble the trained embedding, so data prepared
for a model started from a checkpoint keeps that checkpoint's vocabulary and tokenizer: a word keeps its id, and
its embedding row with it. The extension adds the N most frequent words of the training split the vocabulary
lacks (ties in the order they first appear in the data), at the ids after its own, so no old id moves.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from rnnsent.config import check_setting
from rnnsent.data.tabular import DataFileError
from rnnsent.data.text import OOV_ID, Vocab


def vocab_key(vocab: Vocab) -> str:
    """A short digest of a vocabulary, for the keys of prepared-data caches made with it."""
    return hashlib.sha256(json.dumps(vocab.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def map_words(vocab: Vocab, words: list[str], train_flat: np.ndarray, extend: int,
              where: str) -> tuple[Vocab, np.ndarray, str]:
    """(the vocabulary, extended by the `extend` most frequent unknown words of the training split, the map from
    each of `words` (the data's provisional ids) to its id, 2 for a word it does not know, and the note that says
    how much of the training split it does not know). `train_flat`: the training split's provisional ids.
    Refuses (DataFileError, one line) data of which it knows no token at all."""
    extend = check_setting("extend_vocab", extend)
    to_id = np.asarray(vocab.encode(words), dtype=np.int64).reshape(-1)  # (W,)
    counts = np.bincount(train_flat, minlength=len(words))  # (W,) occurrences in the training split
    total = int(counts.sum())
    unknown = int(counts[to_id == OOV_ID].sum())
    added = []
    if extend:
        candidates = np.nonzero((to_id == OOV_ID) & (counts > 0))[0]  # provisional ids: first appearance order
        chosen = candidates[np.argsort(-counts[candidates], kind="stable")[:extend]]
        added = [words[i] for i in chosen.tolist()]
        to_id[chosen] = len(vocab) + np.arange(len(chosen))
        vocab = Vocab(vocab.words + tuple(added), lower=vocab.lower, tokenizer=vocab.tokenizer)
    left = int(counts[to_id == OOV_ID].sum())
    if total and left == total:
        raise DataFileError(
            f"{where}: the checkpoint's vocabulary (tokenizer {vocab.tokenizer}) knows none of the training split's "
            f"{total:,} tokens (another language or script?); train from scratch, or add --extend-vocab N")
    note = (f"the checkpoint's vocabulary does not know {_share(unknown, total)} of the training split's tokens "
            f"({unknown:,} of {total:,}; they read as <oov>)")
    if extend:
        note += (f"; --extend-vocab {extend} added {len(added):,} word(s) with fresh embedding rows (ids "
                 f"{len(vocab) - len(added)} on), leaving {_share(left, total)} unknown")
    return vocab, to_id, note


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "none"
