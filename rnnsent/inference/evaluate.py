"""Evaluation (loss, accuracy, macro-F1, confusion counts) and prediction on raw review text."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnsent.model import objective
from rnnsent.data import Batcher, EncodedSplit, Vocab, encode_bucketed, encode_keras
from rnnsent.data.text import OOV_ID, tokenizer_for
from rnnsent.model.sentiment import SentimentRNN
from rnnsent.runtime import autocast_context

IMDB_LABELS = ("negative", "positive")  # what a model without stored classes (IMDB's) calls its two classes


@torch.no_grad()
def evaluate(
    model: SentimentRNN,
    split: EncodedSplit,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: str | None = None,
    batcher: Batcher | None = None,
) -> dict:
    """Loss, accuracy, macro-F1 and confusion counts of `model` on a whole encoded split (see scores()).

    Batch size does not change the result (no batch statistics), so evaluation uses large,
    length-bucketed batches. Sums stay on the device; one host sync at the end.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if batcher is None:  # (an empty shard is a falsy Batcher, so no `or` here)
        batcher = Batcher(split, batch_size=batch_size, shuffle=False, seed=0,
                          bucket=split.padding == "post", device=device)
    was_training = model.training
    model.eval()
    k = model.num_classes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(k * k, dtype=torch.long, device=device)  # (true class, predicted class), flattened
    for x, lengths, y in batcher.iterate(0):
        with autocast_context(device, amp):
            logits = model(x, lengths if split.padding == "post" else None)  # (B,) or (B, K)
        loss_sum += objective.loss(logits, y, reduction="sum").double()
        confusion += torch.bincount(y.long() * k + objective.predicted(logits), minlength=k * k)
    model.train(was_training)
    return scores(loss_sum.item(), confusion.view(k, k).tolist())


def scores(loss_sum: float, confusion: list[list[int]]) -> dict:
    """loss, accuracy, macro-F1 and the confusion matrix (rows: true class, columns: predicted) from summed counts;
    for two classes also tp, fp, tn, fn (class 1 is the positive one)."""
    k = len(confusion)
    n = sum(map(sum, confusion))
    right = sum(confusion[c][c] for c in range(k))
    f1 = []
    for c in range(k):
        predicted, actual = sum(confusion[r][c] for r in range(k)), sum(confusion[c])
        f1.append(2 * confusion[c][c] / (predicted + actual) if predicted + actual else 0.0)
    out = {"loss": loss_sum / max(n, 1), "accuracy": right / max(n, 1)}
    if k == 2:
        (tn, fp), (fn, tp) = confusion
        out.update(tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn))
    return {**out, "n": int(n), "macro_f1": sum(f1) / k,
            "confusion_matrix": [[int(v) for v in row] for row in confusion]}


@dataclass(frozen=True)
class Prediction:
    probability: float  # two classes: P(the second class, "positive" for IMDB); more: P(the predicted class)
    label: str  # the predicted class's name ("positive" or "negative" for IMDB)
    tokens: int  # tokens the model saw, start token included (after truncation to max_len)
    words: int = 0  # words and punctuation marks in the text, before truncation
    unknown: int = 0  # of those, how many are outside the vocabulary
    probabilities: dict | None = None  # class name -> probability, every class

    @property
    def oov_share(self) -> float:
        """Share of the text's words the model does not know (1.0 for an empty text)."""
        return self.unknown / self.words if self.words else 1.0

    @property
    def note(self) -> str | None:
        """Why the probability says nothing about the text: the model saw only its start token and unknowns."""
        if self.words == 0:
            return "empty"
        if self.unknown == self.words:
            return "no known words"
        return None

    def to_json(self, text: str) -> dict:
        """The JSON object of `rnnsent predict --json` (and the server's /v1/predict) for this text."""
        # a new key goes at the end: the JSON output changes only by addition (docs/developing.md)
        return {"probability": self.probability, "label": self.label, "text": text, "words": self.words,
                "oov_share": self.oov_share, "note": self.note, "probabilities": self.probabilities}


def as_texts(texts, what: str = "predict") -> list[str]:
    """One text (str, or UTF-8 bytes) or an iterable of them, as a list of str; anything else is a TypeError."""
    if isinstance(texts, (str, bytes, bytearray)):
        texts = [texts]
    texts = list(texts)
    for t in texts:
        if not isinstance(t, (str, bytes, bytearray)):  # bytes(5) would be five NUL bytes, scored as a review
            raise TypeError(f"{what} takes review texts (str, or bytes in UTF-8), got {type(t).__name__} {t!r:.40}")
    return [t if isinstance(t, str) else bytes(t).decode("utf-8", errors="replace") for t in texts]


def class_names(num_classes: int, classes: list | None = None) -> list[str]:
    """The names of a model's classes in output order: the stored ones, else IMDB's negative/positive, else 0..K-1."""
    if classes:
        return [str(c) for c in classes]
    return list(IMDB_LABELS) if num_classes == 2 else [str(c) for c in range(num_classes)]


def positive_class(classes: list, positive_label=None) -> int:
    """The index of a two-class model's positive class: the class every binary metric, curve and the decision
    threshold are about. `positive_label` names it; by default the second class (IMDB's "positive"; of your own
    data's two labels, the second in sorted order)."""
    names = [str(c) for c in classes]
    if len(names) != 2:
        raise ValueError(f"a positive class is one of two classes; this model has {len(names)}")
    if positive_label is None:
        return 1
    if str(positive_label) not in names:
        raise ValueError(f"unknown positive label {positive_label!r}: the model's classes are {', '.join(names)}")
    return names.index(str(positive_label))


@torch.no_grad()
def predict(
    model: SentimentRNN,
    texts: list[str],
    vocab: Vocab,
    max_len: int = 500,
    encoding: str = "keras",
    device: torch.device | str | None = None,
    batch_size: int = 256,
    classes: list | None = None,
    sort_by_length: bool = True,
    groups=None,
) -> list[Prediction]:
    """The class of each raw text (str, or UTF-8 bytes). Empty or odd text is fine: it becomes the start token
    alone, and its Prediction.note says so ("empty", "no known words").

    `texts` is one text or any iterable of them (a list, a generator, map(...)). `classes` names the model's
    classes in order (a checkpoint stores them); without, IMDB's negative/positive for two classes.
    Right-padded (bucketed) texts are batched by length, longest first, so that a batch is as wide as its own
    longest text; the answers come back in input order, and each row's result does not depend on its batch
    (bit for bit wherever the GEMMs are, as under MKL_CBWR=AUTO,STRICT). sort_by_length=False batches in input order.
    `groups(steps)`, given each text's time steps, returns the forwards to run as lists of indices (every text in
    one of them); rnnsent serve passes its length buckets."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()

    def forward(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        logits = model(x.to(device), None if lengths is None else lengths.to(device))
        return objective.probabilities(logits).cpu()  # (B, K)

    try:
        return predict_with(
            forward, model.num_classes, texts, vocab, max_len, encoding, batch_size, classes, sort_by_length, groups
        )
    finally:
        model.train(was_training)


def predict_with(forward, num_classes: int, texts, vocab: Vocab, max_len: int, encoding: str, batch_size: int = 256,
                 classes: list | None = None, sort_by_length: bool = True, groups=None) -> list[Prediction]:
    """predict() with any `forward(tokens (B, T) int64, lengths (B,) or None for pre-padded rows) -> (B, K)
    probabilities` (a PyTorch model, an onnxruntime session: rnnsent.inference.export.OnnxPredictor). Each text is
    tokenized once, whatever `groups` does with it."""
    texts = as_texts(texts)
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"classes names {len(classes)} classes but the model has {num_classes}")
    tokenize = tokenizer_for(vocab.tokenizer)
    ids = [vocab.encode(tokenize(t)) for t in texts]
    labels = [0] * len(ids)
    split = (encode_keras if encoding == "keras" else encode_bucketed)(ids, labels, max_len)
    names = class_names(num_classes, classes)
    right_padded = split.padding == "post"
    # Pre-padded rows are all max_len wide, so only right-padded ones gain from batching by length.
    if groups is not None:
        steps = split.lengths.tolist() if right_padded else [split.tokens.size(1)] * len(texts)
        batches = [torch.as_tensor(g, dtype=torch.long) for g in groups(steps)]
        if sorted(int(i) for g in batches for i in g) != list(range(len(texts))):
            raise ValueError("groups must put every text in exactly one forward")
    else:
        order = (torch.argsort(split.lengths, descending=True, stable=True) if right_padded and sort_by_length
                 else torch.arange(len(texts)))
        batches = [order[start: start + batch_size] for start in range(0, len(texts), batch_size)]
    probs = torch.empty(len(texts), len(names))  # (N, K)
    for idx in batches:
        x, lengths = split.tokens[idx], split.lengths[idx]  # (B, L), (B,)
        if right_padded:
            x = x[:, : int(lengths.max())]  # (B, longest in the batch)
        probs[idx] = forward(x, lengths if right_padded else None)
    out = []
    for p, n, row in zip(probs.tolist(), split.lengths.tolist(), ids):
        # Two classes: the second wins at p >= 0.5, ties included (argmax would give ties to the first).
        best = int(p[1] >= 0.5) if len(p) == 2 else max(range(len(p)), key=p.__getitem__)
        out.append(Prediction(p[1] if len(p) == 2 else p[best], names[best], int(n), words=len(row),
                              unknown=sum(i == OOV_ID for i in row), probabilities=dict(zip(names, p))))
    return out
