"""Crashes, damaged checkpoints, full disks and NaNs: a run always continues from its last good state.

The SIGKILL tests kill real `scripts/train.py` processes through the trainer's fault-injection hook
(RNNSENT_FAULT_KILL_AT_STEP); resumes run the same command line in-process to save a torch import.
"""
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnsent.storage.checkpoint import load_checkpoint_state, previous_path
from rnnsent.cli import train_main
from helpers import assert_same_run_state, assert_same_weights, weights

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
# 8 training reviews in batches of 3 (3, 3, 2): 3 steps per epoch, 9 in all; dropout makes the RNG state matter.
ARGS = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8",
        "--hidden-size", "6", "--max-len", "60", "--batch-size", "3", "--val-fraction", "0.25", "--epochs", "3",
        "--embed-dropout", "0.2", "--output-dropout", "0.1", "--seed", "7", "--threads", "1", "--quiet"]
STEPS_PER_EPOCH = 3


def args(base: Path, *extra) -> list[str]:
    return [*ARGS, "--out", str(base / "run"), "--cache-dir", str(base / "cache"), *map(str, extra)]


def saved_step(path) -> int:
    return load_checkpoint_state(path)["progress"]["global_step"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The last.pt of an uninterrupted run, made here: what a resumed run must equal bit for bit."""
    base = tmp_path_factory.mktemp("reference")
    assert train_main(args(base)) == 0
    return base / "run" / "last.pt"


@pytest.fixture(scope="module")
def reference(reference_run) -> dict:
    """The weights of an uninterrupted run."""
    return weights(reference_run)


@pytest.mark.parametrize("kill_at, ckpt_every, lost", [
    (3, 2, 1),  # last step of epoch 1, before validation and the epoch's checkpoint: back to step 2
    (4, 2, 0),  # right after a mid-epoch checkpoint: nothing lost
    (8, 3, 2),  # inside epoch 3; the last checkpoint is the end of epoch 2
])
def test_sigkill_then_resume_gives_the_uninterrupted_run(tmp_path, reference_run, kill_at, ckpt_every, lost):
    env = dict(os.environ, PYTHONPATH=str(ROOT), RNNSENT_FAULT_KILL_AT_STEP=str(kill_at))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args(tmp_path, "--ckpt-every", ckpt_every)], env=env,
        capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    last = tmp_path / "run" / "last.pt"
    assert kill_at - saved_step(last) == lost
    assert not list((tmp_path / "run").glob(".*tmp")), "a kill between writes leaves no temp file"

    assert train_main(args(tmp_path, "--ckpt-every", ckpt_every, "--resume")) == 0
    assert saved_step(last) == 3 * STEPS_PER_EPOCH
    assert_same_run_state(last, reference_run)  # weights, optimizer, RNG state: bit for bit, both made here


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    """A run stopped after epoch 2 (global step 6) with checkpoints every 2 steps: last.prev.pt holds step 4."""
    base = tmp_path_factory.mktemp("two_epochs")
    assert train_main(args(base, "--ckpt-every", "2", "--epochs", "2")) == 0
    return base


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def _flip_payload_byte(p: Path):
    env = torch.load(p, weights_only=True)
    env["payload"][len(env["payload"]) // 2] ^= 0x01
    buf = io.BytesIO()
    torch.save(env, buf)
    p.write_bytes(buf.getvalue())


@pytest.mark.parametrize("damage", [_truncate, _flip_payload_byte, lambda p: p.write_bytes(b""), Path.unlink],
                         ids=["truncated", "flipped-byte", "empty", "missing"])
def test_damaged_last_falls_back_to_the_previous_checkpoint(tmp_path, two_epochs, reference, damage, capsys):
    shutil.copytree(two_epochs, tmp_path, dirs_exist_ok=True)
    last = tmp_path / "run" / "last.pt"
    assert saved_step(last) == 6 and saved_step(previous_path(last)) == 4
    damage(last)
    assert train_main(args(tmp_path, "--ckpt-every", "2", "--resume")) == 0
    err = capsys.readouterr().err
    assert "Falling back to the previous checkpoint" in err and "global step 4" in err and "lost" in err
    assert_same_weights(weights(last), reference)


def test_both_checkpoints_damaged_is_a_clear_error(tmp_path, two_epochs, capsys):
    shutil.copytree(two_epochs, tmp_path, dirs_exist_ok=True)
    last = tmp_path / "run" / "last.pt"
    _truncate(last)
    _truncate(previous_path(last))
    assert train_main(args(tmp_path, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "last.prev.pt is unusable too" in err


def test_disk_full_mid_write_keeps_the_previous_file_and_stops_cleanly(tmp_path, reference, monkeypatch, capsys):
    """Checkpoints after steps 1 and 2 are written, then best.pt; the next write (last.pt at the end of epoch 1)
    runs out of space half-way. last.pt keeps step 2 and last.prev.pt step 1, the run stops with one line,
    and resuming from it still ends with the uninterrupted weights."""
    real_save, writes, before = torch.save, [], {}
    last = tmp_path / "run" / "last.pt"

    def save(obj, f, *a, **k):
        if isinstance(f, io.BytesIO):  # the payload, built in memory
            return real_save(obj, f, *a, **k)
        writes.append(1)
        if len(writes) < 4:
            return real_save(obj, f, *a, **k)
        before["last"], before["prev"] = last.read_bytes(), previous_path(last).read_bytes()
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: buf.tell() // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    assert train_main(args(tmp_path, "--ckpt-every", "1")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "No space left on device" in err and "left as it was" in err and "--resume" in err
    assert last.read_bytes() == before["last"] and previous_path(last).read_bytes() == before["prev"]
    assert not list((tmp_path / "run").glob(".*tmp")), "the half-written temp file is removed"
    assert saved_step(last) == 2

    monkeypatch.setattr(torch, "save", real_save)
    assert train_main(args(tmp_path, "--ckpt-every", "1", "--resume")) == 0
    assert_same_weights(weights(last), reference)


def test_nan_stops_with_the_step_and_keeps_last_byte_for_byte(tmp_path, monkeypatch, capsys):
    assert train_main(args(tmp_path, "--epochs", "1")) == 0
    last = tmp_path / "run" / "last.pt"
    good = last.read_bytes()
    monkeypatch.setenv("RNNSENT_FAULT_NAN_AT_STEP", "4")  # the second step of epoch 2
    assert train_main(args(tmp_path, "--epochs", "2", "--resume")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "non-finite loss or gradient at global step 4 (epoch 2)" in err
    assert "last.pt keeps the last good state (global step 3)" in err and "Lower --lr, set --clip 1.0" in err
    assert last.read_bytes() == good


def test_fault_hook_rejects_a_bad_value(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RNNSENT_FAULT_KILL_AT_STEP", "soon")
    assert train_main(args(tmp_path)) == 2
    assert "RNNSENT_FAULT_KILL_AT_STEP='soon' must be a global step number" in capsys.readouterr().err


# A train.py process that sends itself signals at a known point, as a scheduler or a user at the keyboard would:
# "batch" sends them just before training step AT runs, "forward" in the middle of step AT (after its dropout draws).
SIGNALLING_TRAIN = """
import os, signal, sys
from rnnsent.cli import train_main
from rnnsent.data.batches import Batcher
from rnnsent.model.sentiment import SentimentRNN

at, sigs, where, seen = int(os.environ["AT"]), [int(s) for s in os.environ["SIGS"].split(",")], os.environ["WHERE"], [0]

def send():
    seen[0] += 1
    if seen[0] == at:
        for s in sigs:
            os.kill(os.getpid(), s)

if where == "batch":
    iterate = Batcher.iterate
    def patched(self, epoch, start=0):
        for batch in iterate(self, epoch, start):
            if self.shuffle:
                send()
            yield batch
    Batcher.iterate = patched
else:
    forward = SentimentRNN.forward
    def patched(self, *a, **k):
        out = forward(self, *a, **k)
        if self.training:
            send()
        return out
    SentimentRNN.forward = patched
sys.exit(train_main(sys.argv[1:]))
"""


def _signalled_run(base: Path, at: int, sigs, where: str, *extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), AT=str(at), SIGS=",".join(str(int(s)) for s in sigs), WHERE=where)
    return subprocess.run([sys.executable, "-c", SIGNALLING_TRAIN, *args(base, *extra)], env=env, capture_output=True,
                          timeout=300)


def test_sigterm_saves_last_and_exits_143_then_resume_auto_finishes_the_run(tmp_path, reference):
    proc = _signalled_run(tmp_path, 5, [signal.SIGTERM], "batch")
    err = proc.stderr.decode().strip()
    assert proc.returncode == 143, err
    assert len(err.splitlines()) == 1 and "stopped by SIGTERM" in err and "--resume" in err, err
    last = tmp_path / "run" / "last.pt"
    assert saved_step(last) == 5, "the step in progress is finished and saved"
    assert not (tmp_path / "run" / "run.lock").exists()
    assert train_main(args(tmp_path, "--resume", "auto")) == 0
    assert_same_weights(weights(last), reference)


def test_second_ctrl_c_stops_at_once_without_saving_half_a_step(tmp_path, reference):
    """Two Ctrl-C in the middle of step 5 (after its dropout masks were drawn): nothing from step 5 may be saved,
    or the resumed run would differ from an uninterrupted one."""
    proc = _signalled_run(tmp_path, 5, [signal.SIGINT, signal.SIGINT], "forward", "--ckpt-every", "2")
    err = proc.stderr.decode().strip()
    assert proc.returncode == 130, err
    assert len(err.splitlines()) == 1 and "second Ctrl-C" in err and "without saving" in err, err
    last = tmp_path / "run" / "last.pt"
    assert saved_step(last) == 4
    assert train_main(args(tmp_path, "--ckpt-every", "2", "--resume")) == 0
    assert_same_weights(weights(last), reference)


def test_ctrl_c_during_the_final_test_is_one_line(tmp_path):
    """The test split is scored in eval mode: the first forward pass not in training mode after the last step."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    driver = SIGNALLING_TRAIN.replace("if self.training:", "if not self.training and os.environ['WHERE'] == 'eval':")
    env.update(AT="2", SIGS=str(int(signal.SIGINT)), WHERE="eval")  # call 1: validation; call 2: the test split
    proc = subprocess.run([sys.executable, "-c", driver, *args(tmp_path, "--epochs", "1")], env=env,
                          capture_output=True, timeout=300)
    err = proc.stderr.decode().strip()
    assert proc.returncode == 130, err
    assert len(err.splitlines()) == 1 and "final test evaluation" in err and "evaluate.py" in err, err
    assert saved_step(tmp_path / "run" / "last.pt") == STEPS_PER_EPOCH


def test_fallback_never_rotates_the_damaged_file_and_says_where_it_resumed(tmp_path, two_epochs, capsys):
    shutil.copytree(two_epochs, tmp_path, dirs_exist_ok=True)
    last = tmp_path / "run" / "last.pt"
    _flip_payload_byte(last)
    loud = [a for a in args(tmp_path, "--ckpt-every", "2", "--epochs", "2", "--resume") if a != "--quiet"]
    assert train_main(loud) == 0  # resumes at step 4, saves once at step 6
    err = capsys.readouterr().err
    assert f"resumed from {previous_path(last)}" in err
    assert saved_step(previous_path(last)) == 4, "the verified step-4 file stays the safety net"
    assert saved_step(last) == 6


def test_resume_from_a_run_folder_means_its_last_pt(tmp_path, two_epochs):
    shutil.copytree(two_epochs, tmp_path, dirs_exist_ok=True)
    run = tmp_path / "run"
    assert (run / "best.pt").is_file()
    assert train_main(args(tmp_path, "--ckpt-every", "2", "--resume", run)) == 0
    assert saved_step(run / "last.pt") == 3 * STEPS_PER_EPOCH


def test_resume_auto_starts_fresh_with_a_note_but_bare_resume_needs_a_checkpoint(tmp_path, reference, capsys):
    assert train_main(args(tmp_path, "--resume")) == 2
    assert "last.pt does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "a rejected run leaves no folder behind"
    assert train_main(args(tmp_path, "--epochs", "1", "--resume", "auto")) == 0
    assert "--resume auto: no last.pt" in capsys.readouterr().err
    assert train_main(args(tmp_path, "--resume", "auto")) == 0  # continues epochs 2 and 3
    assert_same_weights(weights(tmp_path / "run" / "last.pt"), reference)
