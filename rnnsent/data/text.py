"""Text -> token ids -> padded tensors: the tokenizer, the vocabulary and the two encodings.

Id conventions follow keras.datasets.imdb so that a model trained here can read Keras' inputs and
the other way round: 0 is padding, 1 marks the start of a review, 2 stands for every word that is
not in the vocabulary, and words follow by descending training-set frequency.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from rnnsent.config import check_setting

PAD_ID = 0
START_ID = 1
OOV_ID = 2
# Names shown for the reserved ids. Each contains '<', which the tokenizer always splits off as
# punctuation, so no text can ever produce one of these strings as a token.
RESERVED_NAMES = ("<pad>", "<start>", "<oov>")
UNUSED_NAME = "<unused>"
TOKENIZER_NAME = "rnnsent-v1"  # IMDB's tokenizer; its encodings never change
SCRIPT_TOKENIZER_NAME = "rnnsent-v2"  # the user's own data: v1, plus one token per character of scripts without spaces
KERAS_TOKENIZER_NAME = "keras-imdb"
PADDINGS = ("pre", "post")

# IMDB reviews carry HTML line breaks; they separate sentences, so they become a space.
_LINE_BREAK = re.compile(r"<\s*br\s*/?\s*>")
# A word is a run of letters/digits in any script, with apostrophes allowed inside it (don't,
# o'clock); every other visible character is a token of its own. '_' counts as punctuation because
# \w would otherwise glue it into words ("__init__"-style noise).
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")
# Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Myanmar): under v1 a
# whole sentence is one "word". v2 makes each such character a token of its own (with the combining marks
# that follow it, so a Thai vowel sign stays on its consonant); everything else is v1's rule.
_SPACELESS = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
              "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f")
_MARK = ("\u0300-\u036f\u0e31\u0e34-\u0e3a\u0e47-\u0e4e\u0eb1\u0eb4-\u0ebc\u0ec8-\u0ecd"
         "\u1031-\u103e\u17b4-\u17d3\u3099\u309a")
_WORD_V2 = f"[^\\W_{_SPACELESS}]"
_TOKEN_V2 = re.compile(f"[{_SPACELESS}][{_MARK}]*|{_WORD_V2}+(?:'{_WORD_V2}+)*|[^\\w\\s]|_")


def tokenize(text: str | bytes, _pattern: re.Pattern = _TOKEN) -> list[str]:
    """Lower-case `text`, drop <br /> tags and split it into words and single punctuation marks.

    Bytes are decoded as UTF-8 with undecodable bytes replaced, so no input raises.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    text = text.lower()
    if "<" in text:
        text = _LINE_BREAK.sub(" ", text)
    if "\u2019" in text:  # typographic apostrophe: "don’t" must match "don't"
        text = text.replace("\u2019", "'")
    return _pattern.findall(text)


def tokenize_scripts(text: str | bytes) -> list[str]:
    """tokenize(), except that each character of a script without spaces (CJK, kana, Thai, ...) is a token."""
    return tokenize(text, _TOKEN_V2)


def tokenizer_for(name: str):
    """The tokenize function a vocabulary was built with (its `tokenizer` field); IMDB's and Keras' use v1."""
    return tokenize_scripts if name == SCRIPT_TOKENIZER_NAME else tokenize


@dataclass(frozen=True)
class Vocab:
    """Token <-> id table with Keras' reserved ids (0 pad, 1 start, 2 out-of-vocabulary).

    `words[k]` has id 3 + k. A vocabulary taken from Keras' imdb_word_index.json starts `words` with
    the placeholder '<unused>': Keras maps rank r to id r + 3 and ranks start at 1, so Keras never
    uses id 3, and keeping the slot makes every id here equal Keras' own. Ranks missing from a word
    index become placeholders too, so later ids never shift. Placeholders match no token.
    """

    words: tuple[str, ...]
    lower: bool = True  # the tokenizer lower-cases; recorded so a checkpoint says how to encode
    tokenizer: str = TOKENIZER_NAME
    _stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        stoi = {}
        for k, w in enumerate(self.words):
            if w != UNUSED_NAME:
                stoi.setdefault(w, len(RESERVED_NAMES) + k)
        object.__setattr__(self, "words", tuple(self.words))
        object.__setattr__(self, "_stoi", stoi)

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], vocab_size: int) -> "Vocab":
        """Keep the vocab_size - 3 most frequent tokens of `token_lists` (pass training texts only).

        Ties in frequency keep the order in which the tokens first appear, as Keras' Tokenizer does.
        """
        vocab_size = check_setting("vocab_size", vocab_size)
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        return cls.from_counts(list(counts), list(counts.values()), vocab_size)

    @classmethod
    def from_counts(cls, words: Sequence[str], counts: Sequence[int], vocab_size: int) -> "Vocab":
        """Build from words listed in first-appearance order and their counts (zero counts are dropped)."""
        vocab_size = check_setting("vocab_size", vocab_size)
        c = np.asarray(counts, dtype=np.int64)
        order = np.argsort(-c, kind="stable")[: int(vocab_size) - 3]  # stable: ties by first appearance
        order = order[c[order] > 0]
        return cls(tuple(words[i] for i in order.tolist()))

    @classmethod
    def from_keras_word_index(cls, word_index: Mapping[str, int], vocab_size: int) -> "Vocab":
        """Keras' imdb_word_index.json (word -> rank from 1) cut like `imdb.load_data(num_words=vocab_size)`.

        Keras keeps a word when rank + 3 < num_words, so ids here equal Keras' ids exactly.
        """
        vocab_size = check_setting("vocab_size", vocab_size)
        slots = [UNUSED_NAME] * (vocab_size - 4)  # ids 4 .. vocab_size-1 <- ranks 1 .. vocab_size-4
        for word, rank in word_index.items():
            if not isinstance(rank, int) or rank < 1:
                raise ValueError(
                    f"word index entry {word!r}: {rank!r} is not a rank >= 1; is this Keras' imdb_word_index.json?"
                )
            if rank <= vocab_size - 4:
                if slots[rank - 1] != UNUSED_NAME:
                    raise ValueError(f"word index gives rank {rank} to both {slots[rank - 1]!r} and {word!r}")
                slots[rank - 1] = word
        while slots and slots[-1] == UNUSED_NAME:  # a small index: don't claim ids nothing maps to
            slots.pop()
        return cls(tuple([UNUSED_NAME] + slots), tokenizer=KERAS_TOKENIZER_NAME)

    def __len__(self) -> int:
        """Number of ids in use (reserved ones included): the rows an embedding table needs."""
        return len(RESERVED_NAMES) + len(self.words)

    @property
    def itos(self) -> list[str]:
        """Id -> token for every id below len(self); reserved ids show their names."""
        return list(RESERVED_NAMES) + list(self.words)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Token ids, with 2 for every token outside the vocabulary. No start token is added."""
        get = self._stoi.get
        return [get(t, OOV_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens for `ids` (reserved ids come back as their names, e.g. '<oov>')."""
        itos = self.itos
        return [itos[i] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only, so a checkpoint loads with torch.load(weights_only=True)."""
        return {
            "words": list(self.words),
            "lower": self.lower,
            "tokenizer": self.tokenizer,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Vocab":
        missing = {"words", "lower", "tokenizer"} - set(d)
        if missing:
            raise ValueError(f"vocabulary dict lacks {sorted(missing)}; it should come from Vocab.to_dict()")
        return cls(tuple(d["words"]), lower=bool(d["lower"]), tokenizer=str(d["tokenizer"]))


@dataclass(frozen=True)
class EncodedSplit:
    """A whole split as padded id tensors.

    padding="pre" rows are Keras' pad_sequences output: zeros on the left, width max_len.
    padding="post" rows hold their tokens from column 0; the width is the longest row.
    """

    tokens: torch.Tensor  # (N, L) int64 ids
    lengths: torch.Tensor  # (N,) int64, real tokens per row (start token included), >= 1
    labels: torch.Tensor  # (N,) float32, 1.0 positive, 0.0 negative
    padding: str

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be 'pre' or 'post', got {self.padding!r}")
        if self.tokens.dtype != torch.long or self.tokens.dim() != 2:
            raise ValueError(
                f"tokens must be a 2-D int64 tensor, got {self.tokens.dtype} of shape {tuple(self.tokens.shape)}"
            )
        n = self.tokens.shape[0]
        if self.lengths.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(
                f"tokens has {n} rows but lengths has shape {tuple(self.lengths.shape)} and labels "
                f"{tuple(self.labels.shape)}; all three must describe the same reviews"
            )
        if self.lengths.dtype != torch.long or self.labels.dtype != torch.float32:
            raise ValueError(
                f"lengths must be int64 and labels float32, got {self.lengths.dtype} and {self.labels.dtype}"
            )
        if n and (int(self.lengths.min()) < 1 or int(self.lengths.max()) > self.tokens.shape[1]):
            raise ValueError(
                "every length must lie in 1 .. tokens.shape[1] (an empty review still has its start token)"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, idx: torch.Tensor) -> "EncodedSplit":
        """The rows `idx`, in that order; post-padded rows are cut to the new longest row."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        tokens, lengths = self.tokens[idx], self.lengths[idx]
        if self.padding == "post":
            tokens = tokens[:, : int(lengths.max()) if len(idx) else 0].contiguous()
        return EncodedSplit(tokens, lengths, self.labels[idx], self.padding)

    def unpadded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat ids of every row in order, lengths): the compact form the cache stores."""
        return self.tokens[_mask(self.lengths, self.tokens.shape[1], self.padding)], self.lengths


def _mask(lengths: torch.Tensor, width: int, padding: str) -> torch.Tensor:
    cols = torch.arange(width)  # (L,)
    if padding == "post":
        return cols[None, :] < lengths[:, None]  # (N, L)
    return cols[None, :] >= width - lengths[:, None]  # (N, L)


def pad_flat(flat: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, width: int, padding: str) -> EncodedSplit:
    """Lay rows given back to back in `flat` into an (N, width) tensor. Row-major order of the mask
    matches the order of `flat`, so one masked assignment places every id."""
    lengths = lengths.to(torch.long)
    tokens = torch.zeros(len(lengths), width, dtype=torch.long)  # (N, L)
    tokens.masked_scatter_(_mask(lengths, width, padding), flat.to(torch.long))  # twice as fast as tokens[mask] = flat
    return EncodedSplit(tokens, lengths, labels.to(torch.float32), padding)


def _truncate(id_lists: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend the start token and keep the last max_len ids of each row (pad_sequences' truncating="pre")."""
    rows = []
    for ids in id_lists:
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(a) + 1 <= max_len:
            rows.append(np.concatenate(([START_ID], a)))
        else:  # the start token is among the ids cut off, exactly as in Keras
            rows.append(a[len(a) - max_len :])
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    flat = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, dtype=torch.long)
    return flat, lengths


def _labels(labels: Sequence[float] | torch.Tensor, n: int) -> torch.Tensor:
    t = torch.as_tensor(labels, dtype=torch.float32).reshape(-1)
    if len(t) != n:
        raise ValueError(f"got {n} id lists but {len(t)} labels; pass one label per review")
    return t


def encode_keras(
    id_lists: Sequence[Sequence[int]], labels: Sequence[float] | torch.Tensor, max_len: int
) -> EncodedSplit:
    """Keras parity: [1] + ids, then pad_sequences(maxlen=max_len) with its defaults
    (truncating="pre" keeps the last max_len ids, padding="pre" puts zeros on the left)."""
    max_len = check_setting("max_len", max_len)
    flat, lengths = _truncate(id_lists, max_len)
    return pad_flat(flat, lengths, _labels(labels, len(lengths)), max_len, "pre")


def encode_bucketed(
    id_lists: Sequence[Sequence[int]], labels: Sequence[float] | torch.Tensor, max_len: int
) -> EncodedSplit:
    """The same ids as encode_keras, right-padded to the longest row so that batches can be cut short."""
    max_len = check_setting("max_len", max_len)
    flat, lengths = _truncate(id_lists, max_len)
    width = int(lengths.max()) if len(lengths) else 0
    return pad_flat(flat, lengths, _labels(labels, len(lengths)), width, "post")


@dataclass(frozen=True)
class PreparedData:
    """Encoded train/val/test splits, the vocabulary that made them, and what they came from: IMDB's or your own
    data's, as rnnsent.data.prepare_data (and prepare_imdb, prepare_labelled, prepare_texts) give them."""

    train: EncodedSplit
    val: EncodedSplit
    test: EncodedSplit
    vocab: Vocab
    meta: dict[str, Any]  # source, parameters, counts per split and label, cache file

    @classmethod
    def fresh(cls, splits: Mapping[str, EncodedSplit], vocab: Vocab, meta: dict, cache_file=None) -> "PreparedData":
        """Just prepared (not read from a cache) from {"train", "val", "test"} splits; `cache_file` where it was
        stored, if it was."""
        return cls(splits["train"], splits["val"], splits["test"], vocab,
                   dict(meta, cache_file=None if cache_file is None else str(cache_file), cache_hit=False))
