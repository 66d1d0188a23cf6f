"""rnnsent evaluate --report DIR: how good a model is and where it fails, as three files.

    metrics.json      the numbers (rnnsent.inference.metrics, computed with scikit-learn) and where the rows came from
    predictions.csv   a row per text: index (its place in the split), true, predicted, p_<label> for every class,
                      loss (the model's own, from its logits) and text
    report.html       one self-contained page (no scripts, no network; figures inline as PNG, drawn by matplotlib's
                      Agg renderer): the headline numbers, the per-class table, the confusion matrix, ROC and
                      precision-recall curves, the reliability diagram, the predicted probabilities per true class,
                      the most confused pairs (more than two classes) and the worst-classified texts (highest loss)
                      with their word attributions toward the predicted class (rnnsent.inference.explain)

The folder is written whole or not at all: the files are made in a new folder beside it, which then takes its
place (or, when it exists, each file replaces its old one in a single rename). Every text on the page is escaped.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnsent.inference.evaluate import class_names, positive_class
from rnnsent.inference.metrics import finite, metrics, most_confused, predicted_classes, reliability, sklearn_metrics
from rnnsent.inference.report_page import page
from rnnsent.model import objective

FILES = ("metrics.json", "predictions.csv", "report.html")
WORST = 20  # worst-classified texts shown, by default
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """A split's rows as the model scored them."""

    y: np.ndarray  # (N,) true class indices
    probs: np.ndarray  # (N, K) float32 class probabilities
    losses: np.ndarray  # (N,) float32 the model's loss per row (from its logits)
    labels: list[str]  # the class names
    threshold: float | None  # two classes: P(positive) >= threshold is predicted positive
    positive: int | None  # two classes: the positive class's index

    @property
    def pred(self) -> np.ndarray:
        return predicted_classes(self.probs, self.threshold, self.positive)


def check_report_dir(path) -> Path:
    """The report's folder, refused in one line before any work when it is a file or cannot be written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--report {path} is a file; give a folder (made if missing) for report.html, metrics.json "
                         "and predictions.csv")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--report {path}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--report {path}: {existing} is not writable")
    return path


@torch.no_grad()
def score_split(loaded, split, batch_size: int = 512, device=None) -> Scored:
    """Every row's class probabilities and loss, in the split's order (batched by length, longest first; a row's
    result does not depend on its batch)."""
    model = loaded.model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    n, post = len(split), split.padding == "post"
    order = torch.argsort(split.lengths, descending=True, stable=True) if post else torch.arange(n)
    logits = torch.empty((n,) if model.num_classes == 2 else (n, model.num_classes))
    try:
        for start in range(0, n, batch_size):
            idx = order[start: start + batch_size]
            x, lengths = split.tokens[idx], split.lengths[idx]  # (B, L), (B,)
            if post:
                x = x[:, : int(lengths.max())]
            logits[idx] = model(x.to(device), lengths.to(device) if post else None).float().cpu()
    finally:
        model.train(was_training)
    labels = class_names(model.num_classes, loaded.classes)
    binary = len(labels) == 2
    threshold = getattr(loaded, "threshold", None)
    return Scored(y=split.labels.long().numpy(), probs=objective.probabilities(logits).numpy(),
                  losses=objective.loss(logits, split.labels, reduction="none").numpy(), labels=labels,
                  threshold=(0.5 if threshold is None else float(threshold)) if binary else None,
                  positive=positive_class(labels, getattr(loaded, "positive_label", None)) if binary else None)


def report_metrics(s: Scored, source: dict) -> dict:
    """metrics.json: the numbers of rnnsent.inference.metrics, then where the rows came from ("data")."""
    out = metrics(s.y, s.probs, s.labels, s.threshold, s.positive)
    return {k: finite(v) for k, v in out.items()} | {"data": source}


def predictions_csv(s: Scored, texts: list[str] | None) -> str:
    """predictions.csv: index, true, predicted, p_<label> for every class, loss, text (floats exactly as computed)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "true", "predicted", *(f"p_{label}" for label in s.labels), "loss", "text"])
    pred = s.pred
    for i in range(len(s.y)):
        w.writerow([i, s.labels[s.y[i]], s.labels[pred[i]], *(repr(float(p)) for p in s.probs[i]),
                    repr(float(s.losses[i])), texts[i] if texts is not None else ""])
    return buf.getvalue()


def worst_rows(s: Scored, n: int) -> list[int]:
    """The n rows of highest loss, highest first (ties: the earlier row first)."""
    return np.argsort(-s.losses, kind="stable")[:n].tolist()


def attributions_for(loaded, s: Scored, rows: list[int], texts: list[str], wanted: bool) -> tuple[dict, str | None]:
    """({row: its Explanation toward the predicted class}, None) or ({}, why there are none)."""
    if not rows:
        return {}, None
    if not wanted:
        return {}, "word attributions were left out (--no-attributions)"
    try:
        from rnnsent.inference.explain import explain

        by_target = {}
        for row in rows:
            by_target.setdefault(s.labels[s.pred[row]], []).append(row)
        out = {}
        for target, group in by_target.items():
            out.update(zip(group, explain(loaded, [texts[r] for r in group], target=target)))
        return out, None
    except ImportError as e:
        return {}, f"no word attributions: {e}"


def write_report(path, metrics_json: dict, csv_text: str, page: str) -> Path:
    """The three files into the folder `path`, whole or not at all (module docstring); OSError in one line."""
    path = check_report_dir(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"  # beside it: one rename
        tmp.mkdir()  # (not mkdtemp, whose folder is private: the report gets the folder rights of the umask)
    except OSError as e:
        raise OSError(f"--report {path}: {e.strerror or e}") from None
    try:
        (tmp / "metrics.json").write_text(json.dumps(metrics_json, indent=2) + "\n", encoding="utf-8")
        (tmp / "predictions.csv").write_text(csv_text, encoding="utf-8")
        (tmp / "report.html").write_text(page, encoding="utf-8")
        if path.is_dir():
            for name in FILES:
                os.replace(tmp / name, path / name)
        else:
            os.rename(tmp, path)
    except OSError as e:
        raise OSError(f"--report {path}: {e.strerror or e}; nothing was written there") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def make_report(loaded, held, name: str, out, worst: int = WORST, attributions: bool = True, batch_size: int = 512,
                device=None) -> tuple[Scored, dict]:
    """Score `held` (a HeldOut with texts) with `loaded`, write the report into the folder `out`; (the scored rows,
    metrics.json's contents)."""
    sklearn_metrics()  # the one-line install hint before any work
    check_report_dir(out)
    s = score_split(loaded, held.split, batch_size, device)
    m = report_metrics(s, {"checkpoint": name, **held.source})
    texts = held.texts if held.texts is not None else [""] * len(s.y)
    rows = worst_rows(s, worst)
    explained, why_not = attributions_for(loaded, s, rows, texts, attributions)
    write_report(out, m, predictions_csv(s, held.texts),
                 page(s, m, reliability(s.y, s.probs, s.pred), most_confused(m["confusion_matrix"], s.labels),
                      [(r, texts[r], explained.get(r)) for r in rows], why_not, name, held.what))
    return s, m

