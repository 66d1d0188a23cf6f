"""Resuming a run: the trainer's resumable state, as a checkpoint holds it, and putting a trainer back there."""
from __future__ import annotations

import torch

from rnnsent.checkpoint import CheckpointError
from rnnsent.runtime import rng_state, set_rng_state


def training_state(t, full: bool = True) -> dict:
    """Everything a checkpoint of Trainer `t` holds: weights, vocabulary, config and history; with `full`
    (last.pt) also optimizer, scaler, RNG states and the position in the epoch. Every rank must call it
    when distributed (it gathers from all)."""
    state = {
        "model_config": t.model.config(),
        "model_state": {k: v.detach().cpu() for k, v in t.model.state_dict().items()},
        "vocab": t.data.vocab.to_dict(),
        "data": {"max_len": t.config.max_len, "encoding": t.config.encoding,
                 "vocab_size": t.config.vocab_size, "source": str(t.data.meta.get("source", "")),
                 **({"classes": list(t.data.meta["classes"])} if t.data.meta.get("classes") else {})},
        "config": t.config.to_dict(),
        "metrics": t.history[-1] if t.history else {},
        "history": t.history,
        "rnnsent_version": _version(),
    }
    if full:
        *sums, seen = t.global_sums()
        rngs = t.dist.gather(rng_state(t.device))
        state.update(
            optimizer=t.optimizer.state_dict(),
            scaler=t.scaler.state_dict() if t.scaler.is_enabled() else {},
            rng=rngs[0],
            progress={"epoch": t.epoch, "step_in_epoch": t.step_in_epoch,
                      "global_step": t.global_step, "sums": torch.tensor(sums, dtype=torch.float64), "seen": seen,
                      "best_val": t.best_val, "epochs_since_best": t.epochs_since_best,
                      "epoch_seconds": t.epoch_seconds, "world_size": t.dist.world_size},
        )
        if t.dist.enabled:
            state["rng_ranks"] = rngs
        if getattr(t, "ema", None) is not None:
            state["ema"] = t.ema.state_dict()
    return state


def restore_training_state(t, state: dict) -> None:
    """Put Trainer `t` where the checkpoint `state` left off: weights, optimizer, RNG, position, history."""
    p = state["progress"]
    if p.get("world_size", 1) != t.dist.world_size:
        raise CheckpointError(
            f"{t.config.resume} was written by a run of {p.get('world_size', 1)} process(es); resume it with "
            f"the same number (torchrun --nproc_per_node={p.get('world_size', 1)}), not {t.dist.world_size}")
    t.model.load_state_dict(state["model_state"])
    t.optimizer.load_state_dict(state["optimizer"])
    if getattr(t, "ema", None) is not None and "ema" in state:  # else the average starts from the resumed weights
        t.ema.load_state_dict(state["ema"])
    if "scaler" in state and t.scaler.is_enabled():
        t.scaler.load_state_dict(state["scaler"])
    t.epoch, t.step_in_epoch, t.global_step = p["epoch"], p["step_in_epoch"], p["global_step"]
    t.saved_step = t.global_step
    if t.is_main:  # the saved sums are over all ranks: one rank carries them on
        t.sums, t.seen = p["sums"].to(t.device, torch.float64), p["seen"]
    t.best_val, t.epochs_since_best = p["best_val"], p["epochs_since_best"]
    t.epoch_seconds = p.get("epoch_seconds", 0.0)
    t.history = list(state.get("history", []))
    set_rng_state(state.get("rng_ranks", [state["rng"]])[t.dist.rank], t.device)
    t.log(f"resumed from {getattr(t, 'resumed_from', None) or t.config.resume}: epoch {t.epoch + 1}, step {t.step_in_epoch} "
          f"of {len(t.train_batches)} (global step {t.global_step})")


def _version() -> str:
    from rnnsent import __version__

    return __version__

