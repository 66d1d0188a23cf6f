"""Checkpoint files: atomic, checksummed, refuse foreign or damaged files with a clear message."""
import pickle

import pytest
import torch

from rnnsent.checkpoint import CheckpointError, load_checkpoint_state, save_checkpoint
from rnnsent.models import SentimentRNN


def _state():
    m = SentimentRNN("gru", vocab_size=20, embed_dim=4, hidden_size=3)
    return {"model_config": m.config(), "model_state": m.state_dict(), "vocab": {"x": 1}, "epoch": 3}


def test_round_trip_keeps_tensors_and_plain_data(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "a" / "last.pt", state)
    loaded = load_checkpoint_state(path)
    assert loaded["epoch"] == 3 and loaded["model_config"] == state["model_config"]
    for k, v in state["model_state"].items():
        assert torch.equal(loaded["model_state"][k], v)
    assert not list(tmp_path.glob("a/.*tmp")), "no temp file may be left behind"


def test_folder_resolves_to_best_then_last(tmp_path):
    save_checkpoint(tmp_path / "last.pt", {**_state(), "epoch": 1})
    assert load_checkpoint_state(tmp_path)["epoch"] == 1
    save_checkpoint(tmp_path / "best.pt", {**_state(), "epoch": 2})
    assert load_checkpoint_state(tmp_path)["epoch"] == 2
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        load_checkpoint_state(empty)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_state(tmp_path / "nope.pt")


def test_truncated_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint_state(path)


def test_flipped_payload_byte_fails_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    env = torch.load(path, weights_only=True)
    env["payload"][len(env["payload"]) // 2] ^= 0xFF
    torch.save(env, path)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint_state(path)


def test_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(SentimentRNN("lstm", 20, 4, 3).state_dict(), path)  # a plain state_dict from other code
    with pytest.raises(CheckpointError, match="not an rnnsent checkpoint"):
        load_checkpoint_state(path)


class _Evil:
    def __reduce__(self):
        return (exec, ("raise SystemExit('executed')",))


def test_pickled_object_is_never_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "rnnsent-checkpoint", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable rnnsent checkpoint"):
        load_checkpoint_state(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint_state(raw)


def test_other_version_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    env = torch.load(path, weights_only=True)
    env["version"] = 99
    torch.save(env, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint_state(path)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {**_state(), "epoch": 1})
    before = path.read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("rnnsent.checkpoint.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {**_state(), "epoch": 2})
    assert path.read_bytes() == before
    assert load_checkpoint_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "the temp file must be removed"
