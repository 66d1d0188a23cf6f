"""A checksummed envelope around plain data saved with torch: checkpoints and the prepared-data cache.

    {"format": name, "version": n, "sha256": hex, "payload": uint8 tensor}

The payload is a `torch.save` of plain data (tensors, dicts, lists, str, numbers). Both levels load with
`weights_only=True`, so a file from another program can at worst be refused, never executed. The
checksum catches a file that was truncated or corrupted after it was written (disk full, a machine that
died mid-write on a file system without ordered writes, bit rot, flipped bytes).
"""
from __future__ import annotations

import hashlib
import io
from typing import Any, Callable

import torch


def seal(state: Any, fmt: str, version: int) -> dict:
    """`state` saved to bytes and wrapped with its format name, version and SHA-256; torch.save the result."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return {
        "format": fmt,
        "version": version,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }


def unseal(envelope: Any, where: str, fmt: str, version: int, what: str,
           error: Callable[[str], Exception] = ValueError, map_location="cpu") -> Any:
    """The state inside `envelope` (what torch.load gave for `where`), verified; else error(one-line reason).
    `what` names the kind of file in messages, e.g. "rnnsent checkpoint"."""
    if not isinstance(envelope, dict) or envelope.get("format") != fmt:
        raise error(f"{where} is not an {what} (no '{fmt}' marker); refusing to load it")
    if envelope.get("version") != version:
        raise error(
            f"{where} is an {what} of format version {envelope.get('version')!r}; this rnnsent reads version {version}"
        )
    payload = envelope.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise error(f"{where} is damaged: its payload is missing")
    data = payload.numpy().tobytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != envelope.get("sha256"):
        raise error(
            f"{where} is corrupt: checksum {actual[:16]}... does not match the recorded "
            f"{str(envelope.get('sha256'))[:16]}..."
        )
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:
        raise error(f"{where} has an unreadable payload: {first_line(e)}") from None


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
