"""Loading a model: a checkpoint file, a run folder or a released model's name -> a LoadedModel (the model in eval
mode, its vocabulary and encoding settings), checked before anything is built from it.

The file format itself (save, verify, read) is rnnsent.storage.checkpoint's; this module decides what a verified file
may make the program build, and finds a loaded model's data again (LoadedModel.prepare_data).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import torch

from rnnsent.storage.checkpoint import CheckpointError, checkpoint_file, load_checkpoint_state
from rnnsent.config import DataConfig, ModelConfig, canonical_encoding, check_setting, field_names
from rnnsent.storage.envelope import first_line as _first_line
from rnnsent.runtime import PREDICTING, check_fits

# The released models (docs/results.md), loaded by name: load_checkpoint("gru") finds them. They live in the
# repository's checkpoints/; the wheel carries them as rnnsent/released/ (setup.py). So an installed copy finds
# them in the package, and a clone or an editable install in the checkout beside it.
_PACKAGE = Path(__file__).resolve().parents[1]
RELEASED = next((d for d in (_PACKAGE / "released", _PACKAGE.parent / "checkpoints") if (d / "RESULTS.json").is_file()),
                _PACKAGE.parent / "checkpoints")
RELEASED_NAMES = ("gru", "lstm", "rnn")
# The name the log has always used (docs: "the log (logger rnnsent.storage.checkpoint) says which").
log = logging.getLogger("rnnsent.checkpoint")


def _check_declared_sizes(path, config: dict, weights) -> None:
    """Bound every size the file declares by what it really stores, before a model is built from them.

    Each weight must hold its own elements: a stride-0 (expanded) tensor of shape (10**6, 10**4) is stored in
    4 bytes, passes a shape check, and would make the model allocate 40 GB. Then every whole number in
    model_config (vocab_size, embed_dim, hidden_size, num_classes, and any size a later model adds, such as a
    layer count) is at most the elements stored: each one is a dimension of some weight, or a count of them."""
    if not isinstance(weights, dict):
        return  # the shape check refuses it, naming what is there
    stored = 0
    for name, v in weights.items():
        if not isinstance(v, torch.Tensor):
            continue
        held = v.untyped_storage().nbytes() - v.storage_offset() * v.element_size()
        if v.numel() and (not v.is_contiguous() or held < v.numel() * v.element_size()):
            raise CheckpointError(
                f"{path}: weight {name!r} of shape {tuple(v.shape)} does not store its own elements "
                f"(strides {v.stride()}, {max(held, 0):,} bytes stored); refusing a forged checkpoint"
            )
        stored += v.numel()
    for key, value in config.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > max(stored, 1):
            raise CheckpointError(f"{path} declares {key} {value:,}, more than the {stored:,} weights it stores; "
                                  "refusing a forged or damaged checkpoint")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """An existing file or folder as it is; otherwise a released model's name (gru, lstm, rnn) -> its file
    in the package. A path always wins over a name; the log (logger rnnsent.storage.checkpoint) says which."""
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
    recurrent layer runs (rnnsent.model.recurrent: "auto", "fused" or "torch"); it changes no result.
    """
    path = resolve_checkpoint(path)
    state = _read_classifier(path)
    # Everything below comes from the file: each part is checked before it can reach a constructor or an index.
    model = _build_model(path, _model_settings(path, state), state["model_state"], impl)
    vocab = _vocabulary(path, state, model.vocab_size)
    max_len, encoding, classes = _encoding_settings(path, state, model.num_classes)
    threshold, positive = _decision(path, state, model.num_classes, classes)
    return LoadedModel(model=model.to(device).eval(), vocab=vocab, max_len=max_len, encoding=encoding, state=state,
                       path=Path(path), classes=classes, threshold=threshold, positive=positive)


def _read_classifier(path: Path) -> dict:
    """The verified contents of a classifier's checkpoint (a language model's is refused: it predicts words)."""
    state = load_checkpoint_state(path)
    if state.get("kind") == "language_model":
        raise CheckpointError(f"{path} is a language model from scripts/pretrain.py: it predicts words, not sentiment; "
                              f"fine-tune it first with scripts/train.py --pretrained {path}")
    return state


def _model_settings(path: Path, state: dict) -> ModelConfig:
    """The file's model_config as settings each of which holds its rule (rnnsent.config), and that every size
    it declares is backed by weights the file really stores."""
    config = state["model_config"]
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"{path} has a model_config that is not a dict of named settings")
    try:
        settings = ModelConfig(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes a model this rnnsent cannot build: {_first_line(e)}") from None
    _check_declared_sizes(path, config, state["model_state"])
    return settings


def _build_model(path: Path, settings: ModelConfig, weights, impl: str):
    """The model of `settings` holding `weights`, once it fits in memory and their shapes are the model's."""
    from rnnsent.model.sentiment import SentimentRNN

    try:  # the bound on a training run's model too: counted from the settings, before anything is built
        check_fits(settings.parameter_count(), torch.device("cpu"), PREDICTING, advice="refusing to build it")
    except ValueError as e:
        raise CheckpointError(f"{path} describes a model that {str(e).removeprefix('the model ')}") from None
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated before the sizes are known to be sane
            expected = {k: tuple(v.shape) for k, v in SentimentRNN(settings).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes a model this rnnsent cannot build: {_first_line(e)}") from None
    found = ({k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
             if isinstance(weights, dict) else {})
    if found != expected:
        raise CheckpointError(
            f"{path} does not fit its own model description: weights {found or weights!r:.200} for a model of "
            f"{expected}"
        )
    model = SentimentRNN(settings, impl=impl)
    model.load_state_dict(weights)
    return model


def _vocabulary(path: Path, state: dict, vocab_size: int):
    """The file's vocabulary, whose ids all fall inside the model's embedding of vocab_size rows."""
    from rnnsent.data import Vocab

    try:
        vocab = Vocab.from_dict(state["vocab"])
        if not all(isinstance(w, str) for w in vocab.words):
            raise ValueError("its words are not all strings")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has no usable vocabulary: {_first_line(e)}") from None
    if len(vocab) > vocab_size:
        raise CheckpointError(
            f"{path} has a vocabulary of {len(vocab)} ids but an embedding of {vocab_size} rows; "
            "its ids would fall outside the model"
        )
    return vocab


def _encoding_settings(path: Path, state: dict, num_classes: int) -> tuple[int, str, list | None]:
    """(max_len, encoding, class names or None) as the file's "data" holds them, each by its setting's rule."""
    data = state.get("data", {})
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} has unusable encoding settings: {str(data):.100} is not a dict of them")
    try:
        max_len = check_setting("max_len", data.get("max_len", 500))
        encoding = canonical_encoding(data.get("encoding", "keras"), warn=False)  # "fast" in files before the rename
    except ValueError as e:
        raise CheckpointError(f"{path} has unusable encoding settings: {e}") from None
    classes = data.get("classes")  # the user's own data: class names in the model's output order; IMDB: none
    if classes is not None and (not isinstance(classes, list) or len(classes) != num_classes
                                or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
        raise CheckpointError(
            f"{path} has unusable class names ({str(classes):.100}) for a model of {num_classes} classes"
        )
    return max_len, encoding, classes


def _decision(path: Path, state: dict, num_classes: int, classes: list | None) -> tuple[float, int]:
    """(threshold, index of the positive class) of a two-class model, as its run set them (--threshold,
    --positive-label): the threshold best.pt stores (tuned or fixed), else the run's fixed one, else 0.5; the
    positive class the run named, else the second. A model of more classes answers by argmax and ignores both."""
    from rnnsent.inference.evaluate import positive_class

    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    if num_classes != 2:
        return 0.5, 1
    threshold = state.get("threshold", config.get("threshold"))
    try:
        untuned = threshold is None or isinstance(threshold, str) and threshold == "auto"  # auto: a run cut short
        threshold = 0.5 if untuned else check_setting("threshold", threshold)
        return float(threshold), positive_class(classes, config.get("positive_label"))
    except ValueError as e:
        raise CheckpointError(f"{path} has an unusable decision rule: {e}") from None


class LoadedModel:
    """A model rebuilt from a checkpoint, with what it needs to read raw text."""

    def __init__(self, model, vocab, max_len: int, encoding: str, state: dict, path: Path | None = None,
                 classes: list | None = None, threshold: float = 0.5, positive: int = 1):
        self.model, self.vocab, self.max_len, self.encoding, self.state = model, vocab, max_len, encoding, state
        self.path, self.classes = path, classes
        self._threshold, self._positive = threshold, positive

    @property
    def threshold(self) -> float | None:
        """Two classes: the positive class is predicted where its probability is at least this (0.5 unless the
        run set or tuned another, --threshold). None for more classes (argmax)."""
        return self._threshold if self.model.num_classes == 2 else None

    @property
    def positive(self) -> int | None:
        """Two classes: the index of the positive class (--positive-label; the second by default). None for more."""
        return self._positive if self.model.num_classes == 2 else None

    @property
    def positive_label(self) -> str | None:
        """Two classes: the positive class's name (rnnsent.inference.evaluate.positive_class). None for more."""
        from rnnsent.inference.evaluate import class_names

        return class_names(2, self.classes)[self._positive] if self.model.num_classes == 2 else None

    @property
    def metrics(self) -> dict:
        return self.state.get("metrics", {})

    @property
    def config(self) -> dict:
        return self.state.get("config", {})

    @property
    def provenance(self) -> dict | None:
        """Where this model's training started (--init-from): {"init_from": the released name or path given,
        "sha256": that checkpoint file's checksum}; None for a model trained from scratch."""
        given = self.config.get("init_from")
        if not given:
            return None
        digest = self.config.get("init_from_sha256")
        return {"init_from": str(given)[:1000], "sha256": str(digest)[:64] if digest else None}

    def predict(self, texts, batch_size: int = 256, groups=None):
        """rnnsent.inference.evaluate.predict with this model's vocabulary, length, encoding and class names."""
        from rnnsent.inference.evaluate import predict

        return predict(self.model, texts, self.vocab, self.max_len, self.encoding, batch_size=batch_size,
                       classes=self.classes, groups=groups, **self.decision())

    def decision(self) -> dict:
        """predict()'s and evaluate()'s threshold and positive arguments for this model."""
        return {"threshold": self._threshold, "positive": self._positive}

    def prepare_data(self, root=None, cache_dir=None, limit=None):
        """The encoded IMDB splits as this model was trained on them (same vocabulary size, max_len,
        encoding, validation carve and limit, unless given). Raises CheckpointError if the vocabulary
        built from that data is not the model's: scores on other ids would mean nothing. (A model trained on
        your own data scores a file of yours with rnnsent.data.encode_labelled.)"""
        from rnnsent.data import prepare_imdb

        # (field_names, not __dataclass_fields__: a checkpoint's old expected_per_block is left behind unread)
        saved = {k: v for k, v in self.config.items() if k in field_names(DataConfig)}
        saved.update(max_len=self.max_len, encoding=self.encoding)
        if limit is not None:
            saved["limit"] = check_setting("limit", limit)
        saved["data_root"] = data_root(root, saved.get("data_root"), cache_dir)
        try:
            settings = DataConfig(**saved)
        except ValueError as e:
            raise CheckpointError(f"{self.path or 'this checkpoint'} has unusable data settings: {e}") from None
        # a model started from another's (--init-from) reads the data with the vocabulary it was trained with
        given = self.vocab if self.provenance else None
        data = prepare_imdb(**settings.data_args(self.model.vocab_size), root=settings.data_root, cache_dir=cache_dir,
                            vocab=given)
        if data.vocab.to_dict() != self.vocab.to_dict():
            raise CheckpointError(
                f"{self.path or 'this checkpoint'} was trained with another vocabulary than the one built from this "
                "data "
                "(another source, --vocab-size or --limit); pass the data the model was trained on"
            )
        return data


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



@dataclasses.dataclass(frozen=True)
class TrainedCheckpoint:
    """A checkpoint a run starts from (--init-from): a classifier's or a language model's, each part checked as
    load_checkpoint checks it (settings by their rules, sizes backed by stored weights, the weights' shapes)."""

    given: str  # as named: a released name, a run folder or a file
    path: Path  # the file read
    sha256: str  # of that file
    kind: str | None  # None: a classifier; "language_model": scripts/pretrain.py's
    settings: ModelConfig
    vocab: object  # rnnsent.data.Vocab
    classes: list | None  # a classifier's stored class names in output order (None: IMDB's, or a language model)
    weights: dict  # its model_state


def read_trained(given: str | os.PathLike) -> TrainedCheckpoint:
    """The checkpoint `given` names (a released name, a run folder: its best.pt, or a file), of either kind, checked;
    CheckpointError (one line) for anything else."""
    path = checkpoint_file(resolve_checkpoint(given))
    state = load_checkpoint_state(path)
    kind = state.get("kind")
    if kind not in (None, "language_model"):
        raise CheckpointError(f"{path} is a checkpoint of kind {str(kind)[:40]!r}, neither a classifier nor a "
                              "language model")
    settings = _model_settings(path, state)
    classes = None
    if kind is None:
        _build_model(path, settings, state["model_state"], "torch")  # shapes and memory, as load_checkpoint does
        classes = _encoding_settings(path, state, settings.num_classes)[2]
    else:
        _check_body_shapes(path, settings, state["model_state"])
    vocab = _vocabulary(path, state, settings.vocab_size)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return TrainedCheckpoint(str(given), path, digest.hexdigest(), kind, settings, vocab, classes,
                             state["model_state"])


def _check_body_shapes(path: Path, settings: ModelConfig, weights) -> None:
    """A language model's embedding and recurrent weights are those of a classifier of its settings."""
    from rnnsent.model.sentiment import SentimentRNN

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SentimentRNN(settings).state_dict().items()
                    if k.startswith(("embedding.", "rnn."))}
    found = ({k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor) and k in expected}
             if isinstance(weights, dict) else {})
    if found != expected:
        raise CheckpointError(f"{path} does not fit its own model description: embedding and recurrent weights "
                              f"{found!r:.200} for a model of {expected!r:.200}")
