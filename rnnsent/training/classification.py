"""The classifier's task for the Trainer (rnnsent.training.task.Task): SentimentRNN, its loss and scores, the
epoch row, and the end of the run (test best.pt, write the report)."""
from __future__ import annotations

import contextlib

import torch

from rnnsent.config import TrainConfig
from rnnsent.data import Batcher
from rnnsent.inference.evaluate import evaluate
from rnnsent.model import objective, recurrent
from rnnsent.model.sentiment import SentimentRNN, count_parameters
from rnnsent.runtime import autocast_context
from rnnsent.storage.checkpoint import load_checkpoint_state
from rnnsent.training import report
from rnnsent.training.regularise import EmbeddingPerturbation


class Classification:
    """Train a classifier: best.pt has the best validation accuracy (or macro-F1, or the --monitor metric)."""

    kind = None
    reports_accuracy = True

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
                    loss = objective.loss(logits, y, smoothing=c.label_smoothing)
                t.scaler.scale(loss).backward()
            if c.adversarial:
                perturb.aim(c.adversarial)
                with autocast_context(t.device, c.amp):
                    adversarial_loss = objective.loss(model(x, lengths), y, smoothing=c.label_smoothing)
                t.scaler.scale(adversarial_loss).backward()
        return loss, (objective.predicted(logits.detach()) == y.long()).sum()

    def evaluate(self, t, split, batcher: Batcher) -> dict:
        """evaluate() on this rank's share of `split` (its batcher), summed over ranks."""
        if len(batcher) == 0:  # more ranks than batches (evaluate() would take an empty batcher for none)
            k = t.model.num_classes
            r = {"loss": 0.0, "n": 0, "confusion_matrix": [[0] * k for _ in range(k)]}
        else:
            r = evaluate(t.model, split, device=t.device, amp=t.config.amp, batcher=batcher)
        return t.dist.sum_scores(r, t.device)

    def validate(self, t, train_metrics: dict) -> tuple[dict, float]:
        c = t.config
        with t.averaged():
            val = self.evaluate(t, t.data.val, t.val_batches)
        row = {"epoch": t.epoch + 1, "global_step": t.global_step, **train_metrics, "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "lr": c.lr_at(t.global_step - 1, t.total_steps)}
        if c.num_classes > 2 or c.monitor:
            row["val_macro_f1"] = val["macro_f1"]
        monitored = c.monitored()
        return row, -val["loss"] if monitored == "loss" else val[monitored]

    def epoch_line(self, row: dict, improved: bool) -> str:
        return report.epoch_line(row, improved)

    def finish(self, t) -> dict:
        """Test the best checkpoint, write report.json, the plot and the summary; return the report."""
        best_path = t.out / "best.pt"
        t.dist.barrier()  # rank 0 has finished writing best.pt
        if best_path.exists():
            t.model.load_state_dict(load_checkpoint_state(best_path)["model_state"])
        test = self.evaluate(t, t.data.test, t.test_batches)
        result = report.final_report(t.config.cell, test, t.best_val, t.history, t.device,
                                     self.rnn_implementation(t), count_parameters(t.model),
                                     t.config.monitored(), t.data.meta.get("classes"))
        if t.is_main:
            keras_steps = t.config.max_len if t.config.encoding == "keras" else None
            t.log(report.write_report(t.out, result, test, t.history, t.model.summary(time_steps=keras_steps)))
        return result
