"""Checkpoints: atomic writes, checksummed and verified loads, no unpickling of arbitrary objects.

A checkpoint file is a `torch.save` of rnnsent.storage.envelope's checksummed envelope:
    {"format": "rnnsent-checkpoint", "version": 1, "sha256": hex, "payload": uint8 tensor}
where the payload is itself a `torch.save` of plain data (tensors, dicts, lists, str, numbers).
Both levels load with `weights_only=True`, so a file from another program can at worst be refused,
never executed. The checksum catches a file that was truncated or corrupted after it was written
(disk full, a machine that died mid-write on a file system without ordered writes, bit rot).

This module is the file format only. Building a model from a file is rnnsent.inference.loading's (load_checkpoint), a
resuming a run (which file, its fallback, the checks, the trainer's state) rnnsent.training.resume's, and what a
released file leaves out rnnsent.inference.releasing's.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from rnnsent.storage.envelope import first_line as _first_line, seal, unseal
from rnnsent.storage.files import atomic_write

FORMAT = "rnnsent-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign, or does not fit the run it is given to."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous file is untouched."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where save_checkpoint(keep_previous=True) keeps the file it replaces: last.pt -> last.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | os.PathLike, state: dict, keep_previous: bool = False) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename.

    If anything fails (disk full, interrupted), the previous file at `path` is left untouched and
    CheckpointWriteError says so. With keep_previous, the file being replaced is first kept as
    previous_path(path) (hard link + rename, so `path` exists at every moment): if the new file is
    later found damaged, rnnsent.training.resume.load_resume_state falls back to it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    envelope = seal(state, FORMAT, VERSION)
    def keep() -> None:  # just before the rename, so `path` exists at every moment
        # Never rotate a file that fails verification: after a fallback to last.prev.pt, the damaged last.pt
        # must not replace the good file the run just resumed from.
        if keep_previous and path.is_file() and _verifies(path):
            _link_or_copy(path, previous_path(path))

    try:
        with atomic_write(path, before_replace=keep) as f:
            torch.save(envelope, f)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError):
            if isinstance(e, NotImplementedError):
                raise
            # torch's zip writer reports a failed write (disk full) as RuntimeError: it is an OSError here.
            e = OSError(f"the write failed part-way (a full disk or a file-size limit?): {_first_line(e)}")
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {e.strerror or e}; the previous {path.name} is left as it was"
        ) from None
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` a complete copy of `src`, atomically: `dst` is the old or the new file, never half of one."""
    # A name of our own (mkstemp's), not a fixed one another process could be using at the same moment.
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".link.tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _verifies(path: Path) -> bool:
    try:
        load_checkpoint_state(path)
        return True
    except CheckpointError:
        return False


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The file a checkpoint path means: a run folder's best.pt (else its last.pt), or the path itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a folder with no best.pt or last.pt in it; pass a checkpoint file")
    return path


def load_checkpoint_state(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read and verify a checkpoint file; return its state dict. Raises CheckpointError with the reason."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad zip or a refused pickle
        raise CheckpointError(
            f"{path} is not a readable rnnsent checkpoint (truncated, corrupt, or written by another program): "
            f"{_first_line(e)}"
        ) from None
    state = unseal(envelope, str(path), FORMAT, VERSION, "rnnsent checkpoint", CheckpointError, map_location)
    if not isinstance(state, dict) or "model_config" not in state or "model_state" not in state:
        raise CheckpointError(f"{path} holds no model (missing model_config or model_state)")
    return state
