"""A run's settings are settled once, before its Trainer is built: --resume resolved and loaded once, the data's
settings merged once, one frozen config the Trainer never rebinds; the task is a Protocol the Trainer does not
wrap method by method."""
import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from rnnsent.config import TrainConfig
from rnnsent.data import prepare_texts
from rnnsent.storage.checkpoint import CheckpointError
from rnnsent.training import resume, settle, trainer
from rnnsent.training.classification import Classification
from rnnsent.training.pretrain import LanguageModelling
from rnnsent.training.runfolder import RunFolderTaken
from rnnsent.training.task import Task
from rnnsent.training.trainer import Trainer, train
from test_train import tiny

OLD_RUN = Path(__file__).parent / "fixtures" / "run_killed_mid_epoch"  # a classifier's run folder: last.pt, best.pt


def counted(monkeypatch, module, name: str) -> list:
    """Replace module.name by a wrapper that records each call; returns the record."""
    calls, real = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_a_resumed_run_resolves_resume_and_merges_the_data_once(tmp_path, monkeypatch):
    train(tiny(tmp_path, epochs=1))
    steps = ("prepare_data", "settings_from_data", "check_resume")
    calls = {name: counted(monkeypatch, settle, name) for name in steps}
    finds = [counted(monkeypatch, trainer, "find_resume"), counted(monkeypatch, settle, "find_resume")]
    report = train(tiny(tmp_path, epochs=2, resume="auto"))
    assert report["epochs_run"] == 2
    assert [len(f) for f in finds] == [1, 0], "run_task resolves --resume, and settle takes its result"
    assert {name: len(c) for name, c in calls.items()} == {"prepare_data": 1, "settings_from_data": 1,
                                                            "check_resume": 1}


def test_the_trainer_takes_the_settled_config_as_it_is(tmp_path):
    train(tiny(tmp_path, epochs=1))
    run = settle.settle(tiny(tmp_path, epochs=2, resume=""), None, None)  # the flag without a value: --out's last.pt
    assert run.config.resume == str(tmp_path / "run" / "last.pt") == run.start.loaded_from
    t = Trainer(run)
    assert t.config is run.config and t.data is run.data and t.task is run.task
    assert (t.epoch, t.global_step) == (1, len(t.train_batches))
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.config = None


def test_resume_is_resolved_and_checked_before_the_data_is_prepared(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was prepared")

    monkeypatch.setattr(settle, "prepare_data", no_data)
    best = OLD_RUN / "best.pt"
    for run in (train, Trainer):  # the command line's way, and a Trainer built from Python
        with pytest.raises(CheckpointError, match=f"^{best} holds weights only"):
            run(tiny(tmp_path, resume=str(best)))
    # the run folder's check takes the file resolved: resuming another folder's run into one that holds a run
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunFolderTaken, match=f"which resuming {OLD_RUN / 'last.pt'} into it would overwrite"):
        train(tiny(tmp_path, out=str(out), resume=str(OLD_RUN)))


def test_resume_path_names_one_file():
    assert resume.resume_path(None, "runs/x") == (None, None)
    assert resume.resume_path("", "runs/x") == (str(Path("runs/x/last.pt")), None)
    assert resume.resume_path(str(OLD_RUN), "elsewhere") == (str(OLD_RUN / "last.pt"), None)
    assert resume.resume_path("auto", OLD_RUN) == (str(OLD_RUN / "last.pt"), None)
    assert resume.resume_path("auto", "nowhere") == (None, "--resume auto: no last.pt in nowhere, starting a new run")


@pytest.fixture(scope="module")
def three_classes():
    texts = [f"{word} review {i}" for word in ("good", "bad", "meh") for i in range(8)]
    labels = [label for label in ("pos", "neg", "mid") for _ in range(8)]
    return prepare_texts(texts, labels, vocab_size=40, max_len=12, encoding="keras")


def test_the_data_decides_its_settings_where_the_config_left_them_unset(three_classes):
    config, taken = settle.settings_from_data(TrainConfig(), three_classes)
    assert (config.vocab_size, config.max_len, config.encoding, config.num_classes) == (40, 12, "keras", 3)
    assert taken == "vocab_size 40, max_len 12, encoding keras"
    same = TrainConfig(vocab_size=40, max_len=12, encoding="keras", num_classes=3)
    assert settle.settings_from_data(same, three_classes) == (same, "")


@pytest.mark.parametrize("setting, message", [
    (dict(max_len=30), "max_len=30 but the data was prepared with max_len 12; pass the data's max_len or leave it "
                       "unset"),
    (dict(vocab_size=60), "vocab_size=60 but the data was prepared with vocab_size 40; pass the data's vocab_size "
                          "or leave it unset"),
    (dict(num_classes=4), "num_classes=4 but the data has 3 classes; leave it unset"),
])
def test_settings_that_contradict_the_data_are_refused_in_one_line(three_classes, setting, message):
    with pytest.raises(ValueError) as e:
        settle.settings_from_data(TrainConfig(**setting), three_classes)
    assert str(e.value) == message


def test_a_vocabulary_larger_than_vocab_size_is_refused(three_classes):
    unsized = dataclasses.replace(three_classes, meta={**three_classes.meta, "params": {}})
    n = len(unsized.vocab)
    with pytest.raises(ValueError) as e:
        settle.settings_from_data(TrainConfig(vocab_size=n - 1), unsized)
    assert str(e.value) == (f"the data's vocabulary has {n} ids but vocab_size is {n - 1}; its ids would fall "
                            "outside the embedding")


def test_the_trainer_sets_its_config_once_and_forwards_nothing_to_the_task():
    tree = ast.parse(Path(inspect.getfile(Trainer)).read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    targets = [t for n in ast.walk(cls) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
               for t in (n.targets if isinstance(n, ast.Assign) else [n.target])]
    names = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
    assert sum(isinstance(e, ast.Attribute) and e.attr == "config" for e in names) == 1
    for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        body = [s for s in method.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        only_returns_a_task_call = (len(body) == 1 and isinstance(body[0], ast.Return)
                                    and "self.task." in ast.unparse(body[0]).split("(")[0])
        assert not only_returns_a_task_call, f"Trainer.{method.name} only passes through to the task"


@pytest.mark.parametrize("task", [Classification, LanguageModelling])
def test_every_task_has_the_whole_interface(task):
    members = set(Task.__annotations__) | {n for n, v in vars(Task).items() if inspect.isfunction(v) and n[0] != "_"}
    assert members == {"kind", "reports_accuracy", "settings", "build_model", "rnn_implementation",
                       "forward_backward", "evaluate", "validate", "epoch_line", "finish"}
    for name in members:
        assert hasattr(task, name), name
        if inspect.isfunction(getattr(Task, name, None)):
            assert list(inspect.signature(getattr(task, name)).parameters) == list(
                inspect.signature(getattr(Task, name)).parameters), name
