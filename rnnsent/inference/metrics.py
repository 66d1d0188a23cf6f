"""The evaluation report's numbers, from each row's true class and class probabilities, computed with scikit-learn
(an optional extra: pip install 'rnnsent[report]').

    y (N,) true class indices, probs (N, K) class probabilities  ->  metrics(y, probs, labels, threshold, positive)

Two classes: a row is predicted positive when P(positive) >= threshold (the rule of predict(), 0.5 by default), and
roc_auc, average_precision and the curves are about the positive class. More classes: the most probable class;
roc_auc and average_precision are one-vs-rest, averaged over the classes the rows hold (a class without rows, or
with every row, has no curve; scikit-learn's macro average would be NaN). Precision, recall and F1 of a class that
is never predicted, or has no rows, are 0 (scikit-learn's zero_division=0); macro-F1 counts every class of the
model. ECE: the predicted class's probability in 15 equal-width bins ((0, 1/15], ..., (14/15, 1], with 0 in the
first), sum over bins of (rows in the bin / N) * |accuracy - mean probability|.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

ECE_BINS = 15


def sklearn_metrics():
    """sklearn.metrics, or a one-line ImportError that says how to install it."""
    try:
        from sklearn import metrics
    except ImportError:
        raise ImportError("the evaluation report needs scikit-learn and matplotlib: pip install 'rnnsent[report]'"
                          ) from None
    return metrics


def predicted_classes(probs: np.ndarray, threshold: float | None = 0.5, positive: int | None = 1) -> np.ndarray:
    """(N,) the predicted class of each row: two classes by P(positive) >= threshold, more by the largest."""
    if probs.shape[1] == 2:
        return np.where(probs[:, positive] >= threshold, positive, 1 - positive)
    return probs.argmax(axis=1)


def reliability(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, bins: int = ECE_BINS) -> dict:
    """The reliability diagram's bins of the predicted class's probability: rows, accuracy and mean probability per
    bin (None where empty), and the ECE."""
    confidence = probs[np.arange(len(pred)), pred]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, bins - 1)  # (lo, hi]; 0 in the first
    counts = np.bincount(which, minlength=bins)
    right = np.bincount(which, weights=(pred == y).astype(np.float64), minlength=bins)
    summed = np.bincount(which, weights=confidence.astype(np.float64), minlength=bins)
    filled = counts > 0
    accuracy = np.divide(right, counts, out=np.zeros(bins), where=filled)
    mean = np.divide(summed, counts, out=np.zeros(bins), where=filled)
    ece = float(np.sum(counts[filled] / max(len(y), 1) * np.abs(accuracy[filled] - mean[filled])))
    return {"edges": edges.tolist(), "counts": counts.tolist(), "ece": ece,
            "accuracy": [float(a) if f else None for a, f in zip(accuracy, filled)],
            "confidence": [float(c) if f else None for c, f in zip(mean, filled)]}


def one_vs_rest(y: np.ndarray, probs: np.ndarray, score) -> list[float | None]:
    """score(is class k, P(class k)) for each class k; None where the rows hold none of k, or only k."""
    out = []
    for k in range(probs.shape[1]):
        hit = y == k
        out.append(float(score(hit, probs[:, k])) if 0 < hit.sum() < len(y) else None)
    return out


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def metrics(y, probs, labels: list[str], threshold: float | None = 0.5, positive: int | None = 1) -> dict:
    """metrics.json's numbers (module docstring) for true classes `y` (N,) and probabilities `probs` (N, K) of
    the classes named `labels`. threshold and positive matter for two classes only."""
    m = sklearn_metrics()
    y, probs = np.asarray(y, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    k, binary = probs.shape[1], probs.shape[1] == 2
    ks = list(range(k))
    pred = predicted_classes(probs, threshold, positive)
    with warnings.catch_warnings():  # the undefined cases are defined above (0, or left out of the average)
        warnings.simplefilter("ignore")
        precision, recall, f1, support = m.precision_recall_fscore_support(y, pred, labels=ks, zero_division=0)
        auc = one_vs_rest(y, probs, m.roc_auc_score)
        ap = one_vs_rest(y, probs, m.average_precision_score)
        out = {
            "accuracy": float(m.accuracy_score(y, pred)),
            "macro_f1": float(m.f1_score(y, pred, labels=ks, average="macro", zero_division=0)),
            "weighted_f1": float(m.f1_score(y, pred, labels=ks, average="weighted", zero_division=0)),
            "per_class": {labels[c]: {"precision": float(precision[c]), "recall": float(recall[c]),
                                      "f1": float(f1[c]), "support": int(support[c])} for c in ks},
            "roc_auc": auc[positive] if binary else _mean(auc),
            "average_precision": ap[positive] if binary else _mean(ap),
            "log_loss": float(m.log_loss(y, probs, labels=ks)),
            "brier": float(m.brier_score_loss(y, probs, labels=ks)),
        }
    return {**out, "ece": reliability(y, probs, pred)["ece"],
            "confusion_matrix": m.confusion_matrix(y, pred, labels=ks).tolist(), "labels": list(labels),
            "threshold": threshold if binary else None, "positive_class": labels[positive] if binary else None,
            "n": int(len(y))}


def most_confused(confusion: list[list[int]], labels: list[str], top: int = 10) -> list[dict]:
    """The largest off-diagonal cells: {true, predicted, count, share of the true class's rows}, most first."""
    cells = [(confusion[t][p], t, p) for t in range(len(labels)) for p in range(len(labels)) if t != p]
    cells = sorted((c for c in cells if c[0] > 0), key=lambda c: (-c[0], c[1], c[2]))[:top]
    return [{"true": labels[t], "predicted": labels[p], "count": n, "share": n / sum(confusion[t])}
            for n, t, p in cells]


def finite(value):
    """value for JSON: a NaN or infinite number becomes None (JSON has neither)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
