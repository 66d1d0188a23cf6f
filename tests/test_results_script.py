"""scripts/results.py's release step (rnnsent.inference.releasing): no path of the training machine in what is released,
and a released
file no larger than its run's best.pt however long the run trained."""
import json
from pathlib import Path

import torch

from rnnsent.inference.loading import load_checkpoint
from rnnsent.inference.releasing import portable_run_path, portable_state
from rnnsent.storage.checkpoint import load_checkpoint_state
from rnnsent.config import TrainConfig
from rnnsent.training.trainer import Trainer

from rnnsent.inference.releasing import portable_command, release

FIXTURE = Path(__file__).parent / "fixtures" / "imdb" / "reviews.json"


def test_released_commands_and_configs_name_no_path_of_this_machine():
    argv = ["scripts/train.py", "--recipe", "pretrained", "--data", "/home/me/imdb.tgz", "--out",
            "/home/me/r/pretrained-gru-seed1", "--pretrained", "/home/me/r/pretrained-lm-gru", "--seed", "1"]
    assert portable_command(argv) == ["scripts/train.py", "--recipe", "pretrained", "--out",
                                      "runs/pretrained-gru-seed1", "--pretrained", "runs/pretrained-lm-gru", "--seed",
                                      "1"]
    assert portable_run_path("/home/me/r/lm-gru/best.pt") == "runs/lm-gru/best.pt"
    state = portable_state({"config": {"data_root": "/home/me/imdb.tgz", "cache_dir": "/c", "resume": None,
                                       "out": "/home/me/r/x", "pretrained": "/home/me/r/lm/best.pt", "seed": 1}})
    assert state["config"] == {"data_root": None, "cache_dir": None, "resume": None, "out": "runs/x",
                               "pretrained": "runs/lm/best.pt", "seed": 1}
    assert "/home/me" not in repr(state)


def test_a_released_file_predicts_like_its_run_and_keeps_no_per_epoch_history(tmp_path):
    out = tmp_path / "r" / "tuned-gru-seed1"
    config = TrainConfig(cell="gru", vocab_size=300, embed_dim=8, hidden_size=6, max_len=60, epochs=3, batch_size=4,
                         data_root=str(FIXTURE), cache_dir=str(tmp_path / "cache"), out=str(out), quiet=True,
                         val_fraction=0.25)
    report = Trainer(config).fit()
    (out / "command.txt").write_text(
        f"scripts/train.py --recipe tuned --cell gru --seed 1 --data {FIXTURE} --out {out}\n"
    )
    dest = tmp_path / "released"
    (dest).mkdir()
    (dest / "RESULTS.json").write_text(json.dumps({"rnn": {"file": "rnn.pt", "test_accuracy": 0.5, "command": "x"}}))
    release([{"cell": "gru", "best_run": str(out)}], dest)

    best, released = load_checkpoint_state(out / "best.pt"), load_checkpoint_state(dest / "gru.pt")
    assert len(best["history"]) >= 1 and released["history"] == [] and released["metrics"] == best["metrics"]
    assert (dest / "gru.pt").stat().st_size < (out / "best.pt").stat().st_size
    x = torch.randint(1, 300, (2, 20))
    assert torch.equal(
        load_checkpoint(dest / "gru.pt").model.eval()(x), load_checkpoint(out / "best.pt").model.eval()(x)
    )
    index = json.loads((dest / "RESULTS.json").read_text())
    assert index["rnn"]["command"] == "x"  # another cell's entry stays
    assert index["gru"] == {"file": "gru.pt", "test_accuracy": report["test_accuracy"],
                            "command": "scripts/train.py --recipe tuned --cell gru --seed 1 --out runs/tuned-gru-seed1"}
    assert str(tmp_path) not in repr(released["config"])
