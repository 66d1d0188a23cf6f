"""Checkpoints: atomic writes, checksummed and verified loads, no unpickling of arbitrary objects.

A checkpoint file is a `torch.save` of rnnsent.envelope's checksummed envelope:
    {"format": "rnnsent-checkpoint", "version": 1, "sha256": hex, "payload": uint8 tensor}
where the payload is itself a `torch.save` of plain data (tensors, dicts, lists, str, numbers).
Both levels load with `weights_only=True`, so a file from another program can at worst be refused,
never executed. The checksum catches a file that was truncated or corrupted after it was written
(disk full, a machine that died mid-write on a file system without ordered writes, bit rot).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rnnsent.config import (ENCODINGS, LEGACY_ENCODINGS, DataConfig, canonical_encoding, field_names,
                            warn_expected_per_block)
from rnnsent.envelope import first_line as _first_line, seal, unseal
from rnnsent.files import atomic_write
from rnnsent.runtime import rng_state, set_rng_state

FORMAT = "rnnsent-checkpoint"
VERSION = 1
# The released models (docs/results.md), loaded by name: load_checkpoint("gru") finds them. They live in the
# repository's checkpoints/; the wheel carries them as rnnsent/released/ (setup.py). So an installed copy finds
# them in the package, and a clone or an editable install in the checkout beside it.
_PACKAGE = Path(__file__).resolve().parent
RELEASED = next((d for d in (_PACKAGE / "released", _PACKAGE.parent / "checkpoints") if (d / "RESULTS.json").is_file()),
                _PACKAGE.parent / "checkpoints")
RELEASED_NAMES = ("gru", "lstm", "rnn")
log = logging.getLogger(__name__)
# The largest values a checkpoint's settings may carry: a forged file must not make predict allocate
# without bound (max_len sizes every pre-padded row, vocab_size the embedding).
MAX_LEN_LIMIT = 10_000_000
VOCAB_LIMIT = 10_000_000


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
    later found damaged, load_resume_state falls back to it.
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
    state = unseal(envelope, str(path), FORMAT, VERSION, "rnnsent checkpoint", CheckpointError, map_location)
    if not isinstance(state, dict) or "model_config" not in state or "model_state" not in state:
        raise CheckpointError(f"{path} holds no model (missing model_config or model_state)")
    return state


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """An existing file or folder as it is; otherwise a released model's name (gru, lstm, rnn) -> its file
    in the package. A path always wins over a name; the log (logger rnnsent.checkpoint) says which."""
    given, name = Path(path), str(path).strip().lower()
    if name not in RELEASED_NAMES:
        return given
    if given.exists():
        log.info(f"checkpoint {str(path)!r}: {given.resolve()} (a path here wins over the released model {name})")
        return given
    log.info(f"checkpoint {str(path)!r}: the released {name} model, {RELEASED / f'{name}.pt'}")
    return RELEASED / f"{name}.pt"


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", impl: str = "auto") -> "LoadedModel":
    """Rebuild the model from a checkpoint (a file, a run folder holding best.pt/last.pt, or the name of a
    released model: "gru", "lstm" or "rnn"; an existing path of that name wins).

    Returns a LoadedModel: the model in eval mode on `device`, its vocabulary and the encoding
    settings it was trained with, so `rnnsent.predict(loaded, texts)` needs nothing else. impl says how the
    recurrent layer runs (rnnsent.recurrent: "auto", "fused" or "torch"); it changes no result.
    """
    from rnnsent.data import Vocab
    from rnnsent.models import SentimentRNN

    path = resolve_checkpoint(path)
    state = load_checkpoint_state(path)
    if state.get("kind") == "language_model":
        raise CheckpointError(f"{path} is a language model from scripts/pretrain.py: it predicts words, not sentiment; "
                              f"fine-tune it first with scripts/train.py --pretrained {path}")
    # Everything below comes from the file: check it before it can reach a constructor or an index.
    config = state["model_config"]
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"{path} has a model_config that is not a dict of named settings")
    weights = state["model_state"]
    if isinstance(config.get("vocab_size"), int) and not 0 < config["vocab_size"] <= VOCAB_LIMIT:
        raise CheckpointError(f"{path} has vocab_size {config.get('vocab_size')!r}; a checkpoint may carry 1 to {VOCAB_LIMIT:,}")
    try:
        with torch.device("meta"):  # shapes only: a forged vocab_size of 10**12 must not allocate anything
            expected = {k: tuple(v.shape) for k, v in SentimentRNN(**config).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes a model this rnnsent cannot build: {_first_line(e)}") from None
    found = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)} if isinstance(weights, dict) else {}
    if found != expected:
        raise CheckpointError(
            f"{path} does not fit its own model description: weights {found or weights!r:.200} for a model of {expected}"
        )
    model = SentimentRNN(**config, impl=impl)
    model.load_state_dict(weights)
    try:
        vocab = Vocab.from_dict(state["vocab"])
        if not all(isinstance(w, str) for w in vocab.words):
            raise ValueError("its words are not all strings")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has no usable vocabulary: {_first_line(e)}") from None
    if len(vocab) > model.vocab_size:
        raise CheckpointError(
            f"{path} has a vocabulary of {len(vocab)} ids but an embedding of {model.vocab_size} rows; "
            "its ids would fall outside the model"
        )
    data = state.get("data", {})
    max_len, encoding = (data.get("max_len", 500), data.get("encoding", "keras")) if isinstance(data, dict) else (None, None)
    if type(max_len) is not int or not 1 <= max_len <= MAX_LEN_LIMIT or encoding not in (*ENCODINGS, *LEGACY_ENCODINGS):
        raise CheckpointError(f"{path} has unusable encoding settings (max_len {max_len!r}, encoding {encoding!r}; "
                              f"max_len may be 1 to {MAX_LEN_LIMIT:,})")
    encoding = canonical_encoding(encoding, warn=False)  # "fast" in checkpoints from before the rename
    classes = data.get("classes")  # the user's own data: class names in the model's output order; IMDB: none
    if classes is not None and (not isinstance(classes, list) or len(classes) != model.num_classes
                                or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
        raise CheckpointError(f"{path} has unusable class names ({str(classes):.100}) for a model of {model.num_classes} classes")
    return LoadedModel(model=model.to(device).eval(), vocab=vocab, max_len=max_len, encoding=encoding, state=state,
                       path=Path(path), classes=classes)


class LoadedModel:
    """A model rebuilt from a checkpoint, with what it needs to read raw text."""

    def __init__(self, model, vocab, max_len: int, encoding: str, state: dict, path: Path | None = None,
                 classes: list | None = None):
        self.model, self.vocab, self.max_len, self.encoding, self.state = model, vocab, max_len, encoding, state
        self.path, self.classes = path, classes

    @property
    def metrics(self) -> dict:
        return self.state.get("metrics", {})

    @property
    def config(self) -> dict:
        return self.state.get("config", {})

    def predict(self, texts, batch_size: int = 256):
        from rnnsent.evaluate import predict

        return predict(self.model, texts, self.vocab, self.max_len, self.encoding, batch_size=batch_size, classes=self.classes)

    def prepare_data(self, root=None, cache_dir=None, limit=None, expected_per_block=None):  # the last is deprecated
        """The encoded IMDB splits as this model was trained on them (same vocabulary size, max_len,
        encoding, validation carve and limit, unless given). Raises CheckpointError if the vocabulary
        built from that data is not the model's: scores on other ids would mean nothing. (A model trained on
        your own data scores a file of yours with rnnsent.data.encode_labelled.)"""
        from rnnsent.data import prepare_imdb

        warn_expected_per_block(expected_per_block)
        # (field_names, not __dataclass_fields__: a checkpoint's old expected_per_block is left behind unread)
        saved = {k: v for k, v in self.config.items() if k in field_names(DataConfig)}
        saved.update(max_len=self.max_len, encoding=self.encoding)
        if limit is not None:
            saved["limit"] = limit
        saved["data_root"] = data_root(root, saved.get("data_root"), cache_dir)
        settings = DataConfig(**saved)
        data = prepare_imdb(**settings.data_args(self.model.vocab_size), root=settings.data_root, cache_dir=cache_dir)
        if data.vocab.to_dict() != self.vocab.to_dict():
            raise CheckpointError(
                f"{self.path or 'this checkpoint'} was trained with another vocabulary than the one built from this data "
                "(another source, --vocab-size or --limit); pass the data the model was trained on")
        return data


def training_state(t, full: bool = True) -> dict:
    """Everything a checkpoint of Trainer `t` holds: weights, vocabulary, config and history; with `full`
    (last.pt) also optimizer, scaler, RNG states and the position in the epoch. Every rank must call it
    when distributed (it gathers from all)."""
    state = {
        "model_config": t.model.config(),
        "model_state": {k: v.detach().cpu() for k, v in t.model.state_dict().items()},
        "vocab": t.data.vocab.to_dict(),
        "data": {"max_len": t.config.max_len, "encoding": t.config.encoding,
                 "vocab_size": t.config.vocab_size, "source": str(t.data.meta.get("source", "")),
                 **({"classes": list(t.data.meta["classes"])} if t.data.meta.get("classes") else {})},
        "config": t.config.to_dict(),
        "metrics": t.history[-1] if t.history else {},
        "history": t.history,
        "rnnsent_version": _version(),
    }
    if full:
        *sums, seen = t.global_sums()
        rngs = t.dist.gather(rng_state(t.device))
        state.update(
            optimizer=t.optimizer.state_dict(),
            scaler=t.scaler.state_dict() if t.scaler.is_enabled() else {},
            rng=rngs[0],
            progress={"epoch": t.epoch, "step_in_epoch": t.step_in_epoch,
                      "global_step": t.global_step, "sums": torch.tensor(sums, dtype=torch.float64), "seen": seen,
                      "best_val": t.best_val, "epochs_since_best": t.epochs_since_best,
                      "epoch_seconds": t.epoch_seconds, "world_size": t.dist.world_size},
        )
        if t.dist.enabled:
            state["rng_ranks"] = rngs
        if getattr(t, "ema", None) is not None:
            state["ema"] = t.ema.state_dict()
    return state


def restore_training_state(t, state: dict) -> None:
    """Put Trainer `t` where the checkpoint `state` left off: weights, optimizer, RNG, position, history."""
    p = state["progress"]
    if p.get("world_size", 1) != t.dist.world_size:
        raise CheckpointError(
            f"{t.config.resume} was written by a run of {p.get('world_size', 1)} process(es); resume it with "
            f"the same number (torchrun --nproc_per_node={p.get('world_size', 1)}), not {t.dist.world_size}")
    t.model.load_state_dict(state["model_state"])
    t.optimizer.load_state_dict(state["optimizer"])
    if getattr(t, "ema", None) is not None and "ema" in state:  # else the average starts from the resumed weights
        t.ema.load_state_dict(state["ema"])
    if "scaler" in state and t.scaler.is_enabled():
        t.scaler.load_state_dict(state["scaler"])
    t.epoch, t.step_in_epoch, t.global_step = p["epoch"], p["step_in_epoch"], p["global_step"]
    t.saved_step = t.global_step
    if t.is_main:  # the saved sums are over all ranks: one rank carries them on
        t.sums, t.seen = p["sums"].to(t.device, torch.float64), p["seen"]
    t.best_val, t.epochs_since_best = p["best_val"], p["epochs_since_best"]
    t.epoch_seconds = p.get("epoch_seconds", 0.0)
    t.history = list(state.get("history", []))
    set_rng_state(state.get("rng_ranks", [state["rng"]])[t.dist.rank], t.device)
    t.log(f"resumed from {getattr(t, 'resumed_from', None) or t.config.resume}: epoch {t.epoch + 1}, step {t.step_in_epoch} "
          f"of {len(t.train_batches)} (global step {t.global_step})")


def _version() -> str:
    from rnnsent import __version__

    return __version__


def data_root(explicit, recorded, cache_dir=None):
    """Where to read a checkpoint's data: `explicit` (--data), else RNNSENT_DATA, else the normal search
    (the cache). The path `recorded` in the checkpoint is a path of the machine that trained it, so it
    is only a hint, tried before a download when it exists here. Whatever is found is proved to be
    the same data by the vocabulary check in LoadedModel.prepare_data, not by its path."""
    from rnnsent.data.fetch import NoSourceError, find_imdb

    if explicit is not None or os.environ.get("RNNSENT_DATA") or not recorded or not Path(str(recorded)).exists():
        return explicit
    try:
        find_imdb(None, cache_dir, download=False)
        return None
    except NoSourceError:
        return recorded


# Config fields that name places on the machine that wrote a checkpoint: a released file must not carry them.
MACHINE_PATHS = ("data_root", "cache_dir", "resume")


def portable_run_path(path) -> str:
    """A run folder (or a checkpoint in one) as runs/<folder>[/<file>], without this machine's part of the path."""
    path = Path(path)
    return str(Path("runs") / (Path(path.parent.name, path.name) if path.suffix == ".pt" else path.name))


def portable_state(state: dict) -> dict:
    """`state` without the paths of the machine that wrote it, for files given to others (checkpoints/)."""
    config = dict(state.get("config", {}))
    for key in MACHINE_PATHS:
        if key in config:
            config[key] = None
    for key in ("out", "pretrained"):  # run folders: runs/<name>, as the recorded command has them
        if config.get(key):
            config[key] = portable_run_path(config[key])
    return {**state, "config": config}
