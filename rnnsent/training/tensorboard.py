"""Training in TensorBoard (`rnnsent train --tensorboard DIR`): a Trainer callback, like one a user could write.

Per step (every log_every steps, averaged over them): train/loss, train/accuracy (a classifier's), train/lr,
train/grad_norm (before clipping) and train/samples_per_second. Per epoch, at its last global step: every number
of the epoch's metrics.jsonl row as epoch/<name> (train_loss, train_accuracy, val_loss, val_accuracy, lr,
samples_per_second, ...). At the start, the run's settings as TensorBoard hyperparameters, against the
validation metrics. TensorBoard itself is an optional extra: pip install 'rnnsent[tensorboard]'.
"""
from __future__ import annotations

import numbers
import time

import torch

HPARAM_METRICS = ("epoch/val_accuracy", "epoch/val_loss")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter, summary
    except ImportError:  # torch's wrapper raises this when the tensorboard package is missing
        raise ImportError("--tensorboard needs TensorBoard: pip install 'rnnsent[tensorboard]'") from None
    return SummaryWriter, summary


class TensorBoardWriter:
    """Writes a run's curves into `log_dir` through torch.utils.tensorboard.SummaryWriter.

    attach(trainer) registers it for on_step_end and on_epoch_end. Sums stay on the device between writes, so
    logging adds one host sync per `every` steps (the trainer's log_every by default), as the progress bar does."""

    def __init__(self, log_dir: str, every: int | None = None):
        self.log_dir, self.every = str(log_dir), every
        self._writer_class, self._summary = _summary_writer()  # fails now, before any training, if it is missing
        self.writer = None
        self._reset()

    def _reset(self) -> None:
        self.sums, self.steps, self.samples, self.t0 = None, 0, 0, time.perf_counter()

    def attach(self, trainer) -> "TensorBoardWriter":
        trainer.add_callback("on_step_end", self.on_step_end)
        trainer.add_callback("on_epoch_end", self.on_epoch_end)
        return self

    def _open(self, trainer) -> None:
        self.writer = self._writer_class(self.log_dir)
        hparams = {k: v if isinstance(v, (bool, str, numbers.Number)) else str(v)
                   for k, v in trainer.config.to_dict().items()}
        for part in self._summary.hparams(hparams, {m: float("nan") for m in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(part)

    def on_step_end(self, trainer) -> None:
        if self.writer is None:
            self._open(trainer)
        s = trainer.last_step
        step = torch.stack([s.loss.double() * s.samples, s.correct.double(), s.grad_norm.double()])
        self.sums = step if self.sums is None else self.sums + step
        self.steps, self.samples = self.steps + 1, self.samples + s.samples
        if self.steps < (self.every or trainer.config.log_every):
            return
        loss_sum, correct, norm_sum = self.sums.tolist()  # the one host sync
        seconds = time.perf_counter() - self.t0
        g = trainer.global_step
        self.writer.add_scalar("train/loss", loss_sum / self.samples, g)
        if trainer.task.reports_accuracy:
            self.writer.add_scalar("train/accuracy", correct / self.samples, g)
        self.writer.add_scalar("train/lr", s.lr, g)
        self.writer.add_scalar("train/grad_norm", norm_sum / self.steps, g)
        self.writer.add_scalar("train/samples_per_second", self.samples / seconds if seconds > 0 else 0.0, g)
        self._reset()

    def on_epoch_end(self, trainer) -> None:
        if self.writer is None:
            self._open(trainer)
        row = trainer.history[-1]
        for name, value in row.items():
            if name not in ("epoch", "global_step") and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{name}", value, row["global_step"])
        self.writer.add_scalar("epoch/epoch", row["epoch"], row["global_step"])
        self.writer.flush()
        self._reset()  # validation time is not training time

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
