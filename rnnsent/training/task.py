"""What the Trainer trains: a task says what differs between training a classifier
(rnnsent.training.classification.Classification) and pretraining a language model
(rnnsent.training.pretrain.LanguageModelling). The loop, checkpoints and resume are the Trainer's and serve both.

The methods that take `t` get the Trainer, for the run's config, device, dist, scaler, data, model and batchers.
"""
from __future__ import annotations

from typing import Protocol

import torch

from rnnsent.config import TrainConfig
from rnnsent.data import Batcher, EncodedSplit


class Task(Protocol):
    kind: str | None  # the "kind" its checkpoints carry (a classifier's None): a run resumes only its own kind
    reports_accuracy: bool  # whether its batches have right answers to count (the progress bar shows accuracy)

    def settings(self, config: TrainConfig) -> TrainConfig:
        """The config it trains with, checked before anything is read."""

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        """The model, as the settled config describes it."""

    def rnn_implementation(self, t) -> str:
        """What runs the recurrent layer, for logs and reports."""

    def forward_backward(self, t, model, x, lengths, y) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch's loss with the backward pass done (gradients accumulate in the parameters), and its
        number of right predictions (a () tensor, or None without any). `model` is the one to train (DDP's)."""

    def evaluate(self, t, split: EncodedSplit, batcher: Batcher) -> dict:
        """The scores of `split` (this rank's share of it is `batcher`), summed over ranks."""

    def validate(self, t, train_metrics: dict) -> tuple[dict, float]:
        """The epoch's metrics row, and the score (higher is better) that best.pt keeps the highest of."""

    def epoch_line(self, row: dict, improved: bool) -> str:
        """The line logged after each epoch."""

    def finish(self, t) -> dict:
        """The end of the run (a classifier tests best.pt and writes its report); returns the report."""
