"""Imbalanced classes: class weights that weigh the loss exactly as PyTorch's own losses do, balanced batches
whose order is a function of (seed, epoch) (so resume stays bit for bit), the named positive class, and the
decision threshold (tuned on validation, stored in best.pt, used by predict, evaluate, serve and ONNX)."""
import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from rnnsent import cli
from rnnsent.config import TrainConfig
from rnnsent.data import Batcher, encode_bucketed, encode_keras
from rnnsent.inference.evaluate import confusion_counts, evaluate, positive_class, scores
from rnnsent.inference.loading import load_checkpoint
from rnnsent.model import objective
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state, save_checkpoint
from rnnsent.training.classification import (Classification, best_threshold, class_weights,
                                             validation_probabilities)
from rnnsent.training.pretrain import LanguageModelling
from rnnsent.training.trainer import Trainer
from helpers import assert_same_weights, interrupt_at, weights

LABELLED = Path(__file__).parent / "fixtures" / "labelled"
TINY = dict(cell="gru", vocab_size=300, embed_dim=8, hidden_size=6, max_len=60, epochs=2, batch_size=4, quiet=True,
            split_column="split", threads=1)


def tickets(path: Path) -> Path:
    """72 real texts as an imbalanced two-class set: 8 negative IMDB reviews are "complaint", 64 other texts
    (positive reviews, the other negative ones, Debian package descriptions) "ok"; complaints are 4 of the 52
    training rows (7.7%), 2 of the 10 validation and 2 of the 10 test rows."""
    reviews = list(csv.DictReader(open(LABELLED / "imdb.csv", newline="")))
    debian = [r["description"] for r in csv.DictReader(open(LABELLED / "debian_sections.csv", newline=""))]
    negative = [r["text"] for r in reviews if r["label"] == "neg"]
    ok = [r["text"] for r in reviews if r["label"] == "pos"] + negative[8:] + debian
    rows = [(t, "complaint", ("train",) * 4 + ("val",) * 2 + ("test",) * 2) for t in negative[:8]]
    rows = [(t, label, splits[i]) for i, (t, label, splits) in enumerate(rows)]
    rows += [(t, "ok", "train" if i % 8 < 6 else "val" if i % 8 == 6 else "test") for i, t in enumerate(ok)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label", "split"), *rows])
    return path


def config(tmp_path: Path, **overrides) -> TrainConfig:
    data = tmp_path / "tickets.csv"
    if not data.exists():
        tickets(data)
    return TrainConfig(**{**TINY, "data_root": str(data), "cache_dir": str(tmp_path / "cache"),
                          "out": str(tmp_path / "run"), **overrides})


# -- the loss ----------------------------------------------------------------------------------------------------

def test_class_weights_weigh_the_loss_as_cross_entropy_does():
    torch.manual_seed(0)
    w = torch.tensor([0.3, 2.5, 1.0, 7.0])
    logits, y = torch.randn(33, 4, requires_grad=True), torch.randint(0, 4, (33,))
    for reduction in ("mean", "sum", "none"):
        ours = objective.loss(logits, y.float(), reduction=reduction, weight=w)
        theirs = nn.CrossEntropyLoss(weight=w, reduction=reduction)(logits, y)
        torch.testing.assert_close(ours, theirs)
    ours_grad, = torch.autograd.grad(objective.loss(logits, y.float(), weight=w), logits)
    theirs_grad, = torch.autograd.grad(nn.CrossEntropyLoss(weight=w)(logits, y), logits)
    torch.testing.assert_close(ours_grad, theirs_grad)


def test_two_classes_weigh_the_loss_as_cross_entropy_and_weighted_bce_do():
    """The one logit l is the softmax over [0, l]: weighting by class means the same as for K classes, which is
    BCEWithLogitsLoss with each row weighted by its class, summed and divided by the weights' sum."""
    torch.manual_seed(1)
    w = torch.tensor([0.55, 6.5])
    logit, y = torch.randn(40, requires_grad=True), torch.randint(0, 2, (40,))
    two = torch.stack([torch.zeros(40), logit], dim=1)  # (B, 2)
    ours = objective.loss(logit, y.float(), weight=w)
    torch.testing.assert_close(ours, nn.CrossEntropyLoss(weight=w)(two, y))
    torch.testing.assert_close(ours, nn.BCEWithLogitsLoss(weight=w[y], reduction="sum")(logit, y.float()) / w[y].sum())
    torch.testing.assert_close(objective.loss(logit, y.float(), reduction="sum", weight=w),
                               nn.CrossEntropyLoss(weight=w, reduction="sum")(two, y))
    torch.testing.assert_close(objective.loss(logit, y.float(), reduction="none", weight=w),
                               nn.CrossEntropyLoss(weight=w, reduction="none")(two, y))
    ours_grad, = torch.autograd.grad(ours, logit)
    theirs_grad, = torch.autograd.grad(nn.CrossEntropyLoss(weight=w)(two, y), logit)
    torch.testing.assert_close(ours_grad, theirs_grad)
    # with smoothing: the smoothed targets, each row weighted by its class
    torch.testing.assert_close(objective.loss(logit, y.float(), smoothing=0.2, weight=w),
                               nn.BCEWithLogitsLoss(weight=w[y], reduction="sum")(logit, y * 0.8 + 0.1) / w[y].sum())
    assert torch.equal(objective.loss(logit, y.float()), objective.loss(logit, y.float(), weight=None))


def test_balanced_weights_are_scikit_learns_and_named_ones_default_to_one():
    sklearn_utils = pytest.importorskip("sklearn.utils")
    labels = [0] * 48 + [1] * 4 + [2] * 9
    counts = [labels.count(c) for c in range(3)]
    reference = sklearn_utils.compute_class_weight("balanced", classes=torch.arange(3).numpy(), y=labels)
    assert class_weights("balanced", ["ok", "complaint", "spam"], counts) == pytest.approx(reference.tolist())
    assert class_weights("complaint=5, spam=2.5", ["ok", "complaint", "spam"], counts) == [1.0, 5.0, 2.5]
    assert class_weights("none", ["ok", "complaint"], [3, 1]) is None
    with pytest.raises(ValueError, match="^class_weight names 'spma', which is not one of the classes "
                                         r"\(ok, complaint, spam\)$"):
        class_weights("spma=2", ["ok", "complaint", "spam"], counts)
    with pytest.raises(ValueError, match="^class_weight balanced: class 'spam' has no training rows$"):
        class_weights("balanced", ["ok", "complaint", "spam"], [3, 1, 0])


def test_the_run_trains_on_the_weighted_loss(tmp_path):
    t = Trainer(config(tmp_path, class_weight="complaint=5"))
    assert t.task.loss_weights(t).tolist() == [5.0, 1.0]  # classes in sorted order: complaint, ok
    x, lengths, y = next(t.train_batches.iterate(0))
    with torch.no_grad():
        logits = t.model(x, lengths)
    reference = nn.CrossEntropyLoss(weight=torch.tensor([5.0, 1.0]))(torch.stack([torch.zeros_like(logits), logits], 1),
                                                                        y.long())
    loss, _ = t.task.forward_backward(t, t.train_model, x, lengths, y)
    torch.testing.assert_close(loss, reference)


# -- the balanced sampler ----------------------------------------------------------------------------------------

def split_of(labels: list[int], encoding: str = "bucketed"):
    ids = [[4 + i % 7] * (1 + (i * 37) % 29) for i in range(len(labels))]  # lengths 1..29
    return (encode_bucketed if encoding == "bucketed" else encode_keras)(ids, labels, 40)


@pytest.mark.parametrize("encoding, bucket", [("bucketed", True), ("bucketed", False), ("keras", False)])
def test_balanced_batches_hold_every_class_in_equal_shares(encoding, bucket):
    labels = [0] * 190 + [1] * 10 + [2] * 3
    split = split_of(labels, encoding)
    batcher = Batcher(split, batch_size=16, seed=3, bucket=bucket, balanced=True)
    plain = Batcher(split, batch_size=16, seed=3, bucket=bucket)
    assert len(batcher) == len(plain) and batcher.num_samples == plain.num_samples  # the same epoch, reshuffled
    for epoch in (0, 1):
        batches = batcher.batches(epoch)
        assert sorted(len(b) for b in batches) == sorted(len(b) for b in plain.batches(epoch))
        for b in batches:
            shares = torch.bincount(split.labels[b].long(), minlength=3)
            assert int(shares.max() - shares.min()) <= 1, shares
        seen = torch.bincount(torch.cat(batches), minlength=len(labels))
        assert (seen[190:] > 0).all(), "every rare row is drawn"
        assert int(seen[200:].max() - seen[200:].min()) <= 1 and int(seen[190:200].max() - seen[190:200].min()) <= 1
        assert int(seen[:190].max()) == 1, "the common class is sampled, no row twice"
    for x, lengths, y in batcher.iterate(0):  # the batches read as the plain ones do
        assert x.shape[0] == y.shape[0] and (encoding == "keras" or x.shape[1] == int(lengths.max()))


def test_balanced_order_is_a_function_of_seed_and_epoch():
    split = split_of([0] * 60 + [1] * 5)
    a, b = (Batcher(split, batch_size=8, seed=5, bucket=True, balanced=True) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.batches(2), b.batches(2)))
    assert not all(torch.equal(x, y) for x, y in zip(a.batches(2), a.batches(3)))
    other = Batcher(split, batch_size=8, seed=6, bucket=True, balanced=True)
    assert not all(torch.equal(x, y) for x, y in zip(a.batches(2), other.batches(2)))
    with pytest.raises(ValueError, match="balanced=True needs shuffle=True"):
        Batcher(split, batch_size=8, shuffle=False, balanced=True)


def test_a_balanced_run_resumed_equals_an_uninterrupted_one(tmp_path):
    common = dict(sampler="balanced", epochs=3, embed_dropout=0.2, seed=4)
    Trainer(config(tmp_path / "a", **common)).fit()
    reference = weights(tmp_path / "a" / "run" / "last.pt")
    first = Trainer(config(tmp_path / "b", **common))
    stop_at = len(first.train_batches) + 3  # inside epoch 2
    interrupt_at(first, stop_at)
    last = tmp_path / "b" / "run" / "last.pt"
    Trainer(config(tmp_path / "b", resume=str(last), **common)).fit()
    assert_same_weights(weights(last), reference)
    plain = Trainer(config(tmp_path / "c", epochs=3, embed_dropout=0.2, seed=4))
    plain.fit()
    with pytest.raises(AssertionError):
        assert_same_weights(weights(tmp_path / "c" / "run" / "last.pt"), reference)  # the sampler changed training


# -- the positive class and the threshold ------------------------------------------------------------------------

def test_the_positive_class_is_named_or_the_second():
    assert positive_class(["complaint", "ok"]) == 1 and positive_class(["complaint", "ok"], "complaint") == 0
    assert positive_class(None) == 1 and positive_class(None, "negative") == 0  # IMDB's
    assert positive_class([0, 1], 1) == 1 and positive_class(["a", "b", "c"]) is None
    with pytest.raises(ValueError, match=r"^positive_label 'spam' is not one of the classes \(complaint, ok\)$"):
        positive_class(["complaint", "ok"], "spam")
    with pytest.raises(ValueError, match=r"^positive_label names one of two classes; the data has 3 \(a, b, c\)$"):
        positive_class(["a", "b", "c"], "a")
    confusion = [[3, 1], [4, 40]]  # rows true, columns predicted: 3 of 4 complaints found
    assert confusion_counts(confusion, 0) == {"tp": 3, "fp": 4, "tn": 40, "fn": 1}
    assert scores(0.0, confusion)["tp"] == 40 and scores(0.0, confusion, positive=0)["tp"] == 3


def test_the_tuned_threshold_has_scikit_learns_best_f1():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for n, rounding in ((50, None), (200, 10), (7, 4)):  # rounding: ties
        y = torch.rand(n, generator=g) < 0.2
        y[0] = True
        p = (torch.rand(n, generator=g) * 0.6 + 0.4 * y).clamp(0, 1)
        p = p if rounding is None else (p * rounding).round() / rounding
        threshold, f1 = best_threshold(p, y)
        precision, recall, _ = metrics.precision_recall_curve(y.numpy(), p.numpy())
        best = max(2 * a * b / (a + b) if a + b else 0.0 for a, b in zip(precision, recall))
        assert f1 == pytest.approx(best) and 0 < threshold < 1
        assert metrics.f1_score(y.numpy(), (p >= threshold).numpy()) == pytest.approx(best)
    with pytest.raises(ValueError):
        best_threshold(torch.tensor([0.2, 0.7]), torch.tensor([False, False]))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A run on the imbalanced tickets with complaint as the positive class, balanced weights, threshold auto."""
    base = tmp_path_factory.mktemp("tuned")
    t = Trainer(config(base, positive_label="complaint", class_weight="balanced", threshold="auto", lr=1e-2, epochs=3))
    return t, t.fit(), base / "run"


def test_the_threshold_is_tuned_on_validation_stored_and_reported(tuned):
    metrics = pytest.importorskip("sklearn.metrics")
    t, report, run = tuned
    stored = load_checkpoint_state(run / "best.pt")["threshold"]
    loaded = load_checkpoint(run)
    assert loaded.threshold == stored and 0 < stored < 1 and loaded.positive == 0
    assert loaded.positive_label == "complaint" and report["positive_label"] == "complaint"
    assert report["threshold"] == stored
    # on best.pt's validation predictions no threshold has a better F1 of complaint
    p, y = validation_probabilities(loaded.model, t.data.val, 0, 512, "cpu")
    precision, recall, _ = metrics.precision_recall_curve((y == 0).numpy(), p.numpy())
    best = max(2 * a * b / (a + b) if a + b else 0.0 for a, b in zip(precision, recall))
    assert metrics.f1_score((y == 0).numpy(), (p >= stored).numpy()) == pytest.approx(best)
    # the report's test counts are the stored rule's, about complaint
    test = evaluate(loaded.model, t.data.test, **loaded.decision())
    assert report["confusion"] == {k: test[k] for k in ("tp", "fp", "tn", "fn")}
    assert test["tp"] + test["fn"] == 2, "two complaints in the test split"
    assert "positive: complaint, threshold" in (run / "summary.txt").read_text()


def test_predict_and_the_command_lines_use_the_stored_threshold(tuned, capsys):
    _, _, run = tuned
    loaded = load_checkpoint(run)
    texts = [r["text"] for r in csv.DictReader(open(LABELLED / "imdb.csv", newline=""))]
    answers = loaded.predict(texts)
    for p in answers:  # probability is the positive class's; the label follows the stored threshold
        assert p.probability == p.probabilities["complaint"]
        assert p.label == ("complaint" if p.probability >= loaded.threshold else "ok")
    at_half = [("complaint" if p.probability >= 0.5 else "ok") for p in answers]
    assert [p.label for p in answers] != at_half, "the tuned threshold decides some texts otherwise than 0.5"
    assert cli.predict_main(["--checkpoint", str(run), "--json", *texts[:6]]) == 0
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] == [
        p.label for p in answers[:6]]
    assert cli.evaluate_main(["--checkpoint", str(run), "--data", str(run.parent / "tickets.csv"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    from rnnsent.inference.heldout import held_out

    split = held_out(loaded, str(run), data=run.parent / "tickets.csv").split  # the run's own test rows
    assert got["confusion_matrix"] == evaluate(loaded.model, split, **loaded.decision())["confusion_matrix"]
    complaints = loaded.classes.index("complaint")
    assert got["tp"] + got["fn"] == int((split.labels == complaints).sum()), "tp and fn count the complaints"


def test_serve_shows_and_uses_the_threshold(tuned):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from test_serve import serve_in_process

    from rnnsent.serve import create_app

    loaded = load_checkpoint(tuned[2])
    texts = [r["text"] for r in csv.DictReader(open(LABELLED / "imdb.csv", newline=""))]

    async def scenario(client: httpx.AsyncClient):
        info = (await client.get("/v1/model")).json()
        answers = (await client.post("/v1/predict", json={"texts": texts})).json()["results"]
        return info, answers

    info, answers = serve_in_process(create_app(loaded), scenario)
    assert info["threshold"] == loaded.threshold and info["positive_label"] == "complaint"
    assert [a["label"] for a in answers] == [p.label for p in loaded.predict(texts)]


def test_the_onnx_export_carries_the_threshold(tuned, tmp_path):
    pytest.importorskip("onnxruntime")
    from rnnsent.inference.export import OnnxPredictor, export, tokenizer_path_for

    loaded = load_checkpoint(tuned[2])
    export(loaded, tmp_path / "m.onnx")
    spec = json.loads(tokenizer_path_for(tmp_path / "m.onnx").read_text())
    assert spec["threshold"] == loaded.threshold and spec["positive_label"] == "complaint"
    texts = [r["text"] for r in csv.DictReader(open(LABELLED / "imdb.csv", newline=""))]
    onnx = OnnxPredictor(tmp_path / "m.onnx")
    assert onnx.threshold == loaded.threshold
    assert [p.label for p in onnx.predict(texts)] == [p.label for p in loaded.predict(texts)]


def test_models_without_a_threshold_answer_as_before(tmp_path):
    released = load_checkpoint("gru")
    assert released.threshold == 0.5 and released.positive == 1 and released.positive_label == "positive"
    state = load_checkpoint_state(released.path)
    for bad in (1.5, "0.3; rm", float("nan"), True, [0.3], torch.tensor([0.2, 0.3])):
        path = save_checkpoint(tmp_path / "bad.pt", {**state, "threshold": bad})
        with pytest.raises(CheckpointError, match="unusable decision rule: threshold must be auto or a number") as e:
            load_checkpoint(path)
        assert "\n" not in str(e.value)
    path = save_checkpoint(tmp_path / "label.pt", {**state, "config": {**state["config"], "positive_label": "meh"}})
    with pytest.raises(CheckpointError, match=r"positive_label 'meh' is not one of the classes"):
        load_checkpoint(path)


# -- what the run says, and what it refuses ----------------------------------------------------------------------

def test_a_rare_class_is_pointed_out_and_a_one_class_model_is_said(tmp_path, capsys):
    t = Trainer(config(tmp_path, quiet=False, epochs=1, lr=1e-7))
    with torch.no_grad():
        t.model.fc.bias.fill_(10.0)  # a model that answers ok (class 1) whatever it reads
    t.fit()
    err = capsys.readouterr().err
    assert ("class complaint is 7.7% of the training rows: consider --class-weight balanced or --sampler balanced, "
            "and --monitor macro_f1") in err
    assert "; every validation prediction is ok" in err, "a model that answers ok to everything is said"
    Trainer(config(tmp_path, quiet=False, epochs=1, class_weight="balanced", overwrite=True)).fit()
    err = capsys.readouterr().err
    assert "consider --class-weight" not in err and "class weights: complaint 6.5, ok 0.5417" in err


DEBIAN = ["--data", LABELLED / "debian_sections.csv", "--text-column", "description", "--label-column", "section"]


@pytest.mark.parametrize("flags, message", [
    (["--class-weight", "spam=2"], "class_weight names 'spam', which is not one of the classes (complaint, ok)"),
    (["--class-weight", "ok=0"], "argument --class-weight: class_weight must be none, balanced or LABEL=WEIGHT,... "
                                 "with every weight a positive number, got 'ok=0'"),
    (["--class-weight", "ok=-1"], "got 'ok=-1'"),
    (["--threshold", "1.2"], "threshold must be auto or a number between 0 and 1 (both excluded), got '1.2'"),
    (["--threshold", "0"], "got '0'"),
    (["--positive-label", "spam"], "positive_label 'spam' is not one of the classes (complaint, ok)"),
    (["--threshold", "auto", *DEBIAN], "threshold auto needs two classes; the data has 4 (admin, perl, python, "
                                       "science)"),
    (["--positive-label", "perl", *DEBIAN], "positive_label names one of two classes; the data has 4"),
])
def test_bad_imbalance_settings_are_one_line_and_write_no_run(tmp_path, capsys, flags, message):
    data = ["--data", tickets(tmp_path / "tickets.csv"), "--split-column", "split"] if "--data" not in flags else []
    argv = [*data, *flags, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "--epochs", "1", "--quiet",
            "--threads", "1"]
    try:
        code = cli.train_main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's refusal of a flag
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    assert message in err.splitlines()[-1] and err.splitlines()[-1].startswith(("error: ", "train.py: error: ")), err
    assert not (tmp_path / "run").exists()


def test_pretraining_refuses_the_classifiers_imbalance_settings():
    for setting in (dict(class_weight="balanced"), dict(sampler="balanced"), dict(threshold="auto"),
                    dict(positive_label="pos")):
        with pytest.raises(ValueError, match="apply to fine-tuning"):
            LanguageModelling().settings(TrainConfig(**setting))
    assert Classification().settings(TrainConfig(threshold=0.25)).threshold == "0.25"
