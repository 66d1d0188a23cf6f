"""Small assertions shared by the trainer and fault-tolerance tests. Bit-for-bit comparisons: both sides are runs
made where the test runs (docs/reproducibility.md)."""
import pytest
import torch

from rnnsent.storage.checkpoint import load_checkpoint_state
from rnnsent.training.stopping import TrainingInterrupted


def weights(path) -> dict:
    return load_checkpoint_state(path)["model_state"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def assert_same_run_state(a, b):
    """Two last.pt files hold the same run state bit for bit: weights, optimizer, RNG state and position."""
    a, b = load_checkpoint_state(a), load_checkpoint_state(b)
    assert_same_weights(a["model_state"], b["model_state"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), "optimizer state differs"
    assert a["rng"].keys() == b["rng"].keys() and all(torch.equal(a["rng"][k], b["rng"][k]) for k in a["rng"])
    where = [{k: v for k, v in s["progress"].items() if k not in ("sums", "epoch_seconds")} for s in (a, b)]
    assert where[0] == where[1] and torch.equal(a["progress"]["sums"], b["progress"]["sums"])


def interrupt_at(trainer, step: int) -> None:
    """Run trainer.fit() and stop it as Ctrl-C does once global step `step` has ended (last.pt is saved there)."""

    def stop(t):
        if t.global_step == step:
            raise KeyboardInterrupt

    trainer.add_callback("on_step_end", stop)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
