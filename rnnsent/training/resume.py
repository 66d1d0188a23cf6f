"""Resuming a run, the whole story in one place.

1. What to resume: `--resume` names a last.pt, a run folder (its last.pt) or "auto" (the --out folder's last.pt
   if there is one, else a new run); a bare `--resume` means the --out folder's last.pt (resume_path).
2. Load it: a last.pt that fails verification falls back to the last.prev.pt that save_checkpoint(keep_previous=True)
   kept (load_resume_state).
3. Check it: the checkpoint is a resumable run of the same kind (a classifier's or a language model's) with its
   optimizer state (find_resume); once the data is prepared, its settings (RESUME_MUST_MATCH) and its vocabulary
   agree with this run's (check_resume).
4. Restore: the Trainer puts itself back (Trainer.load_state_dict), as it wrote itself (Trainer.state_dict).

find_resume does 1, 2 and the first check of 3, once, before anything else of a run (run_task; settle for a
Trainer built from Python); the ResumePoint it returns is what the run folder's check, check_resume and the
Trainer use.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state, previous_path
from rnnsent.config import LEGACY_ENCODINGS, DataConfig, ModelConfig, OptimConfig, TrainConfig, field_names

RESUME_AUTO = "auto"

# Settings that must agree between a checkpoint and the run that resumes it: changing any of them would
# silently train a different model or on different data. Where the data lies, epochs, patience and the
# machinery may change, and so may where the pretrained start came from (a resumed run has its weights).
MAY_CHANGE_ON_RESUME = ("data_root", "cache_dir", "epochs", "patience", "pretrained")
RESUME_MUST_MATCH = tuple(name for group in (ModelConfig, DataConfig, OptimConfig) for name in field_names(group)
                          if name not in MAY_CHANGE_ON_RESUME)


# -- 1. what to resume ------------------------------------------------------------------------------
def resume_path(resume: str | None, out: str | os.PathLike) -> tuple[str | None, str | None]:
    """What `--resume` means, as (checkpoint to load or None, note to log).

    "" (the flag given without a value): the --out folder's last.pt. "auto": the run folder's last.pt (or its
    last.prev.pt) when there is one, else a fresh start with a note, so a job script can always pass it. A
    folder: its last.pt, which falls back to last.prev.pt (a folder's best.pt holds no optimizer state and
    cannot be resumed). Anything else is a file.
    """
    if resume is None:
        return None, None
    if resume == "":
        return str(Path(out) / "last.pt"), None
    if resume == RESUME_AUTO:
        last = Path(out) / "last.pt"
        if last.is_file() or previous_path(last).is_file():
            return str(last), None
        return None, f"--resume auto: no last.pt in {out}, starting a new run"
    if Path(resume).is_dir():
        return str(Path(resume) / "last.pt"), None
    return resume, None


# -- 2. load it -------------------------------------------------------------------------------------
def load_resume_state(path: str | os.PathLike) -> tuple[dict, str | None]:
    """Load a checkpoint to resume from; if it is unreadable, fall back to the one it replaced.

    Returns (state, note): note is None, or says which file was damaged, which one is used instead
    and at which step the run continues. Raises CheckpointError when neither file is readable.
    """
    path = Path(path)
    try:
        return load_checkpoint_state(path), None
    except CheckpointError as e:
        first = str(e)  # `e` is unbound after the except block
        prev = previous_path(path)
        if path.is_dir() or not prev.is_file():
            raise
        try:
            state = load_checkpoint_state(prev)
        except CheckpointError as second:
            raise CheckpointError(f"{first}; the fallback {prev.name} is unusable too: {second}") from None
    p = state.get("progress", {})
    return state, (
        f"warning: {first}. Falling back to the previous checkpoint {prev} (epoch {p.get('epoch', 0) + 1}, "
        f"step {p.get('step_in_epoch')}, global step {p.get('global_step')}): the steps done after it are lost "
        "and will be trained again"
    )


def load_resume(path: str) -> tuple[dict, str, str | None]:
    """load_resume_state, also returning the file actually used (last.pt, or last.prev.pt after a fallback)."""
    state, note = load_resume_state(path)
    if note is None:
        return state, path, None
    return state, str(previous_path(path)), note


# -- 3. check it ------------------------------------------------------------------------------------
@dataclasses.dataclass
class ResumePoint:
    """Where a run starts: `path` is the checkpoint --resume means (None: a new run), `state` what it holds,
    `loaded_from` the file read (path, or its last.prev.pt after a fallback), `notes` what to tell the user."""
    path: str | None = None
    state: dict | None = None
    loaded_from: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def find_resume(resume: str | None, out: str | os.PathLike, kind: str | None) -> ResumePoint:
    """Resolve and load what `--resume` names for a run writing to `out` whose checkpoints carry `kind` (the
    Trainer task's: None for a classifier), refusing (CheckpointError, one line) a checkpoint of the other kind
    or one that holds weights only."""
    path, note = resume_path(resume, out)
    point = ResumePoint(path=path, notes=[note] if note else [])
    if path is None:
        return point
    point.state, point.loaded_from, note = load_resume(path)
    point.notes += [note] if note else []
    saved_kind = point.state.get("kind")
    if saved_kind != kind:  # before any setting is compared: that is not the difference
        raise CheckpointError(
            f"{path} is a language model's checkpoint (scripts/pretrain.py), not a classifier's: continue "
            f"it with scripts/pretrain.py and --resume, or fine-tune a classifier from it with --pretrained "
            f"{Path(path).parent} and another --out" if saved_kind else
            f"{path} is a classifier's checkpoint (scripts/train.py), not a language model's: continue it "
            "with scripts/train.py and --resume")
    if "optimizer" not in point.state:
        raise CheckpointError(
            f"{path} holds weights only (a best or released checkpoint), not a resumable run; "
            "resume from the run's last.pt"
        )
    return point


def resume_differences(saved: dict, config: TrainConfig) -> list[str]:
    """'name: checkpoint X, now Y' for each RESUME_MUST_MATCH setting a checkpoint's config holds otherwise."""
    saved = dict(saved)
    if isinstance(saved.get("encoding"), str) and saved["encoding"] in LEGACY_ENCODINGS:
        saved["encoding"] = LEGACY_ENCODINGS[saved["encoding"]]  # a checkpoint from before the rename
    return [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(config, k)!r}"
            for k in RESUME_MUST_MATCH if k in saved and saved[k] != getattr(config, k)]


def check_resume(state: dict, config: TrainConfig, vocab) -> None:
    """Refuse (CheckpointError, one line) to resume `state` into a run whose settings or prepared vocabulary
    differ: checked once the data is prepared, since the data may size the model (its classes, vocab_size)."""
    diffs = resume_differences(state.get("config", {}), config)
    if diffs:
        raise CheckpointError(
            f"cannot resume from {config.resume}: it was trained with other settings ({'; '.join(diffs)}). "
            "Resume with the original command line, or start a new run with another --out"
        )
    if state.get("vocab") != vocab.to_dict():
        raise CheckpointError(
            f"{config.resume} was trained with another vocabulary than the data prepared now; "
            "resume with the same data source and --vocab-size"
        )
