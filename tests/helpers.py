"""Small assertions shared by the trainer and fault-tolerance tests."""
import torch

from rnnsent.storage.checkpoint import load_checkpoint_state


def weights(path) -> dict:
    return load_checkpoint_state(path)["model_state"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
