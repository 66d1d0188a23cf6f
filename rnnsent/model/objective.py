"""What the model's logits mean: the loss, the predicted class and the class probabilities.

Two classes: one logit per row (B,), sigmoid and binary cross-entropy, exactly Keras' Dense(1, sigmoid).
K > 2 classes: K logits per row (B, K), softmax and cross-entropy, what Keras' Dense(K, softmax) with
sparse_categorical_crossentropy computes. Targets are class indices held as floats (0.0, 1.0, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", smoothing: float = 0.0,
         weight: torch.Tensor | None = None) -> torch.Tensor:
    """The training objective; `smoothing` s trains toward (1 - s) * one-hot + s / classes (label smoothing).

    `weight` (K,) weighs each row's loss by its class, as nn.CrossEntropyLoss(weight=...) does: the mean is
    sum(w[y] * loss) / sum(w[y]). Two classes mean the same (BCEWithLogitsLoss with per-row weights w[y],
    summed and divided by their sum), so the one logit and a softmax over [0, logit] give the same loss."""
    logits = logits.float()
    if logits.dim() == 1:  # (B,)
        row_weight = None if weight is None else weight.float()[targets.long()]  # (B,)
        if smoothing:
            targets = targets * (1.0 - smoothing) + 0.5 * smoothing
        if row_weight is None or reduction == "none":
            return F.binary_cross_entropy_with_logits(logits, targets, weight=row_weight, reduction=reduction)
        weighted = F.binary_cross_entropy_with_logits(logits, targets, weight=row_weight, reduction="sum")
        return weighted / row_weight.sum() if reduction == "mean" else weighted
    return F.cross_entropy(logits, targets.long(), weight=None if weight is None else weight.float(),
                           reduction=reduction, label_smoothing=smoothing)  # (B, K)


def predicted(logits: torch.Tensor, threshold: float | None = None, positive: int = 1) -> torch.Tensor:
    """(B,) int64 class indices. Two classes with a `threshold`: the `positive` class (0 or 1) where its
    probability is at least the threshold, compared as predict() compares it (float32 probabilities)."""
    if logits.dim() == 1 and threshold is not None:
        p = probabilities(logits)[:, positive]  # (B,)
        return torch.where(p >= threshold, positive, 1 - positive)
    return (logits > 0).long() if logits.dim() == 1 else logits.argmax(-1)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) probabilities of every class (K = 2 for one logit: [1 - p, p])."""
    logits = logits.float()
    if logits.dim() == 1:
        p = torch.sigmoid(logits)
        return torch.stack([1 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)
