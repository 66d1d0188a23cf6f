"""Commands that never mislead: a model's size bounded from its settings before anything is built (the same bound
for a training run and a checkpoint), settings that cannot work together refused in one line before any work, and
messages that say what is really wrong (--pretrained into a bidirectional model, evaluate of your own data's model
on IMDB, --amp without CUDA); a callback's print() lands above the progress bar, not inside it."""
import io
import itertools
import re
import sys
from pathlib import Path

import pytest
import torch

from rnnsent import runtime
from rnnsent.cli import evaluate_main, train_main
from rnnsent.config import MAX_LAYERS, ModelConfig, TrainConfig
from rnnsent.data import Vocab
from rnnsent.inference.loading import load_checkpoint
from rnnsent.model.sentiment import SentimentRNN, count_parameters
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state, save_checkpoint
from rnnsent.training import settle
from rnnsent.training.handover import KIND, load_into
from rnnsent.training.trainer import Trainer, train
from test_train import FIXTURE, tiny

TINY = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8", "--hidden-size", "6", "--max-len", "60",
        "--batch-size", "4", "--threads", "1", "--epochs", "1", "--quiet"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the data was prepared")

    monkeypatch.setattr(settle, "prepare_data", refuse)


def checkpoint(tmp_path, name="best.pt", classes=None, **settings) -> Path:
    """A real checkpoint of a small model of `settings` (weights as initialised), as a run would save it."""
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(**{"vocab_size": 20, "embed_dim": 4, "hidden_size": 3, **settings}))
    data = {"max_len": 16, "encoding": "bucketed", **({"classes": classes} if classes else {})}
    state = {"model_config": model.config(), "model_state": model.state_dict(),
             "vocab": Vocab(tuple(f"w{k}" for k in range(17))).to_dict(), "data": data}
    return save_checkpoint(tmp_path / name, state)


# The model's size, bounded from its settings ---------------------------------------------------------------------
@pytest.mark.parametrize("cell, layers, bidirectional, classes",
                         list(itertools.product(["lstm", "gru", "rnn"], [1, 2, 3], [False, True], [2, 5])))
def test_the_parameter_count_from_the_settings_is_the_models(cell, layers, bidirectional, classes):
    settings = ModelConfig(cell=cell, vocab_size=37, embed_dim=5, hidden_size=7, num_layers=layers,
                           bidirectional=bidirectional, num_classes=classes)
    assert settings.parameter_count() == count_parameters(SentimentRNN(settings))


@pytest.mark.parametrize("layers", ["1000", "20000"])
def test_too_many_layers_are_refused_at_the_flag(tmp_path, capsys, monkeypatch, layers):
    no_data(monkeypatch)
    with pytest.raises(SystemExit) as e:
        train_main([*TINY, "--layers", layers, "--hidden-size", "8", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    assert f"--layers/--num-layers: num_layers must be at least 1 and at most {MAX_LAYERS}, got {layers}" in one_line(
        capsys)
    with pytest.raises(ValueError, match=f"at most {MAX_LAYERS}, got {layers}"):
        TrainConfig(num_layers=int(layers))


def test_a_checkpoint_declaring_too_many_layers_is_refused_by_the_same_rule(tmp_path):
    path = checkpoint(tmp_path)
    state = load_checkpoint_state(path)
    state["model_config"]["num_layers"] = 20000
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=f"num_layers must be at least 1 and at most {MAX_LAYERS}, got 20000"):
        load_checkpoint(path)


def test_one_memory_bound_for_a_run_before_its_data_and_for_a_checkpoint(tmp_path, monkeypatch, capsys):
    path = checkpoint(tmp_path)
    load_checkpoint(path)  # fits
    settings = ModelConfig(vocab_size=20, embed_dim=4, hidden_size=3)
    n = settings.parameter_count()
    monkeypatch.setattr(runtime, "available_memory", lambda device: 4 * n - 1)  # less than the float32 weights
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))} describes a model that has {n:,} parameters "
                                              r"and needs 0.0 GiB to predict, more than the 0.0 GiB of memory "
                                              r"available on cpu; refusing to build it$"):
        load_checkpoint(path)
    no_data(monkeypatch)
    with pytest.raises(ValueError, match=rf"^the model has {n:,} parameters and needs 0.0 GiB for training, more "
                                         r"than the 0.0 GiB .*; lower --hidden-size, --layers"):
        train(tiny(tmp_path, vocab_size=20, embed_dim=4, hidden_size=3))
    # 100 layers of 3,000 units: 5.4 billion weights, refused by the real machine's memory, before the data
    monkeypatch.undo()
    no_data(monkeypatch)
    assert train_main([*TINY, "--layers", "100", "--hidden-size", "3000", "--out", str(tmp_path / "big")]) == 2
    assert "parameters and needs" in one_line(capsys) and not (tmp_path / "cache").exists()


# Settings that cannot work together -------------------------------------------------------------------------------
def test_layer_dropout_with_one_layer_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    no_data(monkeypatch)
    assert train_main([*TINY, "--layer-dropout", "0.5", "--out", str(tmp_path / "run")]) == 2
    assert one_line(capsys) == ("error: layer_dropout 0.5 is dropout between stacked recurrent layers and needs "
                                "num_layers 2 or more (--layers 2), got num_layers 1")
    assert TrainConfig(num_layers=2, layer_dropout=0.5).layer_dropout == 0.5
    # a model (and an earlier version's checkpoint) takes it with one layer, where it does nothing
    loaded = load_checkpoint(checkpoint(tmp_path, layer_dropout=0.5))
    assert loaded.model.layer_dropout == 0.5 and loaded.model.rnn.dropout == 0.0


def test_pretrained_into_a_bidirectional_model_says_why_it_cannot_be(tmp_path):
    lm = SentimentRNN(ModelConfig(vocab_size=20, embed_dim=4, hidden_size=3))
    vocab = Vocab(tuple(f"w{k}" for k in range(17)))
    path = save_checkpoint(tmp_path / "lm.pt", {"kind": KIND, "model_config": lm.config(),
                                                "model_state": lm.state_dict(), "vocab": vocab.to_dict(),
                                                "data": {"max_len": 16, "encoding": "bucketed"}})
    model = SentimentRNN(ModelConfig(vocab_size=20, embed_dim=4, hidden_size=3, bidirectional=True))
    with pytest.raises(CheckpointError) as e:
        load_into(model, path, vocab)
    message = str(e.value)
    assert "\n" not in message and "pretrain with the same" not in message
    assert "a next-word language model cannot be bidirectional" in message and "drop --pretrained or --bidirectional" \
        in message


def test_evaluate_of_your_own_datas_model_on_imdb_says_what_is_wrong(tmp_path, capsys):
    path = checkpoint(tmp_path, classes=["billing", "bug", "praise"], num_classes=3)
    assert evaluate_main(["--checkpoint", str(path), "--data", str(FIXTURE)]) == 2
    err = one_line(capsys)
    assert "3 classes: billing, bug, praise" in err and f"--data {FIXTURE} is IMDB" in err
    assert "pass --data with a file" not in err
    assert evaluate_main(["--checkpoint", str(path)]) == 2  # no --data at all: which file to pass
    assert "trained on your own data; pass --data with that file to score its held-out test rows" in one_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_with_amp_on_a_cpu_only_machine_names_both(tmp_path, capsys, monkeypatch):
    no_data(monkeypatch)
    assert train_main([*TINY, "--device", "cuda", "--amp", "bf16", "--out", str(tmp_path / "run")]) == 2
    err = one_line(capsys)
    assert "--device cuda was asked for, but this PyTorch sees no CUDA device" in err and "drop --amp bf16" in err
    assert train_main([*TINY, "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "--amp" not in one_line(capsys)


# A callback's print() and the progress bar ------------------------------------------------------------------------
def test_a_callbacks_print_lands_above_the_progress_bar(tmp_path, monkeypatch):
    terminal = io.StringIO()  # stdout and stderr on one terminal
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    trainer = Trainer(tiny(tmp_path, quiet=False, epochs=2, log_every=1))
    trainer.add_callback("on_step_end", lambda t: print(f"callback at step {t.global_step}"))
    trainer.fit()
    shown = terminal.getvalue()
    steps = 2 * len(trainer.train_batches)
    assert shown.count("callback at step") == steps and "batch/s" in shown, shown
    for m in re.finditer("callback at step", shown):
        assert m.start() == 0 or shown[m.start() - 1] in "\r\n", repr(shown[max(0, m.start() - 80): m.end()])
    assert re.search(r"callback at step \d+\n", shown) and sys.stdout is terminal, "whole lines; stdout given back"
    print("after the run")
    assert terminal.getvalue().endswith("after the run\n")
