"""One run at a time in a run folder, and a run that is turned away changes nothing in it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnsent.cli import train_main
from rnnsent.training.runfolder import LOCK_NAME, RunFolderBusy, RunLock

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
TINY = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8",
        "--hidden-size", "6", "--max-len", "60", "--batch-size", "4", "--threads", "1", "--quiet", "--epochs", "1"]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("finished")
    assert train_main([*TINY, "--out", str(base / "run"), "--cache-dir", str(base / "cache")]) == 0
    return base


def test_a_finished_run_leaves_no_lock_file(finished):
    assert not (finished / "run" / LOCK_NAME).exists()


def test_a_second_run_into_a_held_folder_is_one_line_naming_the_holder(finished, tmp_path, capsys):
    """Another process holds the folder (a real flock from a live child process)."""
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rnnsent.training.runfolder import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)"), str(run)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        before = snapshot(run)
        assert train_main([*TINY, "--out", str(run), "--cache-dir", str(finished / "cache")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"run folder {run} is in use by another run (pid {holder.pid}" in err and "another --out" in err
        assert snapshot(run) == before, "the rejected run wrote nothing"
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the folder is usable at once, no stale lock to clean up.
    assert train_main([*TINY, "--out", str(run), "--cache-dir", str(finished / "cache")]) == 0


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunFolderBusy, match="is in use by another run"):
            RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run").exists(), "a folder the lock created is removed when the run left nothing in it"


def test_a_rejected_run_leaves_an_existing_run_folder_as_it_found_it(finished, tmp_path):
    """--rnn-impl fused where the kernel cannot run is refused after the data is ready: config.json and
    command.txt of the run already in the folder must not be overwritten."""
    import shutil

    shutil.copytree(finished / "run", tmp_path / "run")
    before = snapshot(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *TINY, "--out", str(tmp_path / "run"), "--cache-dir",
         str(finished / "cache"), "--rnn-impl", "fused", "--seed", "3"],
        env=dict(os.environ, PYTHONPATH=str(ROOT), RNNSENT_FUSED="0"),
        capture_output=True,
        timeout=300,
    )
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert snapshot(tmp_path / "run") == before
