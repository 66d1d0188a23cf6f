"""Evaluation (loss, accuracy, confusion counts) and prediction on raw review text."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnsent.data import Batcher, EncodedSplit, Vocab, encode_fast, encode_keras, tokenize
from rnnsent.data.text import OOV_ID
from rnnsent.models import SentimentRNN


def autocast_context(device: torch.device, amp: str | None):
    """bf16/fp16 autocast on CUDA; a no-op elsewhere so one loop serves every device."""
    if amp in (None, "none", "off") or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(
    model: SentimentRNN,
    split: EncodedSplit,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: str | None = None,
    batcher: Batcher | None = None,
) -> dict:
    """Loss, accuracy and confusion counts of `model` on a whole encoded split.

    Batch size does not change the result (no batch statistics), so evaluation uses large,
    length-bucketed batches. Sums stay on the device; one host sync at the end.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if batcher is None:  # (an empty shard is a falsy Batcher, so no `or` here)
        batcher = Batcher(split, batch_size=batch_size, shuffle=False, seed=0,
                          bucket=split.padding == "post", device=device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, tp, fp, tn, fn
    for x, lengths, y in batcher.iterate(0):
        with autocast_context(device, amp):
            logits = model(x, lengths if split.padding == "post" else None)  # (B,)
        logits = logits.float()
        pred = logits > 0
        pos = y > 0.5
        sums += torch.stack([
            F.binary_cross_entropy_with_logits(logits, y, reduction="sum").double(),
            (pred & pos).sum().double(), (pred & ~pos).sum().double(),
            (~pred & ~pos).sum().double(), (~pred & pos).sum().double(),
        ])
    model.train(was_training)
    loss, tp, fp, tn, fn = sums.tolist()
    n = tp + fp + tn + fn
    return {
        "loss": loss / max(n, 1), "accuracy": (tp + tn) / max(n, 1),
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn), "n": int(n),
    }


@dataclass(frozen=True)
class Prediction:
    probability: float  # P(positive)
    label: str  # "positive" or "negative"
    tokens: int  # tokens the model saw, start token included (after truncation to max_len)
    words: int = 0  # words and punctuation marks in the text, before truncation
    unknown: int = 0  # of those, how many are outside the vocabulary

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


@torch.no_grad()
def predict(
    model: SentimentRNN,
    texts: list[str],
    vocab: Vocab,
    max_len: int = 500,
    encoding: str = "keras",
    device: torch.device | str | None = None,
    batch_size: int = 256,
) -> list[Prediction]:
    """Sentiment of each raw review text (str, or UTF-8 bytes). Empty or odd text is fine: it becomes the start
    token alone, and its Prediction.note says so ("empty", "no known words")."""
    if isinstance(texts, (str, bytes, bytearray)):
        texts = [texts]
    for t in texts:
        if not isinstance(t, (str, bytes, bytearray)):  # bytes(5) would be five NUL bytes, scored as a review
            raise TypeError(f"predict takes review texts (str, or bytes in UTF-8), got {type(t).__name__} {t!r:.40}")
    texts = [t if isinstance(t, str) else bytes(t).decode("utf-8", errors="replace") for t in texts]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = [vocab.encode(tokenize(t)) for t in texts]
    labels = [0] * len(ids)
    split = (encode_keras if encoding == "keras" else encode_fast)(ids, labels, max_len)
    was_training = model.training
    model.eval()
    probs = torch.empty(len(texts))
    for start in range(0, len(texts), batch_size):
        sl = slice(start, start + batch_size)
        x = split.tokens[sl].to(device)
        lengths = split.lengths[sl]
        if split.padding == "post":
            x = x[:, : int(lengths.max())]
        logits = model(x, lengths.to(device) if split.padding == "post" else None)
        probs[sl] = torch.sigmoid(logits.float()).cpu()
    model.train(was_training)
    return [
        Prediction(float(p), "positive" if p >= 0.5 else "negative", int(n), len(row), sum(i == OOV_ID for i in row))
        for p, n, row in zip(probs.tolist(), split.lengths.tolist(), ids)
    ]
