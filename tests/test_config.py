"""One definition per setting: every model option and data setting reaches every entry point, and checkpoints and
run folders written by an earlier version of rnnsent (encoding "fast", expected_per_block) still load and resume."""
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import rnnsent
from rnnsent.inference.loading import load_checkpoint
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state
from rnnsent.cli import config_from_args, train_parser
from rnnsent.config import (CELL_TABLE, KERAS_CELL_NAMES, RECIPES, DataConfig, ModelConfig, OptimConfig, TrainConfig,
                            field_names, recipe_settings)
from rnnsent.model.sentiment import SentimentRNN
from rnnsent.training.resume import RESUME_MUST_MATCH, resume_differences
from rnnsent.training.trainer import Trainer

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "imdb" / "reviews.json"
OLD = FIXTURES / "checkpoints_fast_encoding"  # best.pt and last.pt of an earlier version (see the test below)

# A valid value other than the default for every model option. A new ModelConfig field fails the first test
# until it is added here, and then has to pass every entry point below.
NON_DEFAULT = {"cell": "lstm", "vocab_size": 301, "embed_dim": 7, "hidden_size": 5, "embed_dropout": 0.25,
               "output_dropout": 0.125, "init": "torch", "word_dropout": 0.375, "num_classes": 3,
               "num_layers": 2, "bidirectional": True, "layer_dropout": 0.0625}
# what a Keras file fixes
SHAPE = ("cell", "vocab_size", "embed_dim", "hidden_size", "num_classes", "num_layers", "bidirectional")


def fixture_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(max_len=60, epochs=1, batch_size=4, data_root=str(FIXTURE),
                  cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"), quiet=True, val_fraction=0.25)
    return TrainConfig(**{**values, **overrides})


def test_every_model_option_has_a_non_default_value_here():
    assert set(NON_DEFAULT) == set(field_names(ModelConfig))
    assert all(getattr(ModelConfig(), k) != v for k, v in NON_DEFAULT.items())


def test_every_model_option_passes_through_every_entry_point(tmp_path):
    assert SentimentRNN(**NON_DEFAULT).config() == NON_DEFAULT
    assert SentimentRNN(*NON_DEFAULT.values()).config() == NON_DEFAULT  # positional, in ModelConfig's order
    assert SentimentRNN(ModelConfig(**NON_DEFAULT)).config() == NON_DEFAULT

    flags = [a for k, v in NON_DEFAULT.items()
             for a in ((f"--{k.replace('_', '-')}",) if v is True else (f"--{k.replace('_', '-')}", str(v)))]
    assert config_from_args(train_parser().parse_args(flags)).model_args() == NON_DEFAULT

    config = fixture_config(tmp_path, **NON_DEFAULT)
    trainer = Trainer(config)
    assert trainer.model.config() == NON_DEFAULT
    trainer.fit()
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / "run" / name).model.config() == NON_DEFAULT

    last = str(tmp_path / "run" / "last.pt")
    for key in NON_DEFAULT:  # resuming with any model option changed is refused, naming it
        other = {"num_layers": 3}.get(key, getattr(ModelConfig(), key))  # (one layer would refuse layer_dropout)
        with pytest.raises(CheckpointError, match=f"{key}: checkpoint {NON_DEFAULT[key]!r}"):
            Trainer(dataclasses.replace(config, resume=last, **{key: other}))


@pytest.mark.parametrize("cell", sorted(CELL_TABLE))
def test_every_free_model_option_passes_through_keras_import(cell):
    path = FIXTURES / "keras" / f"k3_{cell}.h5"
    shape = {k: v for k, v in rnnsent.from_keras(path).config().items() if k in SHAPE}
    free = {k: v for k, v in NON_DEFAULT.items() if k not in SHAPE}
    model = rnnsent.from_keras(path, **shape, **free)
    assert model.config() == {**NON_DEFAULT, **shape}
    assert rnnsent.from_keras(path, word_dropout=0.2).word_dropout == 0.2
    with pytest.raises(rnnsent.KerasFormatError, match="hidden_size"):
        rnnsent.from_keras(path, hidden_size=shape["hidden_size"] + 1)
    with pytest.raises(TypeError, match="unknown arguments units"):
        rnnsent.from_keras(path, units=3)


def test_data_settings_reach_prepare_data_from_the_checkpoint(tmp_path):
    data_settings = dict(max_len=37, encoding="keras", limit=10, val_fraction=0.4, split_seed=3)
    assert all(getattr(DataConfig(), k) != v for k, v in data_settings.items())
    trainer = Trainer(fixture_config(tmp_path, vocab_size=200, embed_dim=4, hidden_size=3, **data_settings))
    trainer.fit()
    data = load_checkpoint(tmp_path / "run" / "best.pt").prepare_data(cache_dir=tmp_path / "cache2")
    for split in ("train", "val", "test"):
        a, b = getattr(data, split), getattr(trainer.data, split)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels), split


def test_resume_checks_cover_every_setting_that_changes_what_is_learned():
    groups = set(field_names(ModelConfig)) | set(field_names(DataConfig)) | set(field_names(OptimConfig))
    assert set(RESUME_MUST_MATCH) == groups - {"data_root", "cache_dir", "epochs", "patience", "pretrained"}


def test_one_cell_table():
    assert rnnsent.CELLS == tuple(CELL_TABLE) and KERAS_CELL_NAMES == {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}
    for name, cell in CELL_TABLE.items():
        model = SentimentRNN(name, vocab_size=10, embed_dim=2, hidden_size=3)
        assert model.rnn.weight_hh_l0.shape == (cell.gates * 3, 3)  # PyTorch's layer agrees on the gate count
        assert sorted(cell.keras_gate_order) == list(range(cell.gates))


def _old_config(tmp_path, **overrides) -> TrainConfig:
    """The settings the fixture run was trained with (tests/fixtures/checkpoints_fast_encoding)."""
    return fixture_config(tmp_path, vocab_size=300, embed_dim=8, hidden_size=6, embed_dropout=0.2, seed=7, **overrides)


def test_checkpoints_with_the_fast_encoding_load_and_resume(tmp_path):
    # Written by an earlier version's Trainer(TrainConfig(cell="gru", vocab_size=300, embed_dim=8, hidden_size=6,
    # max_len=60, epochs=1, batch_size=4, embed_dropout=0.2, seed=7, data_root="tests/fixtures/imdb/reviews.json",
    # expected_per_block=6, out="old-run", val_fraction=0.25, threads=1)).fit(), when the default encoding was "fast".
    assert load_checkpoint_state(OLD / "last.pt")["config"]["encoding"] == "fast"
    assert load_checkpoint_state(OLD / "last.pt")["config"]["expected_per_block"] == 6  # a setting since retired
    loaded = load_checkpoint(OLD / "best.pt")
    assert loaded.encoding == "bucketed" and loaded.model.config()["hidden_size"] == 6
    assert [p.label for p in loaded.predict(["a fine film", "dull"])]  # reads text as it was trained to

    Trainer(_old_config(tmp_path / "a", epochs=2, threads=1)).fit()  # today's code, uninterrupted
    run = tmp_path / "b" / "run"
    run.mkdir(parents=True)
    shutil.copy(OLD / "last.pt", run / "last.pt")
    Trainer(_old_config(tmp_path / "b", epochs=2, threads=1, resume=str(run / "last.pt"))).fit()
    resumed, fresh = load_checkpoint_state(run / "last.pt"), load_checkpoint_state(tmp_path / "a" / "run" / "last.pt")
    assert resumed["progress"]["global_step"] == fresh["progress"]["global_step"]
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert torch.equal(resumed["rng"]["torch"], fresh["rng"]["torch"])  # exact on any CPU: as many draws
    # The fused kernel sums its gradients per fixed chunk, which the version that wrote last.pt did not, and that
    # was another CPU, so the first epoch rounds differently (6e-8 apart on an AMD EPYC): equal up to rounding, where
    # a wrong position, RNG state or optimizer state would put whole optimizer steps (about lr = 1e-3 per weight)
    # between the two.
    for k, v in fresh["model_state"].items():
        assert torch.allclose(resumed["model_state"][k], v, rtol=1e-4, atol=1e-6), f"{k} differs"
    with pytest.raises(CheckpointError, match="encoding: checkpoint 'bucketed', now 'keras'"):
        Trainer(_old_config(tmp_path / "c", epochs=2, encoding="keras", resume=str(OLD / "last.pt")))


# A run folder written by an earlier version of rnnsent on another CPU, killed by RNNSENT_FAULT_KILL_AT_STEP=6 at
# global step 6 of 12, in the middle of epoch 2:
#   python scripts/train.py {RUN_ARGS} --out RUN
# It holds last.pt (step 6), last.prev.pt (step 5), best.pt, epoch 1's metrics row and the dead run's run.lock.
KILLED_RUN = FIXTURES / "run_killed_mid_epoch"
RUN_ARGS = ("--cell lstm --vocab-size 300 --embed-dim 8 --hidden-size 6 --max-len 60 --epochs 3 --batch-size 2 "
            "--embed-dropout 0.2 --seed 3 --data tests/fixtures/imdb/reviews.json --cache-dir .cache-fixture "
            "--val-fraction 0.25 --threads 1 --ckpt-every 1")
# Its first six steps were computed on another CPU, whose matrix products round otherwise (docs/reproducibility.md):
# the weights at the end differed from the same twelve steps computed here by up to 1.4e-6 (AMD EPYC). One Adam step
# moves a weight by about lr = 1e-3, so a resume at the wrong step or with the wrong optimizer state is far outside.
ACROSS_CPUS = 1e-5


def test_a_run_folder_of_an_earlier_version_killed_mid_epoch_resumes_where_it_stopped(tmp_path, monkeypatch):
    from rnnsent.cli import train_main

    monkeypatch.chdir(tmp_path)  # the folder's config.json and command.txt hold paths relative to the repository
    (tmp_path / "tests" / "fixtures" / "imdb").mkdir(parents=True)
    for name in (FIXTURE.name, "imdb_subset.json"):
        shutil.copy(FIXTURE.parent / name, tmp_path / "tests" / "fixtures" / "imdb" / name)
    shutil.copytree(KILLED_RUN, "killed")
    args = RUN_ARGS.split() + ["--quiet"]
    assert train_main(args + ["--out", "killed", "--resume", "auto"]) == 0
    assert train_main(args + ["--out", "fresh"]) == 0  # today's code, uninterrupted
    resumed, fresh = (load_checkpoint_state(Path(run) / "last.pt") for run in ("killed", "fresh"))
    # Exact on any CPU: where the run is, the optimizer's step counts and the RNG state (dropout drew the same
    # number of values whatever the arithmetic rounded to).
    where = [{k: v for k, v in state["progress"].items() if k != "sums"} for state in (resumed, fresh)]
    assert where[0] == where[1] and where[0]["global_step"] == 12 and where[0]["epoch"] == 3
    assert torch.equal(resumed["rng"]["torch"], fresh["rng"]["torch"])
    assert resumed["optimizer"]["param_groups"] == fresh["optimizer"]["param_groups"]
    for a, b in zip(resumed["optimizer"]["state"].values(), fresh["optimizer"]["state"].values(), strict=True):
        assert a.keys() == b.keys() and a["step"].item() == b["step"].item() == 12
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-9)
    # Within rounding across CPUs: the weights and the losses.
    for k, v in fresh["model_state"].items():
        torch.testing.assert_close(resumed["model_state"][k], v, rtol=0, atol=ACROSS_CPUS, msg=f"{k} differs")
    timing = {"epoch_seconds", "samples_per_second"}
    rows = [[{k: v for k, v in json.loads(line).items() if k not in timing} for line in (Path(run) / "metrics.jsonl")
             .read_text().splitlines()] for run in ("killed", "fresh")]
    first = [(Path(run) / "metrics.jsonl").read_text().splitlines()[0] for run in ("killed", KILLED_RUN)]
    assert first[0] == first[1]  # the dead run's row for epoch 1, kept as it was written
    assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]] == [1, 2, 3]
    for a, b in zip(rows[0], rows[1]):  # a row the earlier version wrote lacks keys added since (val_one_class)
        assert a.keys() <= b.keys()
        for k, v in a.items():
            assert v == (pytest.approx(b[k], abs=1e-6, rel=0) if isinstance(v, float) else b[k]), k


def test_the_retired_expected_per_block_is_gone_but_checkpoints_holding_it_resume(tmp_path):
    # The keyword is gone; checkpoints and caches that hold it still load.
    with pytest.raises(TypeError, match="expected_per_block"):
        fixture_config(tmp_path, expected_per_block=6)
    config = fixture_config(tmp_path)
    assert "expected_per_block" not in config.to_dict()
    assert "expected_per_block" not in RESUME_MUST_MATCH and "expected_per_block" not in config.data_args()
    # A last.pt of a fixture run (6), of a full-data run (12500) or of one that skipped the check (None) resumes alike.
    saved = load_checkpoint_state(OLD / "last.pt")["config"]
    for value in (6, 12500, None):
        assert resume_differences(dict(saved, expected_per_block=value), _old_config(tmp_path)) == []


def test_old_checkpoints_holding_expected_per_block_evaluate_without_a_warning(tmp_path):
    loaded = load_checkpoint(OLD / "best.pt")
    assert loaded.config["expected_per_block"] == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old key is left unread, not passed on to be warned about
        data = loaded.prepare_data(root=FIXTURE, cache_dir=tmp_path)
    assert (len(data.test), len(data.train) + len(data.val)) == (12, 12)


def test_the_recipe_once_called_best_is_regularised_and_the_old_name_still_runs_it(capsys):
    assert "best" not in RECIPES and recipe_settings("best") == recipe_settings("regularised")
    old = config_from_args(train_parser().parse_args(["--recipe", "best", "--cell", "lstm"]))
    assert capsys.readouterr().err == "note: --recipe best is now called regularised; the old name will go away\n"
    assert old == config_from_args(train_parser().parse_args(["--recipe", "regularised", "--cell", "lstm"]))
    assert old.max_len == 1000 and old.word_dropout == 0.2 and old.epochs == 10
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--recipe", "bestest"])
    assert "invalid choice: 'bestest'" in capsys.readouterr().err


def test_a_recipe_can_set_one_cell_apart_and_flags_still_win(tmp_path, monkeypatch):
    """`tuned` trains SimpleRNN and LSTM longer than GRU; an explicit flag beats the cell's setting, and a
    pretraining run takes the recipe's pretraining settings over the cell's."""
    def config(*flags, pretraining=False):
        return config_from_args(train_parser().parse_args(["--recipe", "tuned", *flags]), pretraining=pretraining)

    shared = {k: v for k, v in RECIPES["adversarial"].items() if k != "doc"}
    for cell, epochs in (("gru", 10), ("lstm", 15), ("rnn", 20), ("SimpleRNN", 20)):
        c = config("--cell", cell)
        assert c.epochs == epochs
        assert {k: getattr(c, k) for k in shared if k != "epochs"} == {k: v for k, v in shared.items() if k != "epochs"}
    assert config("--cell", "rnn", "--epochs", "3").epochs == 3
    monkeypatch.setitem(RECIPES, "with_lm", {**RECIPES["tuned"], "pretrain": {"epochs": 2, "lr": 2e-3}})
    lm = config_from_args(train_parser().parse_args(["--recipe", "with_lm", "--cell", "rnn"]), pretraining=True)
    assert (lm.epochs, lm.lr, lm.adversarial, lm.max_len) == (2, 2e-3, 0.0, 1000)
