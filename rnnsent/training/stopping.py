"""How a training run stops before its end, and what it tells the user: a signal (Ctrl-C, SIGTERM, a
second Ctrl-C mid-step, one during the final test) or a non-finite loss. Each message says what is saved
and the command that continues."""
from __future__ import annotations

import signal


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C or SIGTERM; exit_code is what a shell reports for that signal (130, 143)."""

    def __init__(self, message: str, exit_code: int = 128 + signal.SIGINT):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteLoss(RuntimeError):
    """A NaN or Inf loss or gradient; the last good checkpoint is kept."""


def kept(t) -> str:
    """What trainer `t` has on disk to continue from."""
    return (f"{t.out / 'last.pt'} keeps the last good state (global step {t.saved_step})"
            if t.saved_step is not None else "no checkpoint had been written yet")


def interrupted(t, path) -> TrainingInterrupted:
    """Trainer `t` stopped between two steps by a signal (or a callback) and saved `path`."""
    signum = t._interrupt.requested or signal.SIGINT  # none: a callback stopped the run
    return TrainingInterrupted(
        f"stopped by {'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}: interrupted at epoch {t.epoch + 1}, "
        f"step {t.step_in_epoch}; saved {path}. Continue with the same command and --resume {path} "
        "(or --resume auto)", 128 + signum)


def mid_step(t) -> TrainingInterrupted:
    """A second Ctrl-C in the middle of a step: that step is not whole, so nothing of it was saved."""
    return TrainingInterrupted(f"stopped at once by a second Ctrl-C, in the middle of a step, without saving "
                               f"it; {kept(t)}. Continue with the same command and --resume auto")


def during_test(t, signum: int) -> TrainingInterrupted:
    best = t.out / "best.pt"
    return TrainingInterrupted(f"interrupted during the final test evaluation; training had finished and {best} "
                               f"is saved: score it with scripts/evaluate.py --checkpoint {best}", 128 + signum)


def non_finite(t, step: int) -> NonFiniteLoss:
    return NonFiniteLoss(
        f"non-finite loss or gradient at global step {step} (epoch {t.epoch + 1}); training stopped and "
        f"{kept(t)}. Lower --lr, set --clip 1.0, or with --amp fp16 keep the grad scaler (bf16 needs none), "
        "then resume"
    )
