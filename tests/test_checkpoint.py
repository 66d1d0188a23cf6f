"""Checkpoint files: atomic, checksummed, refuse foreign or damaged files with a clear message."""
import pickle

import pytest
import torch

from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state, save_checkpoint
from rnnsent.model.sentiment import SentimentRNN


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

    monkeypatch.setattr("rnnsent.storage.checkpoint.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {**_state(), "epoch": 2})
    assert path.read_bytes() == before
    assert load_checkpoint_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "the temp file must be removed"


def test_a_real_failed_write_is_one_line_and_keeps_the_previous_file(tmp_path):
    """A file-size limit makes the kernel refuse the write part-way, as a full disk does: torch's own zip writer
    then fails, and that must be a CheckpointWriteError, with the previous file intact and no temp file left."""
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    before = path.read_bytes()
    code = (
        "import resource, signal, sys, torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from rnnsent.storage.checkpoint import CheckpointWriteError, save_checkpoint\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "try:\n"
        "    save_checkpoint(sys.argv[1], {'model_config': {}, 'model_state': {'w': torch.randn(100_000)}}, "
        "keep_previous=True)\n"
        "except CheckpointWriteError as e:\n"
        "    print(e)\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": ""})
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert "could not write checkpoint" in proc.stdout and "left as it was" in proc.stdout
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_checkpoints_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "last.pt", _state())
        save_checkpoint(path, _state(), keep_previous=True)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "last.prev.pt").stat().st_mode & 0o777 == 0o644


def test_a_stale_temp_name_of_another_process_does_not_block_saving(tmp_path):
    """Temporary names are unique: something already at a predictable name is never in the way."""
    path = save_checkpoint(tmp_path / "last.pt", {**_state(), "epoch": 1})
    (tmp_path / ".last.prev.pt.link.tmp").mkdir()  # what a fixed temporary name would collide with
    save_checkpoint(path, {**_state(), "epoch": 2}, keep_previous=True)
    assert load_checkpoint_state(tmp_path / "last.prev.pt")["epoch"] == 1
    assert load_checkpoint_state(path)["epoch"] == 2
