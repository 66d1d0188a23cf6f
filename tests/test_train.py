"""The trainer as a library: tiny real-data runs, exact resume, early stopping, device resolution."""
import json
from pathlib import Path

import pytest
import torch

from rnnsent.inference.loading import load_checkpoint
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state
from rnnsent.inference.evaluate import evaluate
from rnnsent.config import CELLS, RECIPES, TrainConfig, recipe_settings
from rnnsent.runtime import resolve_device
from rnnsent.training.stopping import NonFiniteLoss, TrainingInterrupted
from rnnsent.training.trainer import Trainer, lr_at
from helpers import assert_same_weights, weights

FIXTURE = Path(__file__).parent / "fixtures" / "imdb" / "reviews.json"
PER_BLOCK = 6  # the fixture holds the first 6 reviews of each of the four blocks


def tiny(tmp_path, **overrides) -> TrainConfig:
    values = dict(cell="gru", vocab_size=300, embed_dim=8, hidden_size=6, max_len=60, epochs=2, batch_size=4,
                  data_root=str(FIXTURE), cache_dir=str(tmp_path / "cache"),
                  out=str(tmp_path / "run"), quiet=True, val_fraction=0.25)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("encoding", ["bucketed", "keras"])
def test_tiny_run_writes_everything(tmp_path, cell, encoding):
    trainer = Trainer(tiny(tmp_path, cell=cell, encoding=encoding))
    report = trainer.fit()
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.json", "summary.txt", "report.json", "curves.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train_loss"] > 0 for r in rows)
    # The recorded validation scores are those of the saved weights, scored afresh on the validation split.
    reloaded = load_checkpoint(run / "last.pt")
    val = evaluate(reloaded.model, trainer.data.val, batch_size=5)
    assert rows[-1]["val_accuracy"] == pytest.approx(val["accuracy"]) and rows[-1]["val_loss"] == pytest.approx(
        val["loss"]
    )
    # The test split of the fixture: 6 negative and 6 positive reviews, every one scored once.
    c = report["confusion"]
    assert c["tp"] + c["fn"] == PER_BLOCK and c["tn"] + c["fp"] == PER_BLOCK
    assert report["test_accuracy"] == pytest.approx((c["tp"] + c["tn"]) / (2 * PER_BLOCK))
    summary = (run / "summary.txt").read_text()
    expected_params = {"lstm": 4 * (6 * 8 + 6 * 6 + 6), "gru": 3 * (6 * 8 + 6 * 6 + 2 * 6), "rnn": 6 * 8 + 6 * 6 + 6}[
        cell
    ]
    assert f"{expected_params:,}" in summary and "test accuracy" in summary
    best = load_checkpoint_state(run / "best.pt")
    assert "optimizer" not in best, "best.pt is weights + vocabulary + config only"
    last = load_checkpoint_state(run / "last.pt")
    assert last["progress"]["epoch"] == 2 and last["progress"]["step_in_epoch"] == 0
    assert last["vocab"] == best["vocab"] == trainer.data.vocab.to_dict()
    assert reloaded.vocab.words == trainer.data.vocab.words


def test_training_learns_on_real_reviews(tmp_path):
    """On 12 real reviews the model must at least fit its training set: the loop really optimises."""
    t = Trainer(tiny(tmp_path, epochs=15, lr=2e-2))
    t.fit()
    first, last = t.history[0], t.history[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["train_accuracy"] == 1.0


def _interrupt_at(trainer: Trainer, global_step: int):
    """A Ctrl-C once step `global_step` is done, as the trainer's callbacks may raise it."""
    def stop(t: Trainer):
        if t.global_step == global_step:
            raise KeyboardInterrupt

    trainer.add_callback("on_step_end", stop)


@pytest.mark.parametrize(
    "where, model",
    [("inside epoch 1", {}), ("end of epoch 1", {}), ("inside epoch 2", {}),
     ("inside epoch 2", {"num_layers": 2, "bidirectional": True, "layer_dropout": 0.3})],
)
def test_resume_after_interrupt_reproduces_uninterrupted_weights(tmp_path, where, model):
    common = dict(epochs=3, embed_dropout=0.2, output_dropout=0.1, seed=7, **model)  # dropout: RNG state restored too
    Trainer(tiny(tmp_path / "a", **common)).fit()
    reference = weights(tmp_path / "a" / "run" / "last.pt")

    first = Trainer(tiny(tmp_path / "b", **common))
    n = len(first.train_batches)
    assert n >= 2
    stop_at = {"inside epoch 1": 1, "end of epoch 1": n, "inside epoch 2": n + 1}[where]
    _interrupt_at(first, stop_at)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        first.fit()
    last = tmp_path / "b" / "run" / "last.pt"
    assert load_checkpoint_state(last)["progress"]["global_step"] == stop_at
    with pytest.raises(AssertionError):
        assert_same_weights(weights(last), reference)  # really stopped early

    Trainer(tiny(tmp_path / "b", resume=str(last), **common)).fit()
    assert_same_weights(weights(last), reference)
    rows_a = (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if "second" not in k} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b), "the resumed run's metrics equal the uninterrupted run's"


def test_resume_refuses_other_settings(tmp_path):
    Trainer(tiny(tmp_path, epochs=1)).fit()
    last = str(tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match="cell: checkpoint 'gru', now 'lstm'"):
        Trainer(tiny(tmp_path, cell="lstm", resume=last))
    with pytest.raises(CheckpointError, match="vocab_size: checkpoint 300, now 200"):
        Trainer(tiny(tmp_path, vocab_size=200, resume=last))
    with pytest.raises(CheckpointError, match="weights only"):
        Trainer(tiny(tmp_path, resume=str(tmp_path / "run" / "best.pt")))
    # More epochs is the normal way to continue a finished run.
    t = Trainer(tiny(tmp_path, epochs=2, resume=last))
    assert t.epoch == 1
    t.fit()
    assert len(t.history) == 2


def test_early_stopping_stops_and_keeps_best(tmp_path):
    t = Trainer(tiny(tmp_path, epochs=40, lr=3e-2, patience=2))
    t.fit()
    accs = [r["val_accuracy"] for r in t.history]
    assert len(accs) < 40
    best_epoch = max(range(len(accs)), key=lambda i: (accs[i], -i))
    assert len(accs) == best_epoch + 1 + 2, "stops exactly `patience` epochs after the best one"
    assert load_checkpoint_state(tmp_path / "run" / "best.pt")["metrics"]["epoch"] == best_epoch + 1


def test_non_finite_loss_stops_with_the_step(tmp_path, monkeypatch):
    t = Trainer(tiny(tmp_path, epochs=2))
    t.fit()  # leaves a good last.pt
    good = (tmp_path / "run" / "last.pt").read_bytes()
    bad = t.global_step + 1
    monkeypatch.setenv("RNNSENT_FAULT_NAN_AT_STEP", str(bad))  # rnnsent.training.faults poisons that step's logits
    t2 = Trainer(tiny(tmp_path, epochs=3, resume=str(tmp_path / "run" / "last.pt")))
    with pytest.raises(NonFiniteLoss, match=f"global step {bad} .*Lower --lr"):
        t2.fit()
    assert (tmp_path / "run" / "last.pt").read_bytes() == good


def test_lr_schedule_is_a_function_of_the_step():
    c = TrainConfig(lr=1e-3, schedule="cosine", warmup_steps=10)
    assert lr_at(0, 110, c) == pytest.approx(1e-4)
    assert lr_at(9, 110, c) == pytest.approx(1e-3)
    assert lr_at(60, 110, c) == pytest.approx(5e-4)
    assert lr_at(110, 110, c) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(50, 110, TrainConfig(lr=2e-3)) == 2e-3


@pytest.mark.parametrize("bad, message", [
    (dict(epochs=0), "epochs must be at least 1"),
    (dict(batch_size=-1), "batch_size must be at least 1"),
    (dict(cell="transformer"), "unknown cell 'transformer'"),
    (dict(vocab_size=3), "vocab_size must be at least 4"),
    (dict(max_len=0), "max_len must be at least 1"),
    (dict(lr=float("nan")), "lr must be a positive number"),
    (dict(encoding="bert"), "encoding must be one of keras, bucketed"),
    (dict(val_fraction=0.0), "val_fraction must be above 0 for training"),
    (dict(val_fraction=1.0), "val_fraction must be above 0 for training .* and below 1, got 1.0"),
    (dict(embed_dropout=1.0), "embed_dropout must be in"),
    (dict(amp="fp8"), "amp must be one of"),
])
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_recipes_are_valid_configs():
    for name, recipe in RECIPES.items():
        assert recipe["doc"]
        assert set(recipe.get("by_cell", {})) <= set(CELLS), name
        for cell in CELLS:
            TrainConfig(**recipe_settings(name, cell), cell=cell)
            if "pretrain" in recipe:  # its language model's settings are a valid run too
                TrainConfig(**recipe_settings(name, cell, pretraining=True), cell=cell)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu:zero")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")


def test_step_and_epoch_callbacks_see_every_step_in_order(tmp_path):
    t = Trainer(tiny(tmp_path, epochs=2))
    seen = []
    t.add_callback("on_step_end", lambda tr: seen.append(("step", tr.epoch, tr.global_step)))
    t.add_callback("on_epoch_end", lambda tr: seen.append(("epoch", tr.epoch, len(tr.history))))
    t.fit()
    n = len(t.train_batches)
    expected = []
    for e in range(2):
        expected += [("step", e, e * n + s) for s in range(1, n + 1)] + [("epoch", e + 1, e + 1)]
    assert seen == expected
    with pytest.raises(ValueError, match="unknown event"):
        t.add_callback("on_batch", print)


def test_the_old_encoding_name_still_works_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match='"fast" is now called "bucketed"'):
        c = tiny(tmp_path, encoding="fast")
    assert c.encoding == "bucketed"
