"""Fault injection for tests: a crash or a NaN at a known step, asked for through the environment.

Read once per Trainer; unset in normal runs.
    RNNSENT_FAULT_KILL_AT_STEP=k  the process kills itself with SIGKILL once global step k is done
                                  (after any checkpoint that step writes): a crash at a known point.
    RNNSENT_FAULT_NAN_AT_STEP=k   the training logits, and so the loss, of global step k (counted from 0,
                                  as NonFiniteLoss names steps) are made NaN.
"""
from __future__ import annotations

import os
import signal


def install(trainer) -> None:
    """The RNNSENT_FAULT_* variables of the module docstring, as a callback and a forward hook."""
    kill_at, nan_at = _env_step("RNNSENT_FAULT_KILL_AT_STEP"), _env_step("RNNSENT_FAULT_NAN_AT_STEP")
    if kill_at is not None:
        def kill(t) -> None:
            if t.global_step == kill_at:
                t.dist.barrier()
                os.kill(os.getpid(), signal.SIGKILL)

        trainer.add_callback("on_step_end", kill)
    if nan_at is not None:
        def poison(module, inputs, logits):
            return logits * float("nan") if module.training and trainer.global_step == nan_at else None

        trainer.model.register_forward_hook(poison)


def _env_step(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be a global step number") from None
