"""One way to write a file that readers see whole or not at all: checkpoints, data caches, downloads."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp",
                 before_replace: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file to write; when the block ends without error it is flushed, fsynced and renamed
    over `path` (after `before_replace()`, if given). The temporary file lives in the same folder, so the
    rename is atomic; on any error it is removed and `path` is left as it was. The file gets the mode of
    the user's umask, like any other file (mkstemp would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask
