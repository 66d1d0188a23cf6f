"""Training in TensorBoard (TrainConfig.tensorboard, `--tensorboard DIR`): the event files hold the run's curves
and settings, read back with TensorBoard's own EventAccumulator, and agree with metrics.jsonl; the writer is an
ordinary callback and changes nothing about the training; a missing TensorBoard is a one-line error."""
import json
import sys
import types

import pytest
import torch

from rnnsent.cli import config_from_args, train_main, train_parser
from rnnsent.training.trainer import Trainer
from helpers import assert_same_weights, weights
from test_train import tiny

# TensorBoard's own stand-in for TensorFlow's file API, as where TensorFlow is not installed (CI): importing
# TensorFlow, where it is, would cost seconds and change nothing that is tested here.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return acc


def test_the_run_in_tensorboard_matches_metrics_jsonl(tmp_path):
    config = tiny(tmp_path, epochs=2, log_every=2, tensorboard=str(tmp_path / "tb"), clip=0.5)
    trainer = Trainer(config)
    trainer.fit()
    acc = read_events(tmp_path / "tb")
    scalars = set(acc.Tags()["scalars"])
    steps = ["train/loss", "train/accuracy", "train/lr", "train/grad_norm", "train/samples_per_second"]
    epochs = ["epoch/train_loss", "epoch/train_accuracy", "epoch/val_loss", "epoch/val_accuracy", "epoch/lr",
              "epoch/samples_per_second"]
    assert set(steps + epochs) <= scalars
    n = len(trainer.train_batches)
    assert [e.step for e in acc.Scalars("train/loss")] == [
        s for s in range(1, 2 * n + 1) if (s - n * ((s - 1) // n)) % 2 == 0
    ]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for tag in epochs:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["global_step"] for r in rows]
        assert [e.value for e in events] == pytest.approx([r[tag.split("/")[1]] for r in rows], rel=1e-6)
    assert all(e.value > 0 for e in acc.Scalars("train/grad_norm")) and all(
        e.value == pytest.approx(1e-3) for e in acc.Scalars("train/lr")
    )
    hparams = acc.PluginTagToContent("hparams")
    assert hparams, "the settings are in the hparams plugin"
    assert b"hidden_size" in b"".join(hparams.values()) and b"epoch/val_accuracy" in b"".join(hparams.values())


def test_the_writer_changes_nothing_about_training(tmp_path):
    plain = Trainer(tiny(tmp_path / "a", clip=0.5))
    plain.fit()
    logged = Trainer(tiny(tmp_path / "b", clip=0.5, tensorboard=str(tmp_path / "tb")))
    logged.fit()
    assert_same_weights(weights(tmp_path / "a" / "run" / "last.pt"), weights(tmp_path / "b" / "run" / "last.pt"))
    assert (tmp_path / "a" / "run" / "metrics.jsonl").read_text().count("\n") == 2


def test_callbacks_see_the_loss_the_gradients_before_clipping_and_the_lr(tmp_path):
    t = Trainer(tiny(tmp_path, epochs=1, clip=1e-3))
    seen = []

    def after_backward(tr):
        grads = [p.grad for p in tr.model.parameters() if p.grad is not None]
        assert grads, "the gradients are there after backward"
        own = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert float(tr.last_step.grad_norm) == pytest.approx(float(own), rel=1e-5)  # not yet clipped
        seen.append(("backward", tr.global_step))

    def after_step(tr):
        s = tr.last_step
        assert s.lr == tr.optimizer.param_groups[0]["lr"] and float(s.grad_norm) > 1e-3  # before clipping
        seen.append(("step", tr.global_step, float(s.loss) * s.samples, s.samples))

    t.add_callback("on_backward_end", after_backward)
    t.add_callback("on_step_end", after_step)
    t.fit()
    steps = [s for s in seen if s[0] == "step"]
    assert [s[0] for s in seen] == ["backward", "step"] * len(steps)
    row = t.history[0]
    samples = sum(s[3] for s in steps)
    assert sum(s[2] for s in steps) / samples == pytest.approx(row["train_loss"], rel=1e-6)


def test_the_flag_and_a_missing_tensorboard(tmp_path, monkeypatch, capsys):
    args = train_parser().parse_args(["--log-dir", str(tmp_path / "tb"), "--out", str(tmp_path / "run")])
    assert config_from_args(args).tensorboard == str(tmp_path / "tb")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    fixture = tiny(tmp_path).data_root
    code = train_main(["--data", fixture, "--epochs", "1", "--cache-dir", str(tmp_path / "c"),
                       "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb"), "--quiet"])
    assert code == 2
    assert (
        capsys.readouterr().err.strip() == "error: --tensorboard needs TensorBoard: pip install 'rnnsent[tensorboard]'"
    )
    assert not (tmp_path / "run" / "best.pt").exists()


def test_pretraining_writes_its_curves_too(tmp_path):
    from rnnsent.training.pretrain import pretrain
    from test_pretrain import tiny as tiny_lm

    pretrain(tiny_lm(tmp_path, epochs=1, log_every=1, tensorboard=str(tmp_path / "tb")))
    scalars = set(read_events(tmp_path / "tb").Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "epoch/val_loss", "epoch/train_loss"} <= scalars
    assert "train/accuracy" not in scalars  # a language model has none
