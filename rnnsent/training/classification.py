"""The classifier's task for the Trainer (rnnsent.training.task.Task): SentimentRNN, its loss and scores, the
epoch row, and the end of the run (test best.pt, write the report).

Imbalanced classes (docs/imbalance.md): the loss's class weights (--class-weight, class_weights), the positive
class of two (--positive-label), which the confusion counts are about, and the decision threshold (--threshold:
fixed, or tuned on the validation split after training, best_threshold), stored in best.pt and used for the
final test. The balanced sampler is the Batcher's (rnnsent.data.batches)."""
from __future__ import annotations

import contextlib

import torch

from rnnsent.config import TrainConfig, class_weights_given
from rnnsent.data import Batcher, PreparedData
from rnnsent.inference.evaluate import class_names, confusion_counts, evaluate, positive_class
from rnnsent.model import objective, recurrent
from rnnsent.model.sentiment import SentimentRNN, count_parameters
from rnnsent.runtime import autocast_context
from rnnsent.storage.checkpoint import load_checkpoint_state, save_checkpoint
from rnnsent.training import report
from rnnsent.training.regularise import EmbeddingPerturbation


RARE_SHARE = 0.1  # a class below this share of the training split makes the run suggest the imbalance settings


def class_counts(data: PreparedData, num_classes: int) -> tuple[list[str], list[int]]:
    """(class names, rows of each class in the training split)."""
    counts = torch.bincount(data.train.labels.long().cpu(), minlength=num_classes).tolist()
    return class_names(num_classes, data.meta.get("classes")), counts


def class_weights(spec: str, names: list[str], counts: list[int]) -> list[float] | None:
    """--class-weight's weight of each class (None for none): balanced is n / (k * n_class) over the training
    split's counts; LABEL=W,... names the classes' weights, the rest weigh 1. A label that is no class, or balanced
    with a class that has no training rows, is a ValueError."""
    if spec == "none":
        return None
    if spec == "balanced":
        if 0 in counts:
            raise ValueError(f"class_weight balanced: class {names[counts.index(0)]!r} has no training rows")
        return [sum(counts) / (len(counts) * c) for c in counts]
    given = class_weights_given(spec)
    unknown = [label for label in given if label not in names]
    if unknown:
        raise ValueError(f"class_weight names {unknown[0]!r}, which is not one of the classes ({', '.join(names)})")
    return [given.get(name, 1.0) for name in names]


def check_imbalance_settings(config: TrainConfig, data: PreparedData) -> list[str]:
    """The imbalance settings checked against the data's classes (a ValueError each, before any work), and the
    lines to log: the class weights, or a suggestion where a class is rare and nothing is done about it."""
    names, counts = class_counts(data, config.num_classes)
    weights = class_weights(config.class_weight, names, counts)
    if len(names) != 2 and config.threshold is not None:
        raise ValueError(f"threshold {config.threshold} needs two classes; the data has {len(names)} "
                         f"({', '.join(names)}), which are decided by the most probable one")
    positive_class(names, config.positive_label)  # two classes, one of them
    if weights is not None:
        return ["class weights: " + ", ".join(f"{n} {w:.4g}" for n, w in zip(names, weights))]
    smallest = min(range(len(counts)), key=counts.__getitem__)
    if config.sampler == "shuffle" and counts[smallest] < RARE_SHARE * sum(counts):
        return [f"class {names[smallest]} is {counts[smallest] / sum(counts):.1%} of the training rows: consider "
                "--class-weight balanced or --sampler balanced, and --monitor macro_f1 (docs/imbalance.md)"]
    return []


def best_threshold(p: torch.Tensor, positive: torch.Tensor) -> tuple[float, float]:
    """(threshold, F1) where predicting positive at p >= threshold gives the best F1 of the positive class on
    these rows (p (N,) its probabilities, positive (N,) bool). Of equal F1s the highest threshold wins; the
    threshold lies halfway between the lowest probability predicted positive and the next lower one (0 below
    the lowest), so these rows are decided the same with some margin. ValueError without positive rows."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ValueError("no positive rows to tune a threshold on")
    p = p.double()
    order = torch.argsort(p, descending=True, stable=True)
    p, positive = p[order], positive[order]
    tp = torch.cumsum(positive.double(), 0)  # (N,) true positives when the first i + 1 rows are predicted positive
    f1 = 2 * tp / (torch.arange(1, len(p) + 1, dtype=torch.float64) + n_pos)
    cut = torch.ones(len(p), dtype=torch.bool)  # a cut must not split equal probabilities
    cut[:-1] = p[:-1] > p[1:]
    f1 = torch.where(cut, f1, -1.0)
    i = int(torch.argmax(f1))  # the first maximum: the fewest rows predicted positive
    below = float(p[i + 1]) if i + 1 < len(p) else 0.0
    threshold = min(max((float(p[i]) + below) / 2, 1e-6), 1 - 1e-6)
    return threshold, float(f1[i])


class Classification:
    """Train a classifier: best.pt has the best validation accuracy (or macro-F1, or the --monitor metric)."""

    kind = None
    reports_accuracy = True

    def __init__(self):
        self._weights: dict = {}  # the loss's class weights on the run's device, worked out once

    def settings(self, config: TrainConfig) -> TrainConfig:
        return config

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        return SentimentRNN(**config.model_args(), impl=config.rnn_impl)

    def rnn_implementation(self, t) -> str:
        return recurrent.describe(t.config.rnn_impl, t.device)

    def forward_backward(self, t, model, x, lengths, y) -> tuple[torch.Tensor, torch.Tensor]:
        """With adversarial training, a second pass on perturbed embeddings adds its gradients
        (rnnsent.training.regularise.EmbeddingPerturbation)."""
        c = t.config
        with EmbeddingPerturbation(t.model.embedding) if c.adversarial else contextlib.nullcontext() as perturb:
            # DDP must not average the first of two backward passes on its own: the second one sums both
            with model.no_sync() if c.adversarial and hasattr(model, "no_sync") else contextlib.nullcontext():
                with autocast_context(t.device, c.amp):
                    logits = model(x, lengths)  # (B,) or (B, K)
                    loss = objective.loss(logits, y, smoothing=c.label_smoothing, weight=self.loss_weights(t))
                t.scaler.scale(loss).backward()
            if c.adversarial:
                perturb.aim(c.adversarial)
                with autocast_context(t.device, c.amp):
                    adversarial_loss = objective.loss(model(x, lengths), y, smoothing=c.label_smoothing,
                                                      weight=self.loss_weights(t))
                t.scaler.scale(adversarial_loss).backward()
        return loss, (objective.predicted(logits.detach()) == y.long()).sum()

    def loss_weights(self, t) -> torch.Tensor | None:
        """(K,) the loss's class weights (--class-weight) on the run's device, or None."""
        key = (id(t.data), t.config.class_weight, t.device)
        if key not in self._weights:
            weights = class_weights(t.config.class_weight, *class_counts(t.data, t.config.num_classes))
            self._weights[key] = None if weights is None else torch.tensor(weights, device=t.device)
        return self._weights[key]

    def positive(self, t) -> int | None:
        """The index of the positive class of two (--positive-label); None for more."""
        return positive_class(class_names(t.config.num_classes, t.data.meta.get("classes")), t.config.positive_label)

    def evaluate(self, t, split, batcher: Batcher) -> dict:
        """evaluate() on this rank's share of `split` (its batcher), summed over ranks."""
        return self.scores(t, split, batcher)

    def scores(self, t, split, batcher: Batcher, threshold: float | None = None) -> dict:
        """evaluate() with a decision threshold (None: the logits' sign, as validation decides)."""
        positive = self.positive(t)
        if len(batcher) == 0:  # more ranks than batches (evaluate() would take an empty batcher for none)
            k = t.model.num_classes
            r = {"loss": 0.0, "n": 0, "confusion_matrix": [[0] * k for _ in range(k)]}
        else:
            r = evaluate(t.model, split, device=t.device, amp=t.config.amp, batcher=batcher, threshold=threshold,
                         positive=1 if positive is None else positive)
        r = t.dist.sum_scores(r, t.device)
        if positive is not None:  # sum_scores counts tp, fp, tn, fn for the second class: these are the positive's
            r.update(confusion_counts(r["confusion_matrix"], positive))
        return r

    def validate(self, t, train_metrics: dict) -> tuple[dict, float]:
        c = t.config
        with t.averaged():
            val = self.evaluate(t, t.data.val, t.val_batches)
        row = {"epoch": t.epoch + 1, "global_step": t.global_step, **train_metrics, "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "lr": c.lr_at(t.global_step - 1, t.total_steps)}
        if c.num_classes > 2 or c.monitor:
            row["val_macro_f1"] = val["macro_f1"]
        predicted = [sum(column) for column in zip(*val["confusion_matrix"])]
        if val["n"] and max(predicted) == val["n"]:  # the model answers one class whatever it reads
            row["val_one_class"] = class_names(c.num_classes, t.data.meta.get("classes"))[predicted.index(val["n"])]
        monitored = c.monitored()
        return row, -val["loss"] if monitored == "loss" else val[monitored]

    def epoch_line(self, row: dict, improved: bool) -> str:
        one_class = row.get("val_one_class")
        return report.epoch_line(row, improved) + (f"; every validation prediction is {one_class}" if one_class
                                                   is not None else "")

    def finish(self, t) -> dict:
        """Test the best checkpoint (with the run's threshold, tuned first for --threshold auto), write report.json,
        the plot and the summary; return the report."""
        best_path = t.out / "best.pt"
        t.dist.barrier()  # rank 0 has finished writing best.pt
        if best_path.exists():
            t.model.load_state_dict(load_checkpoint_state(best_path)["model_state"])
        threshold = self.threshold(t)
        if threshold is not None and t.is_main and best_path.exists():  # predict, evaluate, serve and export read it
            state = load_checkpoint_state(best_path)
            save_checkpoint(best_path, {**state, "threshold": threshold}, keep_previous=False)
        test = self.scores(t, t.data.test, t.test_batches, threshold)
        result = report.final_report(t.config.cell, test, t.best_val, t.history, t.device,
                                     self.rnn_implementation(t), count_parameters(t.model),
                                     t.config.monitored(), t.data.meta.get("classes"))
        positive = self.positive(t)
        if positive is not None:
            result.update(positive_label=class_names(2, t.data.meta.get("classes"))[positive],
                          threshold=0.5 if threshold is None else threshold)
        if t.is_main:
            keras_steps = t.config.max_len if t.config.encoding == "keras" else None
            t.log(report.write_report(t.out, result, test, t.history, t.model.summary(time_steps=keras_steps)))
        return result

    def threshold(self, t) -> float | None:
        """The run's decision threshold: --threshold's number, or for auto the one best_threshold finds on the
        validation split with best.pt's weights (every rank alike: each scores the whole split); None unset."""
        setting = t.config.threshold
        if setting is None or setting != "auto":
            return None if setting is None else float(setting)
        positive = self.positive(t)
        p, y = validation_probabilities(t.model, t.data.val, positive, t.config.eval_batch_size, t.device)
        name = class_names(2, t.data.meta.get("classes"))[positive]
        try:
            threshold, f1 = best_threshold(p, y == positive)
        except ValueError:
            t.log(f"threshold auto: the validation split has no {name} rows to tune on; it stays 0.5", always=True)
            return 0.5
        at_half = 2 * int(((p >= 0.5) & (y == positive)).sum()) / (int((p >= 0.5).sum()) + int((y == positive).sum()))
        t.log(f"threshold {threshold:.4g}: the best validation F1 of {name} ({f1:.4f}; {at_half:.4f} at 0.5)")
        return threshold


@torch.no_grad()
def validation_probabilities(model, split, positive: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(p (N,) the positive class's probability, y (N,) class index) of every row of `split`, computed as predict()
    computes them (float32, no autocast), so a threshold decides these rows as it will decide texts."""
    batcher = Batcher(split, batch_size=batch_size, shuffle=False, bucket=split.padding == "post", device=device)
    was_training = model.training
    model.eval()
    ps, ys = [], []
    for x, lengths, y in batcher.iterate(0):
        logits = model(x, lengths if split.padding == "post" else None)  # (B,)
        ps.append(objective.probabilities(logits)[:, positive].cpu())
        ys.append(y.long().cpu())
    model.train(was_training)
    return torch.cat(ps), torch.cat(ys)
