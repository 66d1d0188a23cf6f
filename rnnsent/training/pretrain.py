"""Language-model pretraining (Dai & Le, 2015): teach the classifier's embedding and recurrent layer to
predict each next word of the training reviews, then fine-tune them on the labels.

    python scripts/pretrain.py --cell gru --out runs/lm-gru          # a run folder like training's
    python scripts/train.py --cell gru --pretrained runs/lm-gru       # starts from its best.pt

Only the training split's text is read (the validation reviews measure perplexity, the test split is
never touched), so every IMDB source gives the same result, and your own data works the same way. The
run is an ordinary Trainer run (resumable, checkpointed, the same flags); what differs is the model, the
loss and the validation score, which is the loss per word (lower is better).

The word distribution is an adaptive softmax (Grave et al., 2017): frequent words get the full
hidden-size projection, rare ones share smaller clusters, which keeps the 5,000-word output cheap.
The output layer is needed only here: fine-tuning takes the embedding and the recurrent layer.
"""
from __future__ import annotations

import json
import math

import torch
from torch import nn
from torch.nn import functional as F

from rnnsent.storage.checkpoint import load_checkpoint_state
from rnnsent.config import FINE_TUNING_ONLY, ModelConfig, TrainConfig
from rnnsent.training.handover import KIND
from rnnsent.model.sentiment import SentimentRNN, count_parameters
from rnnsent.runtime import autocast_context
from rnnsent.training.trainer import Trainer, run_task


def cutoffs(vocab_size: int, hidden_size: int) -> list[int]:
    """Adaptive-softmax cluster bounds for ids sorted by frequency (as rnnsent's vocabularies are): the
    first tenth of the vocabulary in the head, the next 30% and the rest in two tails, projected to a
    quarter and a sixteenth of the hidden size. Empty (a plain softmax) where that is too small to split."""
    bounds = sorted({vocab_size // 10, vocab_size * 2 // 5})
    return bounds if vocab_size >= 50 and hidden_size >= 16 and bounds[0] >= 2 else []


def refuse_bidirectional(settings: ModelConfig) -> None:
    if settings.bidirectional:  # its backward half would read the very word it is asked to predict
        raise ValueError("a bidirectional model cannot be pretrained as a next-word language model: its backward "
                         "direction sees the word it predicts; pretrain without --bidirectional, or train the "
                         "bidirectional classifier from scratch")


class LanguageModel(nn.Module):
    """The classifier's Embedding and recurrent layer (same names, shapes and initialisation as
    SentimentRNN's), predicting every next token of a review.

    forward(tokens) takes (B, T) ids, padding 0 anywhere, and returns the mean loss per predicted token
    (natural log): every position predicts the next one, and padding is never a target.
    """

    def __init__(self, settings: ModelConfig):
        super().__init__()
        refuse_bidirectional(settings)
        body = SentimentRNN(settings, impl="torch")  # the classifier's own layers and initialisation
        self.settings = settings
        self.embedding, self.rnn = body.embedding, body.rnn
        self.drop_in, self.drop_out = body.drop_in, body.drop_out
        bounds = cutoffs(settings.vocab_size, settings.hidden_size)
        self.head = (nn.AdaptiveLogSoftmaxWithLoss(settings.hidden_size, settings.vocab_size, bounds, div_value=4.0)
                     if bounds else nn.Linear(settings.hidden_size, settings.vocab_size))

    def config(self) -> dict:
        return self.settings.model_args()

    def summary(self, time_steps=None) -> str:
        """Parameter counts: the layers fine-tuning takes over, and the output layer only pretraining uses."""
        n = {name: count_parameters(getattr(self, name)) for name in ("embedding", "rnn", "head")}
        adaptive = isinstance(self.head, nn.AdaptiveLogSoftmaxWithLoss)
        # [-1]: the vocab size
        kind = (f"adaptive softmax, clusters at {self.head.cutoffs[:-1]}" if adaptive else "softmax")
        return (
            f'Model: "language_model_{self.settings.cell}"\n'
            f"embedding {n['embedding']:,} + {self.settings.cell} {n['rnn']:,} parameters (fine-tuning takes these); "
            f"next-word output ({kind}) {n['head']:,}"
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.drop_in(self.embedding(tokens)))  # (B, T, H)
        targets = tokens[:, 1:]  # position t predicts token t + 1
        keep = targets != 0  # (B, T-1)
        hidden = self.drop_out(out[:, :-1][keep]).float()  # (N, H), the predicting states
        if isinstance(self.head, nn.Linear):
            return F.cross_entropy(self.head(hidden), targets[keep])
        return self.head(hidden, targets[keep]).loss


class LanguageModelling:
    """The language model's task for the Trainer (rnnsent.training.task.Task): the same loop, checkpoints and
    resume; best.pt has the lowest validation loss per word. Labels and the test split are not used."""

    kind = KIND
    reports_accuracy = False

    def settings(self, config: TrainConfig) -> TrainConfig:
        refuse_bidirectional(config)  # before any data is read
        fine_tuning_only = [
            f"--{k.replace('_', '-')}" for k, off in FINE_TUNING_ONLY.items() if k != "word_dropout"
            and getattr(config, k) != off
        ]
        if fine_tuning_only:
            raise ValueError(
                f"{', '.join(fine_tuning_only)} apply to fine-tuning (scripts/train.py), not to pretraining"
            )
        return TrainConfig(**{**config.to_dict(), "monitor": "loss"})

    def build_model(self, config: TrainConfig) -> nn.Module:
        return LanguageModel(ModelConfig(**config.model_args()))

    def rnn_implementation(self, t) -> str:
        return (
            "PyTorch's layers (a language model needs the state after every word, which the fused kernel does not keep)"
        )

    def forward_backward(self, t, model, x, lengths, y):
        """The batch's mean loss per word; no right predictions to count (None)."""
        with autocast_context(t.device, t.config.amp):
            loss = model(x)
        t.scaler.scale(loss).backward()
        return loss, None

    def evaluate(self, t, split, batcher) -> dict:
        """Loss per word on `split` (validation): summed over words, so batch size changes nothing."""
        model = t.model
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=t.device)  # loss * words, words
        with torch.no_grad():
            for x, _, _ in batcher.iterate(0):
                with autocast_context(t.device, t.config.amp):
                    loss = model(x)
                words = (x[:, 1:] != 0).sum()
                sums += torch.stack([loss.double() * words, words.double()])
        model.train()
        loss_sum, words = t.dist.sum(sums).tolist()
        loss = loss_sum / max(words, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "words": int(words)}

    def validate(self, t, train_metrics: dict) -> tuple[dict, float]:
        """The epoch's row (losses per word, perplexity; no accuracy) and the score: lower loss is better."""
        val = self.evaluate(t, t.data.val, t.val_batches)
        row = {"epoch": t.epoch + 1, "global_step": t.global_step, "train_loss": train_metrics["train_loss"],
               "epoch_seconds": train_metrics["epoch_seconds"],
               "samples_per_second": train_metrics["samples_per_second"], "val_loss": val["loss"],
               "val_perplexity": val["perplexity"]}
        return row, -val["loss"]

    def epoch_line(self, row: dict, improved: bool) -> str:
        return (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} | val loss {row['val_loss']:.4f} "
                f"perplexity {row['val_perplexity']:.1f} | {row['epoch_seconds']:.1f} s, "
                f"{row['samples_per_second']:.0f} reviews/s" + (" (best)" if improved else ""))

    def finish(self, t) -> dict:
        """Score best.pt on validation again and write report.json; the test split stays untouched."""
        best = t.out / "best.pt"
        t.dist.barrier()
        t.model.load_state_dict(load_checkpoint_state(best)["model_state"])
        val = self.evaluate(t, t.data.val, t.val_batches)
        result = {"task": KIND, "cell": t.config.cell, "best_val_loss": val["loss"],
                  "val_perplexity": val["perplexity"], "val_words": val["words"], "epochs": len(t.history),
                  "epoch_seconds": [r["epoch_seconds"] for r in t.history], "device": str(t.device),
                  "checkpoint": str(best)}
        if t.is_main:
            (t.out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
            t.log(f"language model: validation perplexity {val['perplexity']:.1f} ({val['loss']:.4f} per word); "
                  f"fine-tune it with scripts/train.py --pretrained {t.out}")
        return result


class PretrainTrainer(Trainer):
    """A Trainer of the LanguageModelling task."""

    def __init__(self, config: TrainConfig, data=None):
        super().__init__(config, data, task=LanguageModelling())


def pretrain(config: TrainConfig, data=None) -> dict:
    """Pretrain a language model as `config` says (out, epochs, data, ...); returns its report."""
    return run_task(config, data, LanguageModelling())
