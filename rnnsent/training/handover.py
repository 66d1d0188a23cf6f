"""A trained model's weights into a new classifier run: --init-from (a released model, a run folder or a .pt, a
classifier or a language model) and --pretrained (a language model of the same data and vocabulary).

--init-from, settled once before the Trainer (rnnsent.training.settle): the checkpoint is read and checked
(rnnsent.inference.loading.read_trained) and its shape becomes the run's (settle_init); its vocabulary and
tokenizer encode the new data (rnnsent.data.given_vocab); once the data's classes are known, its head is kept
where the labels are the checkpoint's, same names in the same order, else a new one is trained (settle_head).
Building the model, the Trainer copies the weights in (start_from): every word keeps its id, so its embedding
row comes along; words added by --extend-vocab, and ids the checkpoint's vocabulary never used, keep fresh rows.

The language model is rnnsent.training.pretrain's; this module only reads its checkpoints, so the classifier's
trainer can fine-tune from one without importing the pretraining code.
"""
from __future__ import annotations

import dataclasses

import torch

from rnnsent.config import SETTINGS, ModelConfig, TrainConfig
from rnnsent.data import PreparedData, Vocab
from rnnsent.inference.evaluate import class_names
from rnnsent.inference.loading import TrainedCheckpoint, read_trained, resolve_checkpoint
from rnnsent.model.sentiment import SentimentRNN
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state

KIND = "language_model"  # the "kind" of a pretraining checkpoint; classifiers have none
# what must agree to hand the weights over
SHAPE = ("cell", "vocab_size", "embed_dim", "hidden_size", "num_layers", "bidirectional")
# what a run started from a checkpoint takes from it (vocab_size: the data says, the checkpoint's plus any extension)
SHAPE_TAKEN = ("cell", "embed_dim", "hidden_size", "num_layers", "bidirectional")


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """Where a run started from a trained model begins (--init-from), settled once."""

    given: str  # as named: a released name, a run folder or a file
    vocab: Vocab  # what encodes the data: the checkpoint's (a resumed run's own, extended already)
    vocab_rows: int  # the rows of that vocabulary's embedding
    extend_vocab: int  # the words the data preparation adds (0 when resuming: the vocabulary has them)
    source: TrainedCheckpoint | None  # the checkpoint read; None when resuming (last.pt has the weights)
    head_kept: bool = False
    head_note: str = ""  # what happens to the head, with both label sets


def flag(name: str) -> str:
    """A setting's command-line flag, for messages: num_layers -> --layers."""
    return (SETTINGS[name].metadata.get("flags") or (f"--{name.replace('_', '-')}",))[0]


def settle_init(config: TrainConfig, resumed: dict | None) -> tuple[TrainConfig, InitFrom | None]:
    """`config` with the shape of the checkpoint it starts from, and that start; (config, None) without --init-from.
    A new run reads config.init_from; a resumed one (`resumed`: its last.pt) has the shape and vocabulary in its own
    file. A setting that contradicts the checkpoint is refused in one line naming both values."""
    if config.pretrained and config.init_from:
        raise ValueError(f"--pretrained {config.pretrained} and --init-from {config.init_from}: give one (--init-from "
                         "takes a language model too)")
    if not config.init_from:
        if config.extend_vocab:
            raise ValueError(f"--extend-vocab {config.extend_vocab} adds words to a trained model's vocabulary: it "
                             "needs --init-from")
        return config, None
    if resumed is not None:
        config = take_shape(config, ModelConfig(**resumed["model_config"]), config.init_from)
        saved = resumed.get("config", {}).get("init_from_sha256")
        return dataclasses.replace(config, init_from_sha256=saved), InitFrom(
            config.init_from, Vocab.from_dict(resumed["vocab"]), resumed["model_config"]["vocab_size"], 0, None)
    try:
        source = read_trained(config.init_from)
    except CheckpointError as e:
        raise CheckpointError(f"--init-from {config.init_from}: {e}") from None
    if config.init_from_sha256 not in (None, source.sha256):
        raise CheckpointError(f"--init-from {config.init_from}: {source.path} has sha256 {source.sha256}, not the "
                              f"{config.init_from_sha256} the settings ask for")
    if config.freeze == "head" and source.kind == KIND:
        raise ValueError(f"--freeze head: the language model {config.init_from} has no classifier head (this run "
                         "trains a new one); freeze embedding, recurrent or body")
    config = take_shape(config, source.settings, config.init_from)
    return dataclasses.replace(config, init_from_sha256=source.sha256), InitFrom(
        config.init_from, source.vocab, source.settings.vocab_size, config.extend_vocab, source)


def take_shape(config: TrainConfig, settings: ModelConfig, given: str) -> TrainConfig:
    """`config` with the checkpoint's cell, sizes, layers and directions; each setting of `config` that is not its
    default must equal the checkpoint's. vocab_size stays: the data decides it (the checkpoint's, or more with
    --extend-vocab, which a vocab_size setting would contradict)."""
    taken = {}
    for name in SHAPE_TAKEN:
        ours, theirs = getattr(config, name), getattr(settings, name)
        if ours != theirs and ours != getattr(TrainConfig, name):
            raise ValueError(f"{flag(name)} {ours!r} contradicts --init-from {given}, whose {name} is {theirs!r}: "
                             f"a model started from a checkpoint has its shape; leave {flag(name)} out")
        taken[name] = theirs
    if config.vocab_size != TrainConfig.vocab_size:
        if config.extend_vocab:
            raise ValueError(f"--extend-vocab {config.extend_vocab} sizes the vocabulary itself (the checkpoint's "
                             f"{settings.vocab_size:,} ids and the words it adds); leave out --vocab-size "
                             f"{config.vocab_size}")
        if config.vocab_size != settings.vocab_size:
            raise ValueError(f"--vocab-size {config.vocab_size} contradicts --init-from {given}, whose vocab_size is "
                             f"{settings.vocab_size}: its vocabulary encodes the data; leave --vocab-size out")
    return dataclasses.replace(config, **taken)


def check_given_data(data: PreparedData, init: InitFrom) -> None:
    """Data prepared by the caller must be encoded with the checkpoint's vocabulary (extended or not)."""
    words = data.vocab.words
    if words[:len(init.vocab.words)] != init.vocab.words or data.vocab.tokenizer != init.vocab.tokenizer:
        raise ValueError(f"the data given was prepared with its own vocabulary, not that of --init-from {init.given}, "
                         "whose ids its embedding rows follow; prepare it with vocab= that checkpoint's vocabulary, "
                         "or let the run prepare it")


def settle_head(init: InitFrom, config: TrainConfig, data: PreparedData) -> InitFrom:
    """Keep the checkpoint's head where the data's labels are its own (same names, same order), else a new head;
    the line that says which, with both label sets. --freeze head needs the kept head."""
    source = init.source
    ours = class_names(config.num_classes, data.meta.get("classes"))
    if source.kind == KIND:
        return dataclasses.replace(init, head_note=f"a new head for the data's classes ({', '.join(ours)}): a "
                                                   "language model has none")
    theirs = class_names(source.settings.num_classes, source.classes)
    if ours == theirs:
        return dataclasses.replace(init, head_kept=True,
                                   head_note=f"its head kept: the data's labels are its own ({', '.join(ours)})")
    if config.freeze == "head":
        raise ValueError(f"--freeze head: the data's labels ({', '.join(ours)}) are not those of --init-from "
                         f"{init.given} ({', '.join(theirs)}), so its head is replaced by a new one, which must train")
    return dataclasses.replace(init, head_note=f"a new head for the data's labels ({', '.join(ours)}) in place of its "
                                               f"head for {', '.join(theirs)}: the labels differ")


@torch.no_grad()
def start_from(model: SentimentRNN, init: InitFrom) -> str:
    """Copy the checkpoint's embedding rows (those its vocabulary uses: each word keeps its id), recurrent layer and,
    where kept, head into `model`, which has its shape; returns the log line."""
    source = init.source
    weights, ours = source.weights, model.state_dict()  # ours: the model's own tensors
    rows = len(source.vocab)
    ours["embedding.weight"][:rows].copy_(weights["embedding.weight"][:rows])
    copied = [k for k in ours if k.startswith("rnn.") or init.head_kept and k.startswith("fc.")]
    for k in copied:
        ours[k].copy_(weights[k])
    fresh = model.vocab_size - rows
    what = "a language model" if source.kind == KIND else "a classifier"
    return (f"started from {init.given}, {what} ({source.path}, sha256 {source.sha256[:16]}): its embedding for "
            f"{len(source.vocab.words):,} words" + (f" ({fresh:,} fresh rows after them)" if fresh else "")
            + f" and its {model.cell} layer; {init.head_note}")


def load_into(model: SentimentRNN, path, vocab) -> str:
    """Copy a pretrained language model's embedding and recurrent layer into `model`; returns a log line.
    Refuses (CheckpointError, one line) a classifier checkpoint, another shape or another vocabulary."""
    path = resolve_checkpoint(path)
    state = load_checkpoint_state(path)
    if state.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a language model from scripts/pretrain.py (it is a classifier "
                              "checkpoint); pass --pretrained the folder or best.pt of a pretraining run")
    saved = state["model_config"]
    if model.bidirectional and not saved.get("bidirectional"):
        raise CheckpointError(f"the language model {path} reads one direction and this model is bidirectional: a "
                              "next-word language model cannot be bidirectional (its backward direction would see the "
                              "word it predicts), so a bidirectional classifier has no pretrained start; drop "
                              "--pretrained or --bidirectional")
    differ = [
        f"{k} {saved.get(k)!r} there, {getattr(model, k)!r} here" for k in SHAPE if saved.get(k) != getattr(model, k)
    ]
    if differ:
        raise CheckpointError(f"the language model {path} has another shape ({'; '.join(differ)}); "
                              "pretrain with the same --cell, --vocab-size, --embed-dim, --hidden-size and --layers")
    if state.get("vocab") != vocab.to_dict():
        raise CheckpointError(f"the language model {path} was trained with another vocabulary than the data prepared "
                              "now; pretrain and fine-tune on the same data with the same --vocab-size and --limit, "
                              "or start from it with --init-from, which brings its vocabulary along")
    weights = {k: v for k, v in state["model_state"].items() if k.startswith(("embedding.", "rnn."))}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a weight of another size than its own description says
        raise CheckpointError(
            f"the language model {path} does not fit its own description: {str(e).splitlines()[-1].strip()}"
        ) from None
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise CheckpointError(
            f"the language model {path} does not fit this model (missing {missing}, unexpected {unexpected})"
        )
    at = state.get("metrics") or {}  # the epoch this file was saved at
    ppl = at.get("val_perplexity")
    return (f"started from the language model {path}: embedding and recurrent layer"
            + (f" (validation perplexity {ppl:.1f}, its epoch {at.get('epoch')})" if ppl else ""))
