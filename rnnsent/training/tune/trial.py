"""One trial of a search: a normal training run in its own folder (<out>/trial-NNNN: config.json, metrics.jsonl,
best.pt, last.pt), with the trial's settings. After every epoch the validation metric goes to the pruner (Optuna's
trial.report); a pruned trial stops there, between epochs, with its checkpoints of that epoch written, as a run
stopped by Ctrl-C leaves them. The trial's value is the run's best validation score; the test split is only
scored by the run's own final test (report.json), which the search never reads.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import socket
from pathlib import Path

from rnnsent.training.stopping import NonFiniteLoss, TrainingInterrupted
from rnnsent.training.tune.study import Tune


class TrialFailed(Exception):
    """The trial's own settings failed it (a non-finite loss, a combination a setting refuses): the search goes on."""


def trial_folder(out: Path, number: int) -> Path:
    return out / f"trial-{number:04d}"


def _fail(trial, message: str) -> TrialFailed:
    trial.set_user_attr("error", message[:500])
    return TrialFailed(message)


class Objective:
    """Optuna's objective: trial -> the run's best validation score. `data` is the prepared data every trial
    shares (None where the space varies how it is prepared); `stop` the worker's StopFlag, read between steps."""

    def __init__(self, t: Tune, data=None, stop=None):
        self.t, self.data, self.stop = t, data, stop
        self.current = None  # the trial running now, for a worker stopped in the middle of it
        self.best = None  # its best validation metric so far

    def __call__(self, trial) -> float:
        from rnnsent.training.trainer import Trainer

        self.current, self.best = trial, None
        t = self.t
        folder = trial_folder(t.out, trial.number)
        for key, value in (("folder", str(folder.resolve())), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        try:
            config = dataclasses.replace(t.base, **t.space.suggest(trial), out=str(folder), quiet=True, resume=None,
                                         overwrite=False, tensorboard=None, threads=t.threads)
            trainer = Trainer(config, None if t.space.varies_data() else self.data)
        except ValueError as e:  # a combination of settings the run refuses
            raise _fail(trial, str(e)) from None
        board = self._tensorboard(trainer, trial.number)
        trainer.add_callback("on_epoch_end", self._report(trial))
        trainer.add_callback("on_step_end", self._stop_between_steps)
        try:
            trainer.fit()
        except NonFiniteLoss as e:
            raise _fail(trial, str(e).split(";")[0]) from None
        except TrainingInterrupted as e:
            trial.set_user_attr("stopped", str(e).split(";")[0][:200])
            raise
        finally:
            if board is not None:
                board.close()
            del trainer
            gc.collect()
        return self.best

    def _tensorboard(self, trainer, number: int):
        """--tensorboard DIR: the trial's curves and settings (TensorBoard's hyperparameters) in DIR/trial-NNNN."""
        if not self.t.base.tensorboard:
            return None
        from rnnsent.training.tensorboard import TensorBoardWriter

        return TensorBoardWriter(str(trial_folder(Path(self.t.base.tensorboard), number))).attach(trainer)

    def _report(self, trial):
        """The on_epoch_end callback: the epoch's validation metric to the pruner, and the best so far recorded."""
        import optuna

        metric, sign = self.t.metric, -1 if self.t.direction == "minimize" else 1

        def report(trainer) -> None:
            value = trainer.history[-1][metric]
            trial.report(value, trainer.epoch)
            trial.set_user_attr("epochs", trainer.epoch)
            self.best = sign * trainer.best_val  # the task's score is -loss for loss
            if trainer.epoch < trainer.config.epochs and trial.should_prune():  # after the last: nothing to save
                raise optuna.TrialPruned(f"pruned after epoch {trainer.epoch}: {metric} {value:.4f}")

        return report

    def _stop_between_steps(self, trainer) -> None:
        """A signal that reached the worker outside the Trainer's own handler (while the trial was being set up)
        stops the run at the next step, as Ctrl-C does: last.pt saved."""
        if self.stop is not None and self.stop.requested:
            raise KeyboardInterrupt
