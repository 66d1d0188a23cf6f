"""The released checkpoints under checkpoints/: they load, describe themselves, and read real reviews."""
import json
from pathlib import Path

import pytest

import rnnsent
from rnnsent.checkpoint import load_checkpoint_state
from rnnsent.models import count_parameters

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
INDEX = json.loads((CHECKPOINTS / "RESULTS.json").read_text())
RNN_PARAMS = {"lstm": 53_200, "gru": 40_200, "rnn": 13_300}

POSITIVE = ("One of the best films I have seen in years. The acting is superb, the story is moving and "
            "beautifully told, and the ending is perfect. I loved every minute and will watch it again.")
NEGATIVE = ("This was a terrible movie. The plot made no sense, the acting was awful and the dialogue "
            "was painfully bad. A complete waste of time; I wanted to leave after twenty minutes.")


@pytest.mark.parametrize("cell", sorted(INDEX))
def test_released_checkpoint_loads_and_predicts(cell):
    entry = INDEX[cell]
    loaded = rnnsent.load_checkpoint(CHECKPOINTS / entry["file"])
    assert loaded.model.cell == cell
    assert count_parameters(loaded.model.rnn) == RNN_PARAMS[cell]
    assert loaded.model.vocab_size == 5000 and len(loaded.vocab) == 5000
    assert "optimizer" not in loaded.state, "released files hold weights, vocabulary and config only"
    pos, neg, empty = rnnsent.predict(loaded, [POSITIVE, NEGATIVE, ""])
    assert pos.label == "positive" and pos.probability > 0.8
    assert neg.label == "negative" and neg.probability < 0.2
    assert 0.0 <= empty.probability <= 1.0


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
    state = load_checkpoint_state(CHECKPOINTS / INDEX[cell]["file"])
    found = [s for s in _strings({k: v for k, v in state.items() if k != "vocab"}) if _absolute(s)]
    assert not found, f"{cell}: {found}"
    assert not _absolute(INDEX[cell]["command"]), INDEX[cell]["command"]


@pytest.mark.parametrize("cell", sorted(INDEX))
def test_released_command_gives_the_settings_the_file_holds(cell):
    """Each recorded command, parsed as train.py parses it, asks for exactly the settings in its file,
    PyTorch's layers included (the released models predate the fused kernel)."""
    from rnnsent.cli import config_from_args, train_parser

    argv = INDEX[cell]["command"].split()
    assert argv[0] == "scripts/train.py"
    asked = config_from_args(train_parser().parse_args(argv[1:])).to_dict()
    saved = load_checkpoint_state(CHECKPOINTS / INDEX[cell]["file"])["config"]
    assert asked["rnn_impl"] == "torch"
    assert {k: v for k, v in saved.items()} == {k: asked[k] for k in saved}


@pytest.mark.slow
@pytest.mark.parametrize("cell", sorted(INDEX))
def test_released_checkpoint_matches_the_table_on_the_full_test_split(cell):
    """Not in CI: needs the full IMDB data (RNNSENT_DATA or the cache)."""
    from rnnsent.evaluate import evaluate

    loaded = rnnsent.load_checkpoint(CHECKPOINTS / INDEX[cell]["file"])
    data = loaded.prepare_data()
    assert evaluate(loaded.model, data.test)["accuracy"] == pytest.approx(INDEX[cell]["test_accuracy"], abs=1e-6)
