"""Checkpoints: atomic writes, checksummed and verified loads, no unpickling of arbitrary objects.

A checkpoint file is a `torch.save` of a small envelope:
    {"format": "rnnsent-checkpoint", "version": 1, "sha256": hex, "payload": uint8 tensor}
where the payload is itself a `torch.save` of plain data (tensors, dicts, lists, str, numbers).
Both levels load with `weights_only=True`, so a file from another program can at worst be refused,
never executed. The checksum catches a file that was truncated or corrupted after it was written
(disk full, a machine that died mid-write on a file system without ordered writes, bit rot).
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch

FORMAT = "rnnsent-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign, or does not fit the run it is given to."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename.

    If anything fails (disk full, interrupted), the previous file at `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    envelope = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(envelope, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint_state(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read and verify a checkpoint file; return its state dict. Raises CheckpointError with the reason."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a folder with no best.pt or last.pt in it; pass a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad zip or a refused pickle
        raise CheckpointError(
            f"{path} is not a readable rnnsent checkpoint (truncated, corrupt, or written by another program): "
            f"{_first_line(e)}"
        ) from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rnnsent checkpoint (no '{FORMAT}' marker); refusing to load it")
    if envelope.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is an rnnsent checkpoint of format version {envelope.get('version')!r}; "
            f"this rnnsent reads version {VERSION}"
        )
    payload = envelope.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise CheckpointError(f"{path} is damaged: its payload is missing")
    data = payload.numpy().tobytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != envelope.get("sha256"):
        raise CheckpointError(
            f"{path} is corrupt: checksum {actual[:16]}... does not match the recorded {str(envelope.get('sha256'))[:16]}..."
        )
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} has an unreadable payload: {_first_line(e)}") from None
    if not isinstance(state, dict) or "model_config" not in state or "model_state" not in state:
        raise CheckpointError(f"{path} holds no model (missing model_config or model_state)")
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> "LoadedModel":
    """Rebuild the model from a checkpoint (a file, or a run folder holding best.pt/last.pt).

    Returns a LoadedModel: the model in eval mode on `device`, its vocabulary and the encoding
    settings it was trained with, so `rnnsent.predict(loaded, texts)` needs nothing else.
    """
    from rnnsent.data import Vocab
    from rnnsent.models import SentimentRNN

    state = load_checkpoint_state(path)
    try:
        model = SentimentRNN(**state["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes a model this rnnsent cannot build: {e}") from None
    missing, unexpected = model.load_state_dict(state["model_state"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit its own model description: missing {missing}, unexpected {unexpected}"
        )
    if "vocab" not in state:
        raise CheckpointError(f"{path} has no vocabulary; it cannot encode text")
    data = state.get("data", {})
    return LoadedModel(
        model=model.to(device).eval(),
        vocab=Vocab.from_dict(state["vocab"]),
        max_len=int(data.get("max_len", 500)),
        encoding=str(data.get("encoding", "keras")),
        state=state,
    )


class LoadedModel:
    """A model rebuilt from a checkpoint, with what it needs to read raw text."""

    def __init__(self, model, vocab, max_len: int, encoding: str, state: dict):
        self.model, self.vocab, self.max_len, self.encoding, self.state = model, vocab, max_len, encoding, state

    @property
    def metrics(self) -> dict:
        return self.state.get("metrics", {})

    @property
    def config(self) -> dict:
        return self.state.get("config", {})

    def predict(self, texts, batch_size: int = 256):
        from rnnsent.evaluate import predict

        return predict(self.model, texts, self.vocab, self.max_len, self.encoding, batch_size=batch_size)
