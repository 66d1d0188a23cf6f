"""rnnsent.fine_tune: a trained model (a released name, a run folder or a .pt) fine-tuned on your own labelled data,
from Python. The run is an ordinary training run with --init-from (rnnsent.training.handover: its shape, vocabulary
and head; rnnsent.training.freeze: what trains); docs/fine-tuning.md says what it does and what it pays."""
from __future__ import annotations

from rnnsent.config import TrainConfig, fine_tuning_out
from rnnsent.training.trainer import train


def fine_tune(init_from: str, data: str | None = None, **settings) -> dict:
    """Fine-tune `init_from` on `data` (a .csv, .tsv or .jsonl file or a class folder; IMDB when None) and return the
    run's report. `settings` are TrainConfig's (epochs=3, freeze="embedding", extend_vocab=2000, out="runs/mine",
    ...); the run folder is runs/ft-<name> unless `out` says otherwise:

        report = rnnsent.fine_tune("gru", data="my_reviews.csv", epochs=3)
    """
    settings.setdefault("out", fine_tuning_out(init_from))
    return train(TrainConfig(init_from=str(init_from), data_root=None if data is None else str(data), **settings))
