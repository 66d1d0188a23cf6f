"""The command lines as a user runs them: fresh processes, real (tiny) data, one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnsent.inference.loading import load_checkpoint
from rnnsent.cli import train_parser
from rnnsent.config import TrainConfig
from helpers import assert_same_weights, weights

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
TINY = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8",
        "--hidden-size", "6", "--max-len", "60", "--batch-size", "4", "--threads", "1", "--quiet"]


def run(script: str, *args, cwd=None, env_extra=None, input_bytes=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], capture_output=True,
                          cwd=cwd, env=env, input=input_bytes, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, f"expected a one-line error, got:\n{err}"
    assert "error" in err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny GRU run through the command line, shared by the tests that need a checkpoint."""
    base = tmp_path_factory.mktemp("cli")
    proc = run(
        "train.py", "--cell", "gru", "--epochs", "2", "--out", base / "run", "--cache-dir", base / "cache", *TINY
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return base


@pytest.mark.parametrize("cell", ["lstm", "rnn", "SimpleRNN"])
def test_train_each_cell_end_to_end(tmp_path, cell):
    proc = run(
        "train.py", "--cell", cell, "--epochs", "1", "--out", tmp_path / "run", "--cache-dir", tmp_path / "c", *TINY
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert report["cell"] == ("rnn" if cell == "SimpleRNN" else cell)
    assert 0.0 <= report["test_accuracy"] <= 1.0
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "summary.txt", "config.json", "command.txt"):
        assert (tmp_path / "run" / name).is_file(), name


def test_train_stacked_bidirectional_end_to_end_and_resume(tmp_path):
    flags = ["--cell", "gru", "--layers", "2", "--bidirectional", "--layer-dropout", "0.2", "--out", tmp_path / "run",
             "--cache-dir", tmp_path / "c", *TINY]
    proc = run("train.py", *flags, "--epochs", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "bidirectional_1 (Bidirectional(GRU))" in (tmp_path / "run" / "summary.txt").read_text()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["num_layers"], config["bidirectional"], config["layer_dropout"]) == (2, True, 0.2)
    resumed = run("train.py", *flags, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert json.loads(resumed.stdout.decode().strip().splitlines()[-1])["epochs_run"] == 2
    refused = run("train.py", *[f for f in flags if f != "--bidirectional"], "--epochs", "3", "--resume")
    assert "bidirectional: checkpoint True, now False" in one_line_error(refused)


def test_train_shows_progress_and_summary(trained, tmp_path):
    args = [a for a in TINY if a != "--quiet"]
    proc = run(
        "train.py", "--cell", "gru", "--epochs", "1", "--out", tmp_path / "run", "--cache-dir", trained / "cache", *args
    )
    assert proc.returncode == 0, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "Total params: 2,695" in err  # 8*300 embedding + 3*(6*8+6*6+2*6) GRU + 7 dense
    assert "epoch 1: train loss" in err and "samples/s" in err and "test accuracy" in err


def test_predict_and_evaluate_in_fresh_processes(trained, tmp_path):
    ckpt = trained / "run" / "best.pt"
    proc = run("predict.py", "--checkpoint", ckpt, "--json", "A wonderful, moving film.", "Dull and far too long.")
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["text"] for r in rows] == ["A wonderful, moving film.", "Dull and far too long."]
    reference = load_checkpoint(ckpt).predict([r["text"] for r in rows])  # the same checkpoint, in this process
    assert [r["probability"] for r in rows] == pytest.approx([p.probability for p in reference], abs=1e-6)
    assert [r["label"] for r in rows] == [p.label for p in reference]

    reviews = tmp_path / "reviews.txt"
    reviews.write_bytes(b"great acting\n\n\xff\xfe broken bytes \x00 here\nterrible plot\n")
    proc = run("predict.py", "--checkpoint", trained / "run", "--file", reviews)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = proc.stdout.decode().splitlines()
    assert len(rows) == 4 and rows[1].endswith("[empty]")  # one row per input line, the blank one flagged

    proc = run("evaluate.py", "--checkpoint", ckpt, "--data", FIXTURE, "--cache-dir", trained / "cache", "--json",
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout.decode())
    report = json.loads((trained / "run" / "report.json").read_text())
    assert result["n"] == 12 and result["accuracy"] == pytest.approx(report["test_accuracy"])


def test_the_retired_expect_per_block_flag_is_noted_and_changes_nothing(trained, tmp_path):
    # Command lines from before the reader learnt a smaller copy's size still run, with one line saying so.
    proc = run("train.py", "--cell", "gru", "--epochs", "2", "--out", tmp_path / "run", "--cache-dir",
               trained / "cache", "--expect-per-block", "6", *TINY)
    assert proc.returncode == 0, proc.stderr.decode()
    notes = [line for line in proc.stderr.decode().splitlines() if "expect-per-block" in line]
    assert len(notes) == 1 and notes[0].startswith("note: --expect-per-block is no longer needed and is ignored")
    assert_same_weights(weights(tmp_path / "run" / "best.pt"), weights(trained / "run" / "best.pt"))
    assert "expected_per_block" not in json.loads((tmp_path / "run" / "config.json").read_text())
    scores = [
        run("evaluate.py", "--checkpoint", trained / "run" / "best.pt", "--data", FIXTURE, "--cache-dir",
            trained / "cache", "--json", "--device", "cpu", *flag)
        for flag in ([], ["--expect-per-block", "12500"])
    ]
    assert [p.returncode for p in scores] == [0, 0] and scores[0].stdout == scores[1].stdout
    assert scores[1].stderr.decode().startswith("note: --expect-per-block is no longer needed")


def test_evaluate_refuses_data_with_another_vocabulary(trained):
    # Half the fixture gives other word counts, so another vocabulary: scores would mean nothing.
    proc = run("evaluate.py", "--checkpoint", trained / "run" / "best.pt", "--data", FIXTURE, "--limit", "4",
               "--cache-dir", trained / "cache", "--device", "cpu")
    err = one_line_error(proc)
    assert "best.pt was trained with another vocabulary" in err


def _moved(trained, tmp_path) -> Path:
    """The run's best.pt as another machine sees it: the data path it recorded does not exist there."""
    from rnnsent.storage.checkpoint import load_checkpoint_state, save_checkpoint

    state = load_checkpoint_state(trained / "run" / "best.pt")
    assert state["config"]["data_root"] == str(FIXTURE)
    state["config"]["data_root"] = "/machine/that/trained/it/reviews.json"
    return save_checkpoint(tmp_path / "moved.pt", state)


@pytest.mark.parametrize("where", ["RNNSENT_DATA", "--data", "cache"])
def test_evaluate_ignores_a_recorded_data_path_that_is_not_here(trained, tmp_path, where):
    """A checkpoint's recorded data path is a hint: --data, RNNSENT_DATA and the cache decide, and the
    vocabulary check proves the data is the same."""
    import shutil

    ckpt, cache = _moved(trained, tmp_path), tmp_path / "cache"
    cache.mkdir()
    env, flags = {"RNNSENT_DATA": ""}, []
    if where == "RNNSENT_DATA":
        env["RNNSENT_DATA"] = str(FIXTURE)
    elif where == "--data":
        flags = ["--data", FIXTURE]
    else:
        shutil.copyfile(FIXTURE, cache / "reviews.json")
        shutil.copyfile(FIXTURE.parent / "imdb_subset.json", cache / "imdb_subset.json")  # the copy's declared size
    proc = run(
        "evaluate.py", "--checkpoint", ckpt, "--cache-dir", cache, "--json", "--device", "cpu", *flags, env_extra=env
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads((trained / "run" / "report.json").read_text())
    assert json.loads(proc.stdout.decode())["accuracy"] == pytest.approx(report["test_accuracy"])


def test_evaluate_uses_the_recorded_path_when_nothing_else_has_data(trained, tmp_path):
    proc = run("evaluate.py", "--checkpoint", trained / "run" / "best.pt", "--cache-dir", tmp_path / "empty", "--json",
               "--device", "cpu", env_extra={"RNNSENT_DATA": ""})
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout.decode())["n"] == 12


def test_library_calls_match_the_command_line(trained):
    import rnnsent

    loaded = rnnsent.load_checkpoint(trained / "run")
    texts = ["A wonderful, moving film.", ""]
    preds = rnnsent.predict(loaded, texts)
    proc = run("predict.py", "--checkpoint", trained / "run", "--json", *texts[:1])
    assert json.loads(proc.stdout.decode())["probability"] == pytest.approx(preds[0].probability, abs=1e-6)
    assert preds[1].tokens == 1, "an empty review is the start token alone"


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs: epochs must be at least 1, got 0"),
    (["--batch-size", "-1"], "--batch-size: batch_size must be at least 1, got -1"),
    (["--cell", "transformer"], "unknown cell 'transformer': choose one of lstm, gru, rnn"),
    (["--lr", "abc"], "--lr: lr must be a number, got 'abc'"),
    (["--encoding", "bert"], "--encoding: encoding must be one of keras, bucketed, got 'bert'"),
    (["--data", "/no/such/place"], "/no/such/place"),
    (["--amp", "bf16", "--device", "cpu"], "--amp bf16 needs a CUDA device"),
    (["--amp", "fp16", "--device", "cpu"], "drop --amp (or --amp none), or train with --device cuda"),
    (["--hidden-size", "100000"], "lower --hidden-size"),
    (["--layers", "0"], "--layers/--num-layers: num_layers must be at least 1 and at most 100, got 0"),
    (["--layers", "100", "--hidden-size", "3000"], "lower --hidden-size, --layers"),
    (["--layer-dropout", "1.5"], "--layer-dropout: layer_dropout must be in [0, 1)"),
])
def test_bad_flags_give_one_line_errors_and_keep_checkpoints(trained, flags, message):
    out = trained / "run"
    before = {p.name: p.read_bytes() for p in out.glob("*.pt")}
    base = [a for a in TINY if a not in ("--data", str(FIXTURE))]
    # --overwrite, so the run gets past the refusal to write over the run in `out`: even then nothing of that run is
    # touched until the new run has its data, its model and its recurrent layer
    proc = run("train.py", "--out", out, "--cache-dir", trained / "cache",
               *(base if "--data" in flags else TINY), *flags, "--overwrite")
    assert message in one_line_error(proc)
    assert {p.name: p.read_bytes() for p in out.glob("*.pt")} == before


def test_resume_with_other_cell_or_vocab_is_refused(trained, tmp_path):
    out = trained / "run"
    before = (out / "last.pt").read_bytes()
    proc = run(
        "train.py", "--cell", "lstm", "--epochs", "3", "--out", out, "--cache-dir", trained / "cache", "--resume", *TINY
    )
    assert "cell: checkpoint 'gru', now 'lstm'" in one_line_error(proc)
    tiny_other_vocab = [a if a != "300" else "200" for a in TINY]
    proc = run(
        "train.py", "--epochs", "3", "--out", out, "--cache-dir", trained / "cache", "--resume", *tiny_other_vocab
    )
    assert "vocab_size: checkpoint 300, now 200" in one_line_error(proc)
    assert (out / "last.pt").read_bytes() == before


def test_truncated_checkpoint_is_a_one_line_error(trained, tmp_path):
    broken = tmp_path / "last.pt"
    data = (trained / "run" / "last.pt").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    proc = run("train.py", "--epochs", "3", "--out", tmp_path, "--cache-dir", trained / "cache", "--resume", *TINY)
    assert "truncated, corrupt" in one_line_error(proc)
    assert broken.read_bytes() == data[: len(data) // 3], "the damaged file is left for the user to inspect"
    for script in ("predict.py", "evaluate.py"):
        assert "truncated, corrupt" in one_line_error(run(script, "--checkpoint", broken, "some text"
                                                          if script == "predict.py" else "--json"))


def test_predict_usage_errors(trained, tmp_path):
    assert "no review given" in one_line_error(run("predict.py", "--checkpoint", trained / "run"))
    assert "no such file" in one_line_error(
        run("predict.py", "--checkpoint", trained / "run", "--file", tmp_path / "x")
    )
    assert "does not exist" in one_line_error(run("predict.py", "--checkpoint", tmp_path / "nope.pt", "hi"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path):
    proc = run("train.py", "--device", "cuda", "--out", tmp_path / "run", "--cache-dir", tmp_path / "c", *TINY)
    assert "sees no CUDA device" in one_line_error(proc)


def test_help_explains_every_flag():
    proc = run("train.py", "--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    for flag in ("--cell", "--epochs", "--batch-size", "--lr", "--vocab-size", "--max-len", "--embed-dim",
                 "--hidden-size", "--encoding", "--device", "--amp", "--seed", "--out", "--resume", "--limit",
                 "--patience", "--recipe"):
        assert flag in text, flag


def test_help_shows_each_default_once_and_as_trainconfig_says():
    parser = train_parser()
    text = parser.format_help()
    assert "(default:" not in text and "None" not in text
    defaults = TrainConfig()
    for action in parser._actions:
        if action.help in (None, "==SUPPRESS==") or action.dest == "help":
            continue
        assert action.help.count("[") == 1 and action.help.endswith("]"), action.option_strings
        value = getattr(defaults, action.dest, None)
        if value is not None and not isinstance(value, bool) and action.dest != "out":
            assert action.help.endswith(f"[{value}]"), (action.option_strings, action.help)
