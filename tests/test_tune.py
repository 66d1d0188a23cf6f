"""`rnnsent tune` (rnnsent.training.tune): searches run as a user runs them, in fresh processes, on a small labelled
file a tiny model learns in one epoch (a sentiment word among filler words), so a trial that cannot learn is told
apart from one that can. Each trial is a normal run folder; the study is Optuna's, read back with Optuna."""
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from rnnsent.inference.loading import load_checkpoint  # noqa: E402
from rnnsent.storage.checkpoint import load_checkpoint_state  # noqa: E402
from rnnsent.training.tune.space import SpaceError, parse_space  # noqa: E402
from test_cli import ROOT, one_line_error  # noqa: E402

TINY = ["--embed-dim", "8", "--hidden-size", "8", "--max-len", "30", "--batch-size", "16", "--threads", "1",
        "--rnn-impl", "torch", "--epochs", "2"]
GOOD = "lr=0.01:0.05:log"  # every trial of this space learns the words in its first epoch


def write_words(path, n=600, seed=0):
    """Reviews of 5-15 filler words and one sentiment word: learnable in an epoch by a model of 8 units."""
    rng = random.Random(seed)
    filler = [f"w{i}" for i in range(40)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            words = rng.choices(filler, k=rng.randint(5, 15))
            words.insert(rng.randrange(len(words) + 1), rng.choice(("great", "superb", "lovely") if i % 2 else
                                                                    ("awful", "dull", "boring")))
            w.writerow([" ".join(words), "pos" if i % 2 else "neg"])
    return path


def tune(*args, env_extra=None, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "rnnsent", "tune", *map(str, args)], capture_output=True, env=env,
                          timeout=300, **kwargs)


def tune_here(capfd, *args) -> subprocess.CompletedProcess:
    """The same command in this process (no new interpreter to start), its output as a finished process's."""
    from rnnsent.__main__ import main

    try:
        code = main(["tune", *map(str, args)])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out.encode(), err.encode())


def start(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "rnnsent", "tune", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def study_of(out, name="words"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def flags(tmp, out, *more):
    return ["--data", tmp / "words.csv", "--cache-dir", tmp / "cache", "--out", out, "--study", "words", *TINY, *more]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A study of five trials in a fresh process, with --tensorboard; (folder of data and cache, search folder,
    the command's stdout, its stderr)."""
    tmp = tmp_path_factory.mktemp("tune")
    write_words(tmp / "words.csv")
    out = tmp / "search"
    proc = tune(*flags(tmp, out, "--trials", "5", "--space", GOOD, "--tensorboard", tmp / "tb"))
    assert proc.returncode == 0, proc.stderr.decode()
    return tmp, out, proc.stdout.decode(), proc.stderr.decode()


def copy_search(searched, tmp_path):
    """The module's search copied, to go on with it without changing it for the other tests."""
    tmp, out, _, _ = searched
    shutil.copytree(out, tmp_path / "search", symlinks=True)
    return tmp, tmp_path / "search"


def test_a_study_runs_and_every_trial_is_a_normal_run(searched):
    tmp, out, stdout, stderr = searched
    study = study_of(out)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3", "4"] and {r["state"] for r in rows} == {"complete"}
    assert list(rows[0])[:3] == ["trial", "state", "lr"] and "val_accuracy" in rows[0] and "seconds" in rows[0]
    for trial, row in zip(study.trials, rows):
        folder = out / f"trial-{trial.number:04d}"
        assert {"config.json", "metrics.jsonl", "best.pt", "last.pt", "report.json"} <= {p.name for p in
                                                                                       folder.iterdir()}
        config = json.loads((folder / "config.json").read_text())
        assert config["lr"] == trial.params["lr"] and config["hidden_size"] == 8 and config["epochs"] == 2
        epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        # the objective is the run's best validation accuracy, reported to the pruner after every epoch
        assert trial.value == max(e["val_accuracy"] for e in epochs) == float(row["val_accuracy"])
        assert trial.intermediate_values == {e["epoch"]: e["val_accuracy"] for e in epochs}
    assert stdout.splitlines()[0].split()[:3] == ["trial", "state", "lr"] and len(stdout.splitlines()) == 6
    assert sum("complete: best val_accuracy" in line for line in stderr.splitlines()) == 5
    best = study.best_trial
    assert os.readlink(out / "best") == f"trial-{best.number:04d}" and f"{best.number}*" in stdout
    assert (out / "history.png").stat().st_size > 1000 and (out / "importances.png").stat().st_size > 1000


def test_each_trial_logs_its_settings_and_curves_to_tensorboard(searched):
    sys.modules.setdefault("tensorboard.compat.notf", type(sys)("tensorboard.compat.notf"))
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tmp, out, _, _ = searched
    for trial in study_of(out).trials:
        acc = accumulator.EventAccumulator(str(tmp / "tb" / f"trial-{trial.number:04d}"))
        acc.Reload()
        hparams = b"".join(acc.PluginTagToContent("hparams").values())
        assert b"lr" in hparams and b"epoch/val_accuracy" in hparams
        assert [e.value for e in acc.Scalars("epoch/val_accuracy")] == pytest.approx(
            list(trial.intermediate_values.values()))


@pytest.mark.filterwarnings("ignore:Fixed parameter lr")  # the enqueued lr is outside the space: on purpose
def test_the_pruner_stops_a_trial_that_cannot_win(searched, tmp_path, capfd):
    tmp, out = copy_search(searched, tmp_path)
    study_of(out).enqueue_trial({"lr": 1e-7})  # learns nothing in an epoch: below the median of five that learnt
    proc = tune_here(capfd, *flags(tmp, out, "--trials", "6", "--space", GOOD))
    assert proc.returncode == 0, proc.stderr.decode()
    trial = study_of(out).trials[5]
    assert trial.params == {"lr": 1e-7} and trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
    assert max(t.intermediate_values[1] for t in study_of(out).trials[:5]) > trial.intermediate_values[1]
    assert "trial 5 pruned after epoch 1" in proc.stderr.decode()
    # stopped between epochs: epoch 1's checkpoints written and whole, as a run stopped by Ctrl-C leaves them
    folder = out / "trial-0005"
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1 and not (folder / "report.json").exists()
    progress = load_checkpoint_state(folder / "last.pt")["progress"]
    assert (progress["epoch"], progress["step_in_epoch"]) == (1, 0) and not (folder / "run.lock").exists()
    assert load_checkpoint(folder).model.hidden_size == 8
    assert next(r for r in csv.DictReader(open(out / "trials.csv")) if r["trial"] == "5")["state"] == "pruned"
    # after its last epoch a trial has nothing left to save: it completes, however it scores
    study_of(out).enqueue_trial({"lr": 1e-7})
    proc = tune_here(capfd, *flags(tmp, out, "--trials", "7", "--space", GOOD, "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr.decode()
    last = study_of(out).trials[6]
    assert last.state.name == "COMPLETE" and last.value == last.intermediate_values[1] < study_of(out).best_value


def test_the_same_command_again_continues_the_study(searched, tmp_path, capfd):
    tmp, out = copy_search(searched, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in out.glob("trial-*/best.pt")}
    proc = tune_here(capfd, *flags(tmp, out, "--trials", "7", "--space", GOOD))
    assert proc.returncode == 0, proc.stderr.decode()
    assert "5 of 7 trial(s) so far" in proc.stderr.decode()
    assert [t.number for t in study_of(out).trials] == list(range(7))
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing of the earlier trials is redone
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{i:04d}" for i in range(7)]
    again = tune_here(capfd, *flags(tmp, out, "--trials", "7", "--space", GOOD))  # nothing left to do
    assert again.returncode == 0 and "already holds 7 trial(s)" in again.stderr.decode()
    assert len(study_of(out).trials) == 7


def test_the_best_folder_loads_evaluates_and_predicts(searched):
    tmp, out, _, _ = searched
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "rnnsent", "evaluate", "--checkpoint", out / "best", "--data",
                           tmp / "words.csv", "--json"], capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    scored = json.loads(proc.stdout)  # the best trial's own held-out test rows: 10% of the 600
    assert scored["n"] == 60 and scored["accuracy"] > 0.9
    loaded = load_checkpoint(out / "best")
    assert [p.label for p in loaded.predict(["w1 w2 great w3", "w4 awful w5"])] == ["pos", "neg"]


def test_two_workers_share_one_study(tmp_path):
    write_words(tmp_path / "words.csv")
    out = tmp_path / "search"
    proc = tune(*flags(tmp_path, out, "--trials", "4", "--jobs", "2", "--space", GOOD, "--pruner", "none"))
    assert proc.returncode == 0, proc.stderr.decode()
    trials = study_of(out).trials
    assert [t.number for t in trials] == [0, 1, 2, 3] and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers ran trials
    assert all(json.loads((out / f"trial-{t.number:04d}" / "config.json").read_text())["threads"] == 1
               for t in trials)
    assert len({t.params["lr"] for t in trials}) == 4  # seeded apart: no worker repeats another's draw


def _running_trial(out, timeout=120):
    """A trial that runs and has finished an epoch (so it is in the middle of its run): (its number, its pid)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (out / "study.db").exists():
            try:
                for t in study_of(out).trials:
                    if t.state.name == "RUNNING" and "pid" in t.user_attrs and (
                            out / f"trial-{t.number:04d}" / "best.pt").exists():
                        return t.number, t.user_attrs["pid"]
            except Exception:  # the study is being created
                pass
        time.sleep(0.1)
    raise AssertionError("no trial got going")


def test_a_killed_worker_leaves_its_trial_failed_and_the_study_completes(tmp_path):
    write_words(tmp_path / "words.csv")
    out = tmp_path / "search"
    search = start(*flags(tmp_path, out, "--trials", "3", "--jobs", "2", "--space", GOOD, "--pruner", "none",
                          "--epochs", "8", "--heartbeat", "1"))
    number, pid = _running_trial(out)
    os.kill(pid, signal.SIGKILL)
    _, stderr = search.communicate(timeout=300)
    assert search.returncode == 0, stderr.decode()
    assert f"(pid {pid}) was killed by SIGKILL" in stderr.decode()
    trials = study_of(out).trials
    killed = trials[number]
    assert killed.state.name == "FAIL" and "error" not in killed.user_attrs
    retried = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3 and len(trials) == 4
    assert next(r for r in csv.DictReader(open(out / "trials.csv")) if r["trial"] == str(number))["state"] == "lost"


def test_sigterm_stops_the_workers_keeping_finished_trials(tmp_path, capfd):
    write_words(tmp_path / "words.csv")
    out = tmp_path / "search"
    args = flags(tmp_path, out, "--trials", "3", "--jobs", "2", "--space", GOOD, "--pruner", "none", "--epochs", "8")
    search = start(*args)
    number, _ = _running_trial(out)
    search.send_signal(signal.SIGTERM)
    _, stderr = search.communicate(timeout=300)
    assert search.returncode == 143, stderr.decode()
    assert "stopped by SIGTERM" in stderr.decode().splitlines()[-1]
    trials = study_of(out).trials
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert number in [t.number for t in stopped] and all("stopped" in t.user_attrs for t in stopped)
    for t in stopped:  # each stopped between two steps with its last.pt saved, and the folder unlocked
        assert (out / f"trial-{t.number:04d}" / "last.pt").is_file()
        assert not (out / f"trial-{t.number:04d}" / "run.lock").exists()
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t.number for t in stopped)
    # go on, here and shorter: the stopped trials' settings run first
    proc = tune_here(capfd, *flags(tmp_path, out, "--trials", "3", "--space", GOOD, "--pruner", "none"))
    assert proc.returncode == 0, proc.stderr.decode()
    trials = study_of(out).trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3 and not any(t.state.name == "WAITING" for t in trials)


def test_a_journal_file_storage_holds_a_study(tmp_path, capfd):
    write_words(tmp_path / "words.csv")
    out, journal = tmp_path / "search", tmp_path / "study.journal"
    for trials in (1, 2):
        proc = tune_here(capfd, *flags(tmp_path, out, "--trials", trials, "--space", GOOD, "--storage",
                                       f"journal:{journal}"))
        assert proc.returncode == 0, proc.stderr.decode()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="words", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.number for t in study.trials] == [0, 1] and not (out / "study.db").exists()


def test_bad_input_is_one_line(searched, tmp_path, capfd):
    tmp, out = copy_search(searched, tmp_path)
    base = flags(tmp, out, "--space", GOOD)
    cases = {
        "cannot reach --storage sqlite:////no/such/folder/study.db": ["--storage",
                                                                      "sqlite:////no/such/folder/study.db"],
        "is not a storage URL": ["--storage", "nosuch://host/db"],
        "exists and maximizes its objective, but this search would minimize val_loss": ["--monitor", "loss"],
        "searches for the best val_accuracy, but this search's is val_macro_f1": ["--monitor", "macro_f1"],
        "--trials: must be at least 1, got 0": ["--trials", "0"],
        "--space names hidden_size twice (as hidden_size and as hidden-size)": ["--space",
                                                                                "hidden_size=8,16 hidden-size=4"],
        "--space: nosuch is not a setting": ["--space", "nosuch=1,2"],
        "--space lr=0.01:0.001 is an empty range": ["--space", "lr=1e-2:1e-3"],
        "--space dropout: embed_dropout must be in [0, 1), got 1.0": ["--space", "dropout=0:1"],
    }
    for expected, extra in cases.items():
        err = one_line_error(tune_here(capfd, *base, *extra))
        assert expected in err, (expected, err)
    # PostgreSQL without its driver, or with it and no server on port 1: one line either way, the password hidden
    err = one_line_error(tune_here(capfd, *base, "--storage", "postgresql://user:secret@127.0.0.1:1/db"))
    assert "postgresql://user:***@127.0.0.1:1/db" in err and "secret" not in err
    assert "driver is not installed" in err or "cannot reach" in err
    assert len(study_of(out).trials) == 5  # none of them touched the study
    proc = tune_here(capfd, *flags(tmp, tmp_path / "new", "--jobs", "64", "--space", "lr=1e-2:1e-3"))
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 2 and len(lines) == 2 and not (tmp_path / "new").exists()
    assert lines[0].startswith("warning: --jobs 64 is more than the") and "empty range" in lines[1]


def test_without_optuna_the_command_says_how_to_get_it(tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as where the tune extra is not installed
    err = one_line_error(tune_here(capfd, "--data", write_words(tmp_path / "words.csv"), "--out", tmp_path / "s"))
    assert err == "error: rnnsent tune needs Optuna: pip install 'rnnsent[tune]'" and not (tmp_path / "s").exists()


def test_an_out_folder_of_another_search_is_refused(searched, tmp_path, capfd):
    tmp, out = copy_search(searched, tmp_path)
    err = one_line_error(tune_here(capfd, *flags(tmp, out, "--space", GOOD, "--study", "other")))
    assert "holds trial folders of another search (trial-0000, trial-0001, trial-0002, ...)" in err


def test_a_space_is_text_a_json_or_a_yaml_file(tmp_path):
    text = parse_space("lr=1e-4:1e-2:log hidden_size=64,100,128,256 dropout=0:0.5 layers=1,2 bidirectional epochs=4")
    assert text.text() == ("lr=0.0001:0.01:log hidden_size=64,100,128,256 dropout=0:0.5 num_layers=1,2 "
                           "bidirectional=false,true epochs=4")
    (tmp_path / "s.json").write_text(json.dumps({"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                                 "hidden_size": [64, 100, 128, 256], "dropout": "0:0.5",
                                                 "layers": [1, 2], "bidirectional": None, "epochs": 4}))
    (tmp_path / "s.yaml").write_text("lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nhidden_size: [64, 100, 128, 256]\n"
                                     "dropout: '0:0.5'\nlayers: [1, 2]\nbidirectional:\nepochs: 4\n")
    assert parse_space(str(tmp_path / "s.json")) == text == parse_space(str(tmp_path / "s.yaml"))
    gru, rnn = parse_space(None, "gru"), parse_space(None, "rnn")
    assert {"lr", "hidden_size", "embed_dim", "embed_dropout", "output_dropout", "word_dropout", "weight_decay",
            "batch_size"} == gru.settings() == rnn.settings()
    assert next(p.high for p in rnn.params if p.name == "lr") < next(p.high for p in gru.params if p.name == "lr")


@pytest.mark.parametrize("space, says", [
    ("threads=1,2", "threads cannot be searched"),
    ("val_fraction=0.1:0.2", "val_fraction cannot be searched"),
    ("lr=0:1e-2:log", "lr must be a positive number, got 0.0"),
    ("hidden_size=8:16.5", "hidden_size must be a whole number, got 16.5"),
    ("layers", "only a boolean setting may stand alone"),
    ("lr=1e-3", "fixes every setting it names"),
    ("dropout=0:0.5 output_dropout=0.1", "names output_dropout twice (as dropout and as output_dropout)"),
    ("hidden_size=8,8", "a choice is named twice"),
    ("cell=gru,lstm,transformer", "unknown cell 'transformer'"),
])
def test_a_bad_space_is_refused_in_one_line(space, says):
    with pytest.raises(SpaceError) as e:
        parse_space(space)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_bad_space_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "big.json").write_text(" " * 70_000 + "{}")
    for name, says in (("bad.yaml", "not valid YAML"), ("list.json", "expected a mapping"),
                       ("big.json", "more than 64 KiB"), ("none.json", "No such file")):
        with pytest.raises(SpaceError) as e:
            parse_space(str(tmp_path / name))
        assert says in str(e.value) and "\n" not in str(e.value)


def test_help_answers_without_importing_torch_or_optuna():
    code = ("import sys\nfrom rnnsent.__main__ import main\ntry:\n    main(['tune', '--help'])\nexcept SystemExit:\n"
            "    pass\nassert 'torch' not in sys.modules and 'optuna' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert "usage: rnnsent tune" in proc.stdout and "--space SPACE" in proc.stdout
