"""The released checkpoints (checkpoints/, the wheel's package data): they load by name, describe themselves, and
read real reviews; a path always wins over a released name."""
import json
import logging
import shutil

import pytest
import torch

import rnnsent
from rnnsent.inference.loading import RELEASED, RELEASED_NAMES
from rnnsent.storage.checkpoint import load_checkpoint_state
from rnnsent.model.sentiment import count_parameters

INDEX = json.loads((RELEASED / "RESULTS.json").read_text())
RNN_PARAMS = {"lstm": 53_200, "gru": 40_200, "rnn": 13_300}

POSITIVE = ("One of the best films I have seen in years. The acting is superb, the story is moving and "
            "beautifully told, and the ending is perfect. I loved every minute and will watch it again.")
NEGATIVE = ("This was a terrible movie. The plot made no sense, the acting was awful and the dialogue "
            "was painfully bad. A complete waste of time; I wanted to leave after twenty minutes.")


@pytest.mark.parametrize("cell", sorted(INDEX))
def test_released_checkpoint_loads_and_predicts(cell):
    entry = INDEX[cell]
    loaded = rnnsent.load_checkpoint(RELEASED / entry["file"])
    assert loaded.model.cell == cell
    assert count_parameters(loaded.model.rnn) == RNN_PARAMS[cell]
    assert loaded.model.vocab_size == 5000 and len(loaded.vocab) == 5000
    assert "optimizer" not in loaded.state, "released files hold weights, vocabulary and config only"
    pos, neg, empty = rnnsent.predict(loaded, [POSITIVE, NEGATIVE, ""])
    assert pos.label == "positive" and pos.probability > 0.8
    assert neg.label == "negative" and neg.probability < 0.2
    with torch.no_grad():  # an empty review is the start token alone
        assert empty.probability == pytest.approx(torch.sigmoid(loaded.model(torch.tensor([[1]]))).item(), abs=1e-6)


def test_released_names_are_the_indexed_files():
    assert sorted(RELEASED_NAMES) == sorted(INDEX) and all(INDEX[n]["file"] == f"{n}.pt" for n in INDEX)


@pytest.mark.parametrize("name", RELEASED_NAMES)
def test_released_model_loads_by_name_from_any_folder(name, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # no repo around: the name alone finds the file in the package
    caplog.set_level(logging.INFO, logger="rnnsent")
    loaded = rnnsent.load_checkpoint(name)
    assert loaded.path == RELEASED / f"{name}.pt" and loaded.model.cell == name
    assert f"the released {name} model" in caplog.text and str(RELEASED / f"{name}.pt") in caplog.text


def test_an_existing_path_wins_over_a_released_name(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gru").mkdir()
    shutil.copyfile(RELEASED / "rnn.pt", tmp_path / "gru" / "best.pt")  # a run folder that happens to be called gru
    caplog.set_level(logging.INFO, logger="rnnsent")
    loaded = rnnsent.load_checkpoint("gru")
    assert loaded.model.cell == "rnn"
    assert "a path here wins over the released model gru" in caplog.text
    ref = rnnsent.load_checkpoint(RELEASED / "rnn.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), ref.model.state_dict().values()))


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _absolute(text: str) -> bool:
    return any(word.startswith(("/", "~")) or word[1:3] == ":\\" for word in text.split())


@pytest.mark.parametrize("cell", sorted(INDEX))
def test_released_files_hold_no_path_of_the_machine_that_made_them(cell):
    state = load_checkpoint_state(RELEASED / INDEX[cell]["file"])
    found = [s for s in _strings({k: v for k, v in state.items() if k != "vocab"}) if _absolute(s)]
    assert not found, f"{cell}: {found}"
    assert not _absolute(INDEX[cell]["command"]), INDEX[cell]["command"]


@pytest.mark.parametrize("cell", sorted(INDEX))
def test_released_command_gives_the_settings_the_file_holds(cell):
    """Each recorded command, parsed as train.py parses it, asks for exactly the settings in its file (the
    kernel included). A model fine-tuned from a language model records the pretraining command first:
    that one, parsed as pretrain.py parses it, makes the run folder the training command starts from."""
    from rnnsent.cli import config_from_args, train_parser
    from rnnsent.config import canonical_encoding

    *before, argv = [part.split() for part in INDEX[cell]["command"].split(" && ")]
    assert argv[0] == "scripts/train.py"
    asked = config_from_args(train_parser().parse_args(argv[1:])).to_dict()
    saved = load_checkpoint_state(RELEASED / INDEX[cell]["file"])["config"]
    saved["encoding"] = canonical_encoding(saved["encoding"], warn=False)  # older files predate "fast" -> "bucketed"
    # retired: the reader now holds the full set to 12,500 itself
    assert (saved.pop("expected_per_block", 12500) == 12500)
    assert saved == {k: asked[k] for k in saved}
    if saved.get("pretrained"):
        (pre,) = before
        assert pre[0] == "scripts/pretrain.py"
        lm = config_from_args(train_parser().parse_args(pre[1:]), pretraining=True)
        assert saved["pretrained"] == lm.out and (lm.cell, lm.seed, lm.max_len) == (saved["cell"], 0, saved["max_len"])
    else:
        assert not before  # one command; saved == asked above covers the kernel (--rnn-impl) too


@pytest.mark.slow
@pytest.mark.parametrize("cell", sorted(INDEX))
def test_released_checkpoint_matches_the_table_on_the_full_test_split(cell):
    """Not in CI: needs the full IMDB data (RNNSENT_DATA or the cache)."""
    from rnnsent.inference.evaluate import evaluate

    loaded = rnnsent.load_checkpoint(RELEASED / INDEX[cell]["file"])
    data = loaded.prepare_data()
    assert evaluate(loaded.model, data.test)["accuracy"] == pytest.approx(INDEX[cell]["test_accuracy"], abs=1e-6)
