"""Training-only regularisers: label smoothing, the weight average (--ema), adversarial embeddings."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rnnsent.model import objective
from rnnsent.storage.checkpoint import load_checkpoint_state
from rnnsent.inference.evaluate import evaluate
from rnnsent.model.sentiment import SentimentRNN
from rnnsent.training.regularise import EmbeddingPerturbation, WeightAverage
from rnnsent.config import TrainConfig
from rnnsent.training.trainer import Trainer
from helpers import assert_same_weights, interrupt_at, weights

FIXTURE = Path(__file__).parent / "fixtures" / "imdb" / "reviews.json"


def tiny(tmp_path, **overrides) -> TrainConfig:
    values = dict(cell="gru", vocab_size=300, embed_dim=8, hidden_size=6, max_len=60, epochs=2, batch_size=4,
                  data_root=str(FIXTURE), cache_dir=str(tmp_path / "cache"),
                  out=str(tmp_path / "run"), quiet=True, val_fraction=0.25, threads=1)
    return TrainConfig(**{**values, **overrides})


def test_label_smoothing_is_the_cross_entropy_against_softened_targets():
    torch.manual_seed(0)
    logits, y = torch.randn(7), torch.tensor([0., 1., 1., 0., 1., 0., 1.])
    p, t = torch.sigmoid(logits), y * 0.8 + 0.1  # s = 0.2: targets 0.1 and 0.9
    manual = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert objective.loss(logits, y, smoothing=0.2).item() == pytest.approx(manual.item(), rel=1e-6)
    assert objective.loss(logits, y, smoothing=0.0).item() == pytest.approx(
        F.binary_cross_entropy(p, y).item(), rel=1e-6
    )
    k_logits, k_y = torch.randn(5, 3), torch.tensor([0., 2., 1., 1., 0.])
    soft = F.one_hot(k_y.long(), 3).float() * 0.7 + 0.3 / 3
    manual = -(soft * k_logits.log_softmax(-1)).sum(-1).mean()
    assert objective.loss(k_logits, k_y, smoothing=0.3).item() == pytest.approx(manual.item(), rel=1e-6)


def test_weight_average_follows_its_formula_and_swaps_back_bit_for_bit():
    torch.manual_seed(0)
    model = SentimentRNN("lstm", vocab_size=20, embed_dim=3, hidden_size=4)
    avg = WeightAverage(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(25):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.9, (1 + n) / (10 + n))
        expected = {k: d * expected[k] + (1 - d) * v for k, v in model.state_dict().items()}
        avg.update(model)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with avg.swapped(model):
        for k, v in model.state_dict().items():
            assert torch.allclose(v, expected[k], atol=1e-6), k
    assert_same_weights(model.state_dict(), live)
    restored = WeightAverage(model, decay=0.9)
    restored.load_state_dict(avg.state_dict())
    assert restored.updates == 25 and all(torch.equal(restored.shadow[k], avg.shadow[k]) for k in avg.shadow)
    with pytest.raises(ValueError, match="another model"):
        WeightAverage(SentimentRNN("gru", vocab_size=20, embed_dim=3, hidden_size=4), 0.9).load_state_dict(
            avg.state_dict()
        )


def test_with_ema_the_validated_best_and_tested_weights_are_the_average(tmp_path):
    trainer = Trainer(tiny(tmp_path, ema=0.9, epochs=2))
    snapshots = []
    trainer.add_callback("on_epoch_end", lambda t: snapshots.append({k: v.clone() for k, v in t.ema.shadow.items()}))
    report = trainer.fit()
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(range(2), key=lambda i: (rows[i]["val_accuracy"], -i))  # the first best is kept
    best = weights(run / "best.pt")
    assert_same_weights(best, {k: v for k, v in snapshots[best_epoch].items()})
    last = load_checkpoint_state(run / "last.pt")
    with pytest.raises(AssertionError):
        assert_same_weights(last["model_state"], snapshots[-1])  # last.pt keeps the live weights to resume ...
    assert_same_weights(last["ema"]["shadow"], snapshots[-1])  # ... and the average beside them
    model = SentimentRNN(**trainer.config.model_args())
    model.load_state_dict(snapshots[-1])
    assert rows[-1]["val_loss"] == pytest.approx(evaluate(model, trainer.data.val)["loss"], rel=1e-5)
    model.load_state_dict(best)
    assert report["test_accuracy"] == pytest.approx(evaluate(model, trainer.data.test)["accuracy"])


def test_ema_and_adversarial_runs_resume_bit_for_bit(tmp_path):
    common = dict(epochs=2, ema=0.95, adversarial=0.5, label_smoothing=0.1, embed_dropout=0.2, word_dropout=0.1, seed=3)
    Trainer(tiny(tmp_path / "a", **common)).fit()
    first = Trainer(tiny(tmp_path / "b", **common))
    interrupt_at(first, 4)
    last = tmp_path / "b" / "run" / "last.pt"
    Trainer(tiny(tmp_path / "b", resume=str(last), **common)).fit()
    a, b = load_checkpoint_state(tmp_path / "a" / "run" / "last.pt"), load_checkpoint_state(last)
    assert_same_weights(a["model_state"], b["model_state"])
    assert_same_weights(a["ema"]["shadow"], b["ema"]["shadow"])
    assert_same_weights(weights(tmp_path / "a" / "run" / "best.pt"), weights(tmp_path / "b" / "run" / "best.pt"))


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_adversarial_step_has_the_gradient_of_clean_plus_perturbed_loss(tmp_path, impl):
    """The trainer's two passes against a direct computation: r = eps * ||e|| * g / ||g|| per review, where
    g is d loss / d embedded review e (||e|| over its words only), and the gradient of loss(x) + loss(e + r)."""
    # rows of many lengths
    trainer = Trainer(tiny(tmp_path, adversarial=0.7, rnn_impl=impl, label_smoothing=0.1, max_len=400))
    x, lengths, y = next(iter(trainer.train_batches.iterate(0)))
    model = trainer.model
    loss, correct = trainer.task.forward_backward(trainer, model, x, lengths, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    reference = SentimentRNN(**trainer.config.model_args(), impl="torch")
    reference.load_state_dict(model.state_dict())
    embedded = reference.embedding(x).detach().requires_grad_(True)

    def run(e):
        out, _ = reference.rnn(e)
        last = out.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.size(-1))).squeeze(1)
        return objective.loss(reference.fc(last).squeeze(-1), y, smoothing=0.1)

    g, = torch.autograd.grad(run(embedded), embedded)
    size = torch.stack([embedded[b, : lengths[b]].norm() for b in range(len(lengths))])  # right-padded rows
    assert size.min() > 0 and (lengths < x.size(1)).any()  # some rows have padding to leave out
    r = 0.7 * (size / g.flatten(1).norm(dim=1)).view(-1, 1, 1) * g
    clean = run(reference.embedding(x))
    (clean + run(reference.embedding(x) + r)).backward()
    assert loss.item() == pytest.approx(clean.item(), rel=1e-5)
    assert correct.item() == (objective.predicted(reference(x, lengths)) == y.long()).sum().item()
    for n, p in reference.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-6), n
    assert not model.embedding._forward_hooks, "the hook is removed after the step"


def test_perturbation_refuses_to_aim_without_a_gradient():
    with EmbeddingPerturbation(torch.nn.Embedding(5, 2)) as perturb, pytest.raises(RuntimeError, match="backward"):
        perturb.aim(1.0)


@pytest.mark.parametrize(
    "flag, value, message",
    [("ema", 1.0, "ema must be in"), ("adversarial", -1.0, "adversarial must be"),
     ("label_smoothing", 1.0, "label_smoothing must be")],
)
def test_bad_settings_are_refused(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **{flag: value})
