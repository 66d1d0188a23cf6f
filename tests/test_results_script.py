"""scripts/results.py's release step: no path of the training machine in what is released."""
import sys
from pathlib import Path

from rnnsent.checkpoint import portable_run_path, portable_state

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from results import portable_command  # noqa: E402


def test_released_commands_and_configs_name_no_path_of_this_machine():
    argv = ["scripts/train.py", "--recipe", "pretrained", "--data", "/home/me/imdb.tgz", "--out", "/home/me/r/pretrained-gru-seed1",
            "--pretrained", "/home/me/r/pretrained-lm-gru", "--seed", "1"]
    assert portable_command(argv) == ["scripts/train.py", "--recipe", "pretrained", "--out", "runs/pretrained-gru-seed1",
                                      "--pretrained", "runs/pretrained-lm-gru", "--seed", "1"]
    assert portable_run_path("/home/me/r/lm-gru/best.pt") == "runs/lm-gru/best.pt"
    state = portable_state({"config": {"data_root": "/home/me/imdb.tgz", "cache_dir": "/c", "resume": None,
                                       "out": "/home/me/r/x", "pretrained": "/home/me/r/lm/best.pt", "seed": 1}})
    assert state["config"] == {"data_root": None, "cache_dir": None, "resume": None, "out": "runs/x",
                               "pretrained": "runs/lm/best.pt", "seed": 1}
    assert "/home/me" not in repr(state)
