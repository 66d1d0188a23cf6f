"""One way to write a file that readers see whole or not at all (checkpoints, data caches, downloads),
and one way to read an archive member whose size an untrusted file declares."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

# The most any archive member (a tar member, a zip member of an .npz or .keras file) may inflate to.
# rnnsent's largest input, the IMDB reviews.json, is about 130 MB; a compressed bomb stops here.
MAX_MEMBER_BYTES = 1 << 30


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


def read_bounded(f: BinaryIO, limit: int, where: str, error: Callable[[str], Exception] = ValueError,
                 declared: int | None = None) -> bytes:
    """All of `f`, or `error(message)` if it declares (`declared`) or holds more than `limit` bytes.
    At most limit + 1 bytes are ever read, so a stream that inflates without end costs no more."""
    if declared is not None and declared > limit:
        raise error(f"{where} declares {declared:,} bytes, over the bound of {limit:,}; refusing to read it")
    data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{where} holds more than the bound of {limit:,} bytes; refusing to read it")
    return data
