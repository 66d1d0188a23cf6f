"""Handing a pretrained language model's embedding and recurrent layer to a classifier (--pretrained).

The language model is rnnsent.training.pretrain's; this module only reads its checkpoints, so the classifier's
trainer can fine-tune from one without importing the pretraining code.
"""
from __future__ import annotations

from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state
from rnnsent.inference.loading import resolve_checkpoint
from rnnsent.model.sentiment import SentimentRNN

KIND = "language_model"  # the "kind" of a pretraining checkpoint; classifiers have none
# what must agree to hand the weights over
SHAPE = ("cell", "vocab_size", "embed_dim", "hidden_size", "num_layers", "bidirectional")


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
                              "now; pretrain and fine-tune on the same data with the same --vocab-size and --limit")
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
