"""Language-model pretraining: the loss, the run (resumable like training), and handing the weights over."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rnnsent.inference.loading import load_checkpoint
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state
from rnnsent.config import ModelConfig, TrainConfig
from rnnsent.training.handover import load_into
from rnnsent.training.pretrain import LanguageModel, PretrainTrainer, cutoffs, pretrain
from rnnsent.training.stopping import TrainingInterrupted
from rnnsent.training.trainer import Trainer
from helpers import assert_same_weights, weights

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
TINY = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8",
        "--hidden-size", "16", "--max-len", "60", "--batch-size", "4", "--threads", "1", "--quiet"]


def tiny(tmp_path, name="lm", **overrides) -> TrainConfig:
    values = dict(cell="gru", vocab_size=300, embed_dim=8, hidden_size=16, max_len=60, epochs=2, batch_size=4,
                  data_root=str(FIXTURE), cache_dir=str(tmp_path / "cache"),
                  out=str(tmp_path / name), quiet=True, val_fraction=0.25, threads=1)
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize("hidden", [6, 20])  # a plain softmax, and the adaptive one
def test_loss_is_the_mean_next_word_loss_over_real_words(hidden):
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig("lstm", vocab_size=60, embed_dim=4, hidden_size=hidden)).eval()
    assert bool(cutoffs(60, hidden)) == (hidden >= 16)
    rows = [[1, 5, 9, 33, 2, 7], [1, 4, 59, 0, 0, 0]]  # right-padded
    x = torch.tensor(rows)
    out, _ = lm.rnn(lm.embedding(x))
    if isinstance(lm.head, torch.nn.Linear):
        log_probs = F.log_softmax(lm.head(out), -1)
    else:
        log_probs = lm.head.log_prob(out.reshape(-1, hidden)).view(2, 6, 60)  # PyTorch's full distribution
    terms = [-log_probs[b, t, rows[b][t + 1]] for b in range(2) for t in range(5) if rows[b][t + 1] != 0]
    assert len(terms) == 7
    assert lm(x).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert lm(torch.cat([x, torch.zeros(2, 4, dtype=torch.long)], 1)).item() == pytest.approx(lm(x).item(), rel=1e-6)


def test_pretraining_lowers_validation_loss_and_never_reads_labels_or_test(tmp_path):
    trainer = PretrainTrainer(tiny(tmp_path, epochs=6, lr=1e-2))
    trainer.data.train.labels.fill_(0)  # labels carry nothing here
    trainer.data.test.tokens.fill_(10**6)  # an id out of range: any read of the test split fails
    report = trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.3
    assert report["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in rows), rel=1e-6)
    assert load_checkpoint_state(tmp_path / "lm" / "best.pt")["kind"] == "language_model"


def test_pretraining_resumes_bit_for_bit(tmp_path):
    common = dict(epochs=2, embed_dropout=0.2, output_dropout=0.1, seed=4)
    pretrain(tiny(tmp_path, "a", **common))
    first = PretrainTrainer(tiny(tmp_path, "b", **common))
    first.add_callback(
        "on_step_end", lambda t: (_ for _ in ()).throw(KeyboardInterrupt) if t.global_step == 3 else None
    )
    with pytest.raises(TrainingInterrupted):
        first.fit()
    pretrain(tiny(tmp_path, "b", resume=str(tmp_path / "b" / "last.pt"), **common))
    assert_same_weights(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    assert_same_weights(weights(tmp_path / "a" / "best.pt"), weights(tmp_path / "b" / "best.pt"))


def test_fine_tuning_starts_from_the_language_models_layers(tmp_path):
    pretrain(tiny(tmp_path, epochs=1))
    lm = weights(tmp_path / "lm" / "best.pt")
    trainer = Trainer(tiny(tmp_path, "ft", pretrained=str(tmp_path / "lm")))
    for name, value in trainer.model.state_dict().items():
        if name.startswith("fc."):
            continue
        assert torch.equal(value, lm[name]), name
    fresh = Trainer(tiny(tmp_path, "plain"))
    assert torch.equal(trainer.model.fc.weight, fresh.model.fc.weight)  # the head starts as without pretraining
    assert not torch.equal(trainer.model.rnn.weight_hh_l0, fresh.model.rnn.weight_hh_l0)
    trainer.fit()
    assert load_checkpoint(tmp_path / "ft" / "best.pt").model.config()["hidden_size"] == 16  # an ordinary classifier


def test_handing_over_refuses_what_does_not_fit(tmp_path):
    pretrain(tiny(tmp_path, epochs=1))
    Trainer(tiny(tmp_path, "clf", epochs=1)).fit()
    with pytest.raises(CheckpointError, match="not a language model"):
        Trainer(tiny(tmp_path, "x", pretrained=str(tmp_path / "clf" / "best.pt")))
    with pytest.raises(CheckpointError, match="another shape .*cell 'gru' there, 'lstm' here"):
        Trainer(tiny(tmp_path, "x", cell="lstm", pretrained=str(tmp_path / "lm")))
    with pytest.raises(CheckpointError, match="another vocabulary"):
        Trainer(tiny(tmp_path, "x", limit=8, pretrained=str(tmp_path / "lm")))
    with pytest.raises(CheckpointError, match="it predicts words, not sentiment"):
        load_checkpoint(tmp_path / "lm" / "best.pt")
    with pytest.raises(ValueError, match="--adversarial, --ema apply to fine-tuning"):
        PretrainTrainer(tiny(tmp_path, "y", ema=0.9, adversarial=1.0))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_into(None, tmp_path / "nothing", None)


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)


def test_the_commands_as_a_user_runs_them(tmp_path):
    cache = ["--cache-dir", tmp_path / "cache"]
    refused = run("train.py", *TINY, *cache, "--recipe", "pretrained", "--out", tmp_path / "ft")
    assert refused.returncode == 2 and "first run scripts/pretrain.py --recipe pretrained" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    lm = run("pretrain.py", *TINY, *cache, "--recipe", "pretrained", "--epochs", "1", "--out", tmp_path / "lm")
    assert lm.returncode == 0, lm.stderr
    report = json.loads(lm.stdout)
    assert report["task"] == "language_model" and report["epochs"] == 1
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    # its pretraining settings
    assert (config["embed_dropout"] == 0.1 and config["ema"] == 0.0 and config["max_len"] == 60)
    ft = run("train.py", *TINY, *cache, "--recipe", "pretrained", "--epochs", "1", "--pretrained", tmp_path / "lm",
             "--out", tmp_path / "ft")
    assert ft.returncode == 0, ft.stderr
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["ema"] == 0.999 and config["adversarial"] == 0.05 and config["embed_dropout"] == 0.5
    bad = run("predict.py", "--checkpoint", tmp_path / "lm" / "best.pt", "a film")
    assert bad.returncode != 0 and "predicts words, not sentiment" in bad.stderr and "Traceback" not in bad.stderr


def test_stacked_models_pretrain_and_hand_over_every_layer(tmp_path):
    pretrain(tiny(tmp_path, epochs=1, num_layers=2, layer_dropout=0.1))
    lm = weights(tmp_path / "lm" / "best.pt")
    assert "rnn.weight_hh_l1" in lm
    trainer = Trainer(tiny(tmp_path, "ft", epochs=1, num_layers=2, pretrained=str(tmp_path / "lm")))
    assert all(torch.equal(v, lm[k]) for k, v in trainer.model.state_dict().items() if k.startswith("rnn."))
    with pytest.raises(CheckpointError, match="num_layers 2 there, 1 here"):
        Trainer(tiny(tmp_path, "one", epochs=1, pretrained=str(tmp_path / "lm")))


def test_bidirectional_pretraining_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="bidirectional model cannot be pretrained") as e:
        PretrainTrainer(tiny(tmp_path, bidirectional=True))
    assert len(str(e.value).splitlines()) == 1
    refused = run("pretrain.py", *TINY, "--cache-dir", tmp_path / "cache", "--bidirectional", "--out", tmp_path / "lm")
    assert refused.returncode == 2 and "bidirectional model cannot be pretrained" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
