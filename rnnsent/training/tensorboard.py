"""Training in TensorBoard (`rnnsent train --tensorboard DIR`): a Trainer callback, like one a user could write.

Per step (every log_every steps, averaged over them): train/loss, train/accuracy (a classifier's), train/lr,
train/grad_norm (before clipping) and train/samples_per_second. Per epoch, at its last global step: every number
of the epoch's metrics.jsonl row as epoch/<name> (train_loss, train_accuracy, val_loss, val_accuracy, lr,
samples_per_second, ...). At the start, the run's settings as TensorBoard hyperparameters, against the
validation metrics. TensorBoard itself is an optional extra: pip install 'rnnsent[tensorboard]'.

`--tensorboard DIR` gives each run a subfolder of its own (run_log_dir): event files in one folder are one
TensorBoard run, so two runs writing into DIR itself would merge into one set of curves.
"""
from __future__ import annotations

import numbers
import tempfile
import time
from pathlib import Path

import torch

HPARAM_METRICS = ("epoch/val_accuracy", "epoch/val_loss")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter, summary
    except ImportError:  # torch's wrapper raises this when the tensorboard package is missing
        raise ImportError("--tensorboard needs TensorBoard: pip install 'rnnsent[tensorboard]'") from None
    return SummaryWriter, summary


def run_log_dir(root: str, out: str, recorded: str | None = None) -> str:
    """Where a run given `--tensorboard root` writes: root/<its run folder's name>-<start time>, a folder no
    other run uses (-2, -3, ... where two start in the same second). A resumed run continues where its checkpoint
    says it wrote (`recorded`) when that is root itself (an earlier rnnsent wrote there) or a subfolder of it."""
    root_path = Path(root)
    if recorded and root_path.resolve() in (Path(recorded).resolve(), Path(recorded).resolve().parent):
        return str(recorded)
    name = f"{Path(out).resolve().name or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    taken = 1
    while (root_path / (name if taken == 1 else f"{name}-{taken}")).exists():
        taken += 1
    return str(root_path / (name if taken == 1 else f"{name}-{taken}"))


def check_log_dir(log_dir: str, flag: str = "--tensorboard") -> None:
    """Refuse, in one line and before any work, a log folder TensorBoard could not write: an existing file, a
    file on the way to it, a place that cannot be written. Its parent is made (the folder itself is the writer's)."""
    path = Path(log_dir)
    on_the_way = next((p for p in (path, *path.parents) if p.exists()), None)
    if on_the_way is not None and not on_the_way.is_dir():
        raise ValueError(f"{flag} {log_dir}: {on_the_way} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in (path.parent, *([path] if path.is_dir() else [])):
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ValueError(f"{flag} {log_dir}: cannot write there ({e.strerror or e})") from None


class TensorBoardWriter:
    """Writes a run's curves into `log_dir` through torch.utils.tensorboard.SummaryWriter.

    attach(trainer) registers it for on_step_end and on_epoch_end. Sums stay on the device between writes, so
    logging adds one host sync per `every` steps (the trainer's log_every by default), as the progress bar does."""

    def __init__(self, log_dir: str, every: int | None = None):
        self.log_dir, self.every = str(log_dir), every
        self._writer_class, self._summary = _summary_writer()  # fails now, before any training, if it is missing
        check_log_dir(self.log_dir)  # and so does a folder it could not write
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
