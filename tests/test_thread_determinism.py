"""Whole training runs give the same weights, to the bit, for any --threads (fused kernel)."""
import dataclasses
from pathlib import Path

import pytest
import torch

from rnnsent.model import fused
from rnnsent.data import prepare_imdb
from rnnsent.config import TrainConfig
from rnnsent.training.trainer import Trainer
from helpers import assert_same_weights

FIXTURE = Path(__file__).parent / "fixtures" / "imdb" / "reviews.json"


def _config(tmp_path, cell: str, threads: int, **overrides) -> TrainConfig:
    # batch 64 over the fixture's reviews repeated: two of the kernel's 32-row chunks per batch plus a short
    # last batch, so threads really share the batch; dropout and word dropout draw from the RNG too.
    values = dict(cell=cell, vocab_size=300, embed_dim=16, hidden_size=24, max_len=80, epochs=2, batch_size=64,
                  data_root=str(FIXTURE), cache_dir=str(tmp_path / "cache"),
                  out=str(tmp_path / f"run-{threads}"), quiet=True, val_fraction=0.25, seed=3,
                  rnn_impl="fused", threads=threads, output_dropout=0.1, word_dropout=0.1, clip=1.0)
    values.update(overrides)
    return TrainConfig(**values)


def _tiled(config: TrainConfig, times: int = 24):
    data = prepare_imdb(**config.data_args(), root=config.data_root, cache_dir=config.cache_dir)
    t = data.train
    train = dataclasses.replace(t, tokens=t.tokens.repeat(times, 1), lengths=t.lengths.repeat(times),
                                labels=t.labels.repeat(times))
    return dataclasses.replace(data, train=train)


@pytest.mark.skipif(not fused.available(), reason=f"fused kernel unavailable: {fused.status()}")
@pytest.mark.parametrize("cell,overrides", [("gru", {}), ("lstm", {"embed_dropout": 0.2}), ("rnn", {}),
                                            ("gru", {"num_layers": 2, "bidirectional": True, "layer_dropout": 0.2})])
def test_training_is_bit_identical_for_threads_1_2_3(tmp_path, cell, overrides):
    previous = torch.get_num_threads()
    try:
        final = {}
        for threads in (1, 2, 3):
            config = _config(tmp_path, cell, threads, **overrides)
            trainer = Trainer(config, _tiled(config))
            assert trainer.task.rnn_implementation(trainer).startswith("fused CPU kernel")
            assert len(trainer.train_batches) >= 3
            trainer.fit()
            assert torch.get_num_threads() == threads
            final[threads] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        assert_same_weights(final[1], final[2])
        assert_same_weights(final[1], final[3])
    finally:
        torch.set_num_threads(previous)
