"""What the model's logits mean: the loss, the predicted class and the class probabilities.

Two classes: one logit per row (B,), sigmoid and binary cross-entropy, exactly Keras' Dense(1, sigmoid).
K > 2 classes: K logits per row (B, K), softmax and cross-entropy, what Keras' Dense(K, softmax) with
sparse_categorical_crossentropy computes. Targets are class indices held as floats (0.0, 1.0, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", smoothing: float = 0.0) -> torch.Tensor:
    """The training objective; `smoothing` s trains toward (1 - s) * one-hot + s / classes (label smoothing)."""
    logits = logits.float()
    if logits.dim() == 1:  # (B,)
        if smoothing:
            targets = targets * (1.0 - smoothing) + 0.5 * smoothing
        return F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)
    return F.cross_entropy(logits, targets.long(), reduction=reduction, label_smoothing=smoothing)  # (B, K)


def predicted(logits: torch.Tensor) -> torch.Tensor:
    """(B,) int64 class indices."""
    return (logits > 0).long() if logits.dim() == 1 else logits.argmax(-1)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) probabilities of every class (K = 2 for one logit: [1 - p, p])."""
    logits = logits.float()
    if logits.dim() == 1:
        p = torch.sigmoid(logits)
        return torch.stack([1 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)
