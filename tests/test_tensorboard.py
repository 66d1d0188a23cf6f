"""Training in TensorBoard (TrainConfig.tensorboard, `--tensorboard DIR`): the event files hold the run's curves
and settings, each run in a subfolder of its own, checked before any work, read back with TensorBoard's own
EventAccumulator, and agree with metrics.jsonl; the writer is an
ordinary callback and changes nothing about the training; a missing TensorBoard is a one-line error."""
import json
import os
import sys
import types
from pathlib import Path

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
    """The events of the one run under `folder` (--tensorboard DIR: the run's own subfolder of DIR)."""
    (run,) = [p for p in folder.iterdir() if p.is_dir()]
    acc = event_accumulator.EventAccumulator(str(run), size_guidance={event_accumulator.SCALARS: 0})
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


def test_each_run_writes_its_own_subfolder_and_a_resumed_run_continues_in_it(tmp_path):
    board = tmp_path / "tb"
    first = Trainer(tiny(tmp_path / "a", epochs=1, log_every=1, tensorboard=str(board)))
    first.fit()
    second = Trainer(tiny(tmp_path / "b", epochs=1, log_every=1, tensorboard=str(board), lr=2e-2))
    second.fit()
    runs = sorted(p for p in board.iterdir())
    assert len(runs) == 2 and all(p.is_dir() and p.name.startswith("run-") for p in runs), runs
    assert {first.config.tensorboard, second.config.tensorboard} == {str(p) for p in runs}
    n = len(first.train_batches)
    for trainer in (first, second):
        acc = event_accumulator.EventAccumulator(trainer.config.tensorboard)
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, n + 1)), "one run's steps, once each"
        assert json.loads((tmp_path / ("a" if trainer is first else "b") / "run" / "config.json").read_text())[
            "tensorboard"] == trainer.config.tensorboard
    resumed = Trainer(tiny(tmp_path / "a", epochs=2, log_every=1, tensorboard=str(board), resume=""))
    resumed.fit()
    assert resumed.config.tensorboard == first.config.tensorboard and len(list(board.iterdir())) == 2
    acc = event_accumulator.EventAccumulator(first.config.tensorboard)
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 2 * n + 1)), "the resumed run continues"


def test_a_run_of_an_earlier_version_that_wrote_into_dir_itself_continues_there(tmp_path, monkeypatch):
    from rnnsent.training import tensorboard

    board = str(tmp_path / "tb")
    assert tensorboard.run_log_dir(board, "runs/gru", recorded=board) == board
    own = str(tmp_path / "tb" / "gru-1")
    assert tensorboard.run_log_dir(board, "x", recorded=own) == own
    monkeypatch.setattr(tensorboard.time, "strftime", lambda _: "20260101-120000")
    new = tensorboard.run_log_dir(board, "runs/gru", recorded=str(tmp_path / "elsewhere" / "gru-1"))
    assert new == str(tmp_path / "tb" / "gru-20260101-120000")
    Path(new).mkdir(parents=True)
    assert tensorboard.run_log_dir(board, "runs/gru") == new + "-2", "two runs in one second: never the same folder"


def unwritable(tmp_path) -> Path:
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
        return tmp_path / "ro" / "tb"
    return Path("/sys/rnnsent-tb")  # root writes anywhere but into the kernel's own file systems


def a_file(tmp_path, below: str = "") -> Path:
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / below if below else tmp_path / "file"


@pytest.mark.parametrize("where, says", [
    (a_file, "{file} is a file, not a folder"),
    (lambda t: a_file(t, "tb"), "{file} is a file, not a folder"),
    (unwritable, "cannot write there ("),
], ids=["a-file", "under-a-file", "unwritable"])
def test_a_folder_tensorboard_cannot_write_is_one_line_before_any_work(tmp_path, capsys, where, says):
    if "unwritable" in says and not Path("/sys").is_dir():
        pytest.skip("no read-only place to try")
    board = where(tmp_path)
    fixture = tiny(tmp_path).data_root
    code = train_main(["--data", fixture, "--epochs", "1", "--cache-dir", str(tmp_path / "cache"),
                       "--out", str(tmp_path / "run"), "--tensorboard", str(board), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --tensorboard {board}: ") and says.format(file=tmp_path / "file") in err
    assert not (tmp_path / "cache").exists(), "refused before the data was prepared"
    assert not (tmp_path / "run" / "last.pt").exists()
