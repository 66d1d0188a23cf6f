"""A run folder (`--out`): one run at a time in it, and a run that is
already in it is never overwritten unless the user says so (--resume continues it, --overwrite replaces it).

The lock is an advisory `fcntl.flock` on `<out>/run.lock`: the kernel drops it when the process
dies, however it dies, so a crashed run never leaves the folder locked. The file holds one line
naming the holder (pid, host, start time, command) for the error a second run gets, and is removed
when the run ends. A run that finds the folder locked has changed nothing in it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = "run.lock"
# What a run writes into its folder (rnnsent.training.report, the trainer's checkpoints). Only these are ever replaced
# or removed: anything else in the folder is the user's.
RUN_FILES = ("best.pt", "last.pt", "last.prev.pt", "metrics.jsonl", "report.json", "summary.txt", "curves.png",
             "config.json", "command.txt")
# A run that died before its first checkpoint leaves just these; they hold nothing that would be lost.
BEFORE_FIRST_CHECKPOINT = ("config.json", "command.txt")


class RunFolderBusy(ValueError):
    """Another live process holds the run folder's lock."""


class RunFolderTaken(ValueError):
    """The run folder already holds a run (or files of the same names), and nothing said it may be replaced."""


def _rnnsent_config(path: Path) -> bool:
    """Whether config.json is one a run wrote (a user's own config.json in `--out .` must not be replaced)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"cell", "vocab_size", "out", "seed"} <= config.keys()


def check_new_run(out: str | os.PathLike, resumed_from: str | None, overwrite: bool) -> list[Path]:
    """The files of an earlier run to remove before this one starts in `out` (with overwrite), or [].
    Raises RunFolderTaken (one line: what is there and the three choices) when `out` holds a run that this one
    would write over: a new run without overwrite, or a resume of a checkpoint from another folder."""
    out = Path(out)
    found = [out / name for name in RUN_FILES if (out / name).is_file()]
    if resumed_from is not None and out.is_dir() and Path(resumed_from).resolve().parent == out.resolve():
        return []  # continuing the run that is there
    if not found:
        return []
    names = [p.name for p in found]
    if set(names) <= set(BEFORE_FIRST_CHECKPOINT) and "config.json" in names and _rnnsent_config(out / "config.json"):
        return found  # a run that never saved anything: nothing to lose
    if overwrite:
        return found
    what = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    if resumed_from is not None:
        raise RunFolderTaken(
            f"run folder {out} already holds another run ({what}), which resuming {resumed_from} into it "
            "would overwrite; nothing was touched. Resume into the checkpoint's own folder (--out), "
            "pass --overwrite to replace that run, or pass another --out"
        )
    if not set(names) & {"best.pt", "last.pt", "last.prev.pt", "metrics.jsonl"}:  # no run: files of the same names
        raise RunFolderTaken(
            f"run folder {out} already holds {what}, which a run would write over; nothing was touched. "
            "Pass another --out, or --overwrite to replace them"
        )
    raise RunFolderTaken(f"run folder {out} already holds a run ({what}); nothing was touched. Continue it with "
                         "--resume auto, replace it with --overwrite, or pass another --out")


class RunLock:
    """`with RunLock(folder):` holds the folder for this process; a second holder gets RunFolderBusy.

    A folder the lock had to create is removed again on release if the run left nothing else in it,
    so a run rejected before it wrote anything leaves the disk as it found it.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        import fcntl

        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live process
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderBusy(
                    f"run folder {self.folder} is in use by another run ({holder}); wait for it to end, "
                    "or pass another --out") from None
            # The holder may have ended and removed the file between our open and flock: then we hold a
            # lock on a file nobody else can see. Lock the file that is at the path, or try again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}: {' '.join(sys.argv)}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held, so no other run can be holding this file
        os.close(self._fd)
        self._fd = None
        if self._created:
            try:
                self.folder.rmdir()  # only if empty: a rejected run leaves no folder behind
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 500, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "holder unknown"
