"""The released checkpoints under checkpoints/: they load, describe themselves, and read real reviews."""
import json
from pathlib import Path

import pytest
import torch

import rnnsent
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
    with torch.no_grad():  # an empty review is the start token alone
        assert empty.probability == pytest.approx(torch.sigmoid(loaded.model(torch.tensor([[1]]))).item(), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("cell", sorted(INDEX))
def test_released_checkpoint_matches_the_table_on_the_full_test_split(cell):
    """Not in CI: needs the full IMDB data (RNNSENT_DATA or the cache)."""
    from rnnsent.evaluate import evaluate

    loaded = rnnsent.load_checkpoint(CHECKPOINTS / INDEX[cell]["file"])
    data = loaded.prepare_data()
    assert evaluate(loaded.model, data.test)["accuracy"] == pytest.approx(INDEX[cell]["test_accuracy"], abs=1e-6)
