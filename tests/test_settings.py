"""Each setting's rule lives beside its field (rnnsent.config: setting() with choices or a Range, the annotation's
type), and every door refuses a value outside it with the same one line: the flag, TrainConfig(...), a checkpoint
being loaded, a data function's plain argument. A new option is its field and its use."""
import dataclasses
import math
from pathlib import Path

import pytest

from rnnsent.cli import config_from_args, flag_order, train_parser
from rnnsent.config import (SETTINGS, DataConfig, ModelConfig, OptimConfig, Range, RunConfig, TrainConfig,
                            check_setting, setting, setting_kind)
from rnnsent.data import Vocab, prepare_imdb, prepare_labelled, train_val_split
from rnnsent.data.tabular import Columns, DataFileError, read_rows
from rnnsent.inference.loading import load_checkpoint
from rnnsent.model.sentiment import SentimentRNN
from rnnsent.storage.checkpoint import CheckpointError, save_checkpoint

RULED = [name for name, f in SETTINGS.items()
         if f.metadata.get("choices") or f.metadata.get("bounds") or f.metadata.get("rule")]
VOCAB = Vocab(("the", "film", "good", "bad"))
ENCODING = {"max_len": 8, "encoding": "bucketed"}


def out_of_rule(name: str) -> list:
    """Values the setting `name` must refuse: either side of its Range, NaN, a choice it lacks, text for a number."""
    f = SETTINGS[name]
    kind, bounds, choices = setting_kind(f)[0], f.metadata.get("bounds"), f.metadata.get("choices")
    if choices:
        return ["bogus"]
    if f.metadata.get("rule"):
        return list(f.metadata["rule"].refuses)
    step = 1 if kind == "int" else 0.5
    bad = [bounds.low if bounds.low_open else bounds.low - step, "many"]
    if math.isfinite(bounds.high):
        bad.append(bounds.high if bounds.high_open else bounds.high + step)
    elif kind == "float" and bounds.high_open:
        bad.append(math.inf)
    return bad + [math.nan] * (kind == "float")  # NaN is in no range


def said(name: str, value) -> str:
    """What the rule says of `value`: the one line every door must give."""
    f = SETTINGS[name]
    kind, bounds, choices = setting_kind(f)[0], f.metadata.get("bounds"), f.metadata.get("choices")
    if isinstance(value, str) and kind in ("int", "float"):
        return f"{name} must be {'a whole number' if kind == 'int' else 'a number'}, got {value!r}"
    if choices:
        return f"{name} must be one of {', '.join(choices)}, got {value!r}"
    return f"{name} must be {(bounds or f.metadata.get('rule')).says}, got {value!r}"


def flag_error(name: str, value, capsys) -> str:
    action = next(a for a in train_parser()._actions if a.dest == name)
    with pytest.raises(SystemExit) as stop:
        train_parser().parse_args([action.option_strings[0], str(value)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    prefix = f"train.py: error: argument {'/'.join(action.option_strings)}: "
    assert err.startswith(prefix) and err.endswith(" (see --help)\n"), err
    return err[len(prefix):-len(" (see --help)\n")]


def checkpoint_error(name: str, value, tmp_path: Path) -> str:
    """The error of loading a checkpoint that holds `value` for `name` where loading reads it: model_config (the
    model's settings), data (max_len, encoding) or config (the data settings LoadedModel.prepare_data uses)."""
    model = SentimentRNN("gru", vocab_size=len(VOCAB), embed_dim=4, hidden_size=3)
    state = {"model_config": model.config(), "model_state": model.state_dict(), "vocab": VOCAB.to_dict(),
             "data": dict(ENCODING), "config": {}}
    group = "model_config" if name in ModelConfig.__dataclass_fields__ else "data" if name in ENCODING else "config"
    state[group][name] = value
    path = save_checkpoint(tmp_path / f"{name}-{value}.pt", state)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path).prepare_data()  # prepare_data: refused before any data is looked for
    message = str(refused.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


def data_function_errors(name: str, value, tmp_path: Path) -> list[str]:
    """The errors of the data functions that take `name` as a plain argument, each refusing before any reading."""
    calls = []
    nowhere = tmp_path / "nowhere.csv"
    if name in ("vocab_size", "max_len", "encoding", "limit", "val_fraction"):
        calls.append(lambda: prepare_imdb(**{name: value}, root=nowhere, download=False, use_cache=False))
    if name in ("vocab_size", "max_len", "encoding", "limit", "val_fraction", "test_fraction"):
        calls.append(lambda: prepare_labelled(nowhere, **{name: value}, use_cache=False))
    if name == "val_fraction":
        calls.append(lambda: train_val_split(10, value, 0))
    if name == "quoting":
        (tmp_path / "rows.csv").write_text("text,label\ngood,pos\n")
        calls.append(lambda: list(read_rows(tmp_path / "rows.csv", Columns(quoting=value))))
    if name == "vocab_size":
        calls.append(lambda: Vocab.from_counts(["a"], [1], value))
    errors = []
    for call in calls:
        with pytest.raises(ValueError) as refused:
            call()
        errors.append(str(refused.value))
    return errors


def test_the_walk_covers_every_kind_of_rule():
    assert {"vocab_size", "max_len", "limit", "val_fraction", "test_fraction", "quoting", "encoding", "lr", "amp",
            "ckpt_every", "class_weight", "threshold", "sampler"} <= set(RULED)
    assert all(name in RULED for name, f in SETTINGS.items() if f.metadata.get("bounds"))


@pytest.mark.parametrize("name", RULED)
def test_every_door_refuses_a_value_outside_the_rule_with_the_same_line(name, tmp_path, capsys):
    for value in out_of_rule(name):
        if name == "val_fraction" and value == 0:
            continue  # the one value a data function takes and training does not (below)
        message = said(name, value)
        assert flag_error(name, value, capsys) == message
        with pytest.raises(ValueError) as refused:
            TrainConfig(**{name: value})
        assert str(refused.value) == message
        group = next(g for g in (ModelConfig, DataConfig, OptimConfig, RunConfig) if name in g.__dataclass_fields__)
        with pytest.raises(ValueError) as refused:
            group(**{name: value})
        assert str(refused.value) == message
        if group in (OptimConfig, RunConfig):
            # A checkpoint carries these in its config, but loading a model reads none of them, and a resumed
            # run compares them with its own TrainConfig, already refused above: no checkpoint door to try.
            pass
        else:
            assert checkpoint_error(name, value, tmp_path).endswith(": " + message)
        assert all(error == message for error in data_function_errors(name, value, tmp_path))


def test_preparing_data_may_hold_no_validation_rows_out_and_training_may_not(tmp_path, capsys):
    message = said("val_fraction", 0.0)
    assert flag_error("val_fraction", 0.0, capsys) == message
    with pytest.raises(ValueError) as refused:
        TrainConfig(val_fraction=0.0)
    assert str(refused.value) == message
    train, val = train_val_split(10, 0.0, 0)
    assert train.tolist() == list(range(10)) and val.tolist() == []


def test_a_value_inside_the_rule_passes_every_door_as_a_plain_value(capsys):
    import numpy as np

    assert check_setting("vocab_size", np.int64(300)) == 300 and type(check_setting("vocab_size", np.int64(3e2))) is int
    assert type(TrainConfig(lr=1).lr) is float and TrainConfig(limit=None).limit is None
    assert train_parser().parse_args(["--vocab-size", "10000000"]).vocab_size == 10_000_000  # the bound itself
    with pytest.raises(ValueError, match="^vocab_size must be a whole number, got True$"):
        TrainConfig(vocab_size=True)  # a bool is no number
    with pytest.raises(ValueError, match="^bidirectional must be True or False, got 'yes'$"):
        ModelConfig(bidirectional="yes")
    with pytest.raises(DataFileError, match="^quoting must be one of csv, none, got 'x'$"):
        check_setting("quoting", "x", DataFileError)


# A throwaway optimiser option, added the way a real one is: one field with its setting() at the end of
# OptimConfig (here a subclass of it, so the real classes stay as they are), in a TrainConfig whose fields are
# in the same order (its method resolution puts Momentum's field right after OptimConfig's).
Momentum = dataclasses.make_dataclass(
    "Momentum", [("momentum", float, setting(0.9, "a throwaway option of this test [{default}]",
                                              bounds=Range(0.0, 1.0, says="in [0, 1)")))],
    bases=(OptimConfig,), frozen=True)
WithMomentum = dataclasses.make_dataclass("WithMomentum", [], bases=(TrainConfig, Momentum), frozen=True)


def test_a_new_optimiser_option_is_its_field_and_gets_its_flag_help_place_and_check(capsys):
    plain = [f.name for f in dataclasses.fields(TrainConfig)]
    after = plain.index(dataclasses.fields(OptimConfig)[-1].name) + 1  # right after OptimConfig's last field
    assert [f.name for f in dataclasses.fields(WithMomentum)] == [*plain[:after], "momentum", *plain[after:]]
    parser = train_parser("train.py", config=WithMomentum)
    assert {a.dest for a in parser._actions} - {a.dest for a in train_parser()._actions} == {"momentum"}
    assert "--momentum MOMENTUM a throwaway option of this test [0.9]" in " ".join(parser.format_help().split())
    order = flag_order(WithMomentum)
    last = dataclasses.fields(OptimConfig)[-1].name
    assert order.index("momentum") == order.index(last) + 1, "listed with the optimisation flags"
    assert config_from_args(parser.parse_args(["--momentum", "0.5"]), config=WithMomentum).momentum == 0.5
    assert config_from_args(parser.parse_args([]), config=WithMomentum).momentum == 0.9
    with pytest.raises(SystemExit):
        parser.parse_args(["--momentum", "1"])
    message = "momentum must be in [0, 1), got 1.0"
    assert capsys.readouterr().err == f"train.py: error: argument --momentum: {message} (see --help)\n"
    with pytest.raises(ValueError) as refused:
        WithMomentum(momentum=1)
    assert str(refused.value) == message
    assert WithMomentum(momentum=0.5).to_dict()["momentum"] == 0.5
    # TrainConfig's own flags are untouched, in their order
    assert [a.dest for a in train_parser()._actions] == [a.dest for a in parser._actions if a.dest != "momentum"]
