"""Starting a run from a trained model (--init-from): its shape, vocabulary and head, --extend-vocab, --freeze and
--unfreeze-after, exact resume, provenance, and every refusal in one line with nothing written."""
import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

import rnnsent
from rnnsent.cli import evaluate_main, train_main
from rnnsent.config import TrainConfig
from rnnsent.data import prepare_labelled, tokenize
from rnnsent.data.tabular import Columns, DataFileError
from rnnsent.data.text import tokenizer_for
from rnnsent.inference.loading import load_checkpoint
from rnnsent.model import fused
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state
from rnnsent.training.pretrain import pretrain
from rnnsent.training.trainer import Trainer, train
from helpers import assert_same_weights, interrupt_at, weights

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
LABELLED = ROOT / "tests" / "fixtures" / "labelled"
SMALL = dict(vocab_size=300, embed_dim=8, hidden_size=16, max_len=60, batch_size=4, threads=1, quiet=True,
             val_fraction=0.25)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A classifier trained on the IMDB fixture until it fits its training reviews (its last.pt: best.pt is the
    best of three validation reviews, often an early epoch): the model runs start from."""
    base = tmp_path_factory.mktemp("source")
    train(TrainConfig(**SMALL, cell="gru", epochs=8, lr=3e-2, data_root=str(FIXTURE), cache_dir=str(base / "cache"),
                      out=str(base / "src")))
    return base / "src" / "last.pt"


def fixture_rows() -> list[dict]:
    """The labelled fixture's reviews, every fourth training row made a validation row."""
    with open(LABELLED / "imdb.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        if r["split"] == "train" and i % 4 == 0:
            r["split"] = "val"
    return rows


def reviews_csv(path: Path, labels=("negative", "positive")) -> Path:
    """fixture_rows() as a CSV with a split column, the labels named `labels` (in neg, pos order)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for r in fixture_rows():
            w.writerow([r["text"], labels[["neg", "pos"].index(r["label"])], r["split"]])
    return path


def tuned(tmp_path, source, name="ft", data=None, **overrides) -> TrainConfig:
    """A run started from `source` on the labelled reviews: the shape settings left out, as a user leaves them."""
    values = dict(batch_size=4, threads=1, quiet=True, max_len=60, epochs=2, init_from=str(source),
                  data_root=str(data or reviews_csv(tmp_path / "reviews.csv")), split_column="split",
                  cache_dir=str(tmp_path / "cache"), out=str(tmp_path / name))
    return TrainConfig(**{**values, **overrides})


def test_the_shape_vocabulary_and_head_come_from_the_checkpoint(tmp_path, source):
    src = load_checkpoint(source)
    t = Trainer(tuned(tmp_path, source))
    assert (t.config.cell, t.config.embed_dim, t.config.hidden_size, t.config.vocab_size) == ("gru", 8, 16, 300)
    assert t.data.vocab == src.vocab and t.data.vocab.tokenizer == "rnnsent-v1"  # the checkpoint's, not v2
    # the data is encoded with the checkpoint's tokenizer and ids
    text = "This movie was a terrible waste of time."
    assert src.vocab.encode(tokenize(text)) == t.data.vocab.encode(tokenizer_for(t.data.vocab.tokenizer)(text))
    # the same labels in the same order: the whole model is the checkpoint's
    assert_same_weights({k: v.cpu() for k, v in t.model.state_dict().items()}, weights(source))
    assert t.init_from.head_kept and "its head kept" in t.init_from.head_note


@pytest.mark.parametrize("labels", [("neg", "pos"), ("bad", "good")])  # other names for the same two classes
def test_other_labels_get_a_new_head_said_with_both_label_sets(tmp_path, source, labels):
    t = Trainer(tuned(tmp_path, source, data=reviews_csv(tmp_path / "r.csv", labels)))
    ours = weights(source)
    assert not t.init_from.head_kept
    assert ", ".join(sorted(labels)) in t.init_from.head_note and "negative, positive" in t.init_from.head_note
    assert not torch.equal(t.model.fc.weight, ours["fc.weight"])
    assert torch.equal(t.model.rnn.weight_hh_l0, ours["rnn.weight_hh_l0"])  # the body is kept all the same


def test_more_classes_get_a_new_head_of_their_size(tmp_path, source):
    data = LABELLED / "debian_sections.csv"
    t = Trainer(tuned(tmp_path, source, data=data, split_column=None, text_column="description",
                      label_column="section", epochs=1))
    assert t.model.fc.weight.shape == (4, 16) and "admin, perl, python, science" in t.init_from.head_note
    t.fit()
    assert load_checkpoint(tmp_path / "ft").classes == ["admin", "perl", "python", "science"]


def test_a_words_embedding_row_follows_the_word_from_the_released_model(tmp_path):
    """The released gru (IMDB's vocabulary and tokenizer) on other data: every word the data's vocabulary shares
    with the checkpoint's has the checkpoint's embedding row, looked up by the word in each."""
    released = load_checkpoint("gru")
    t = Trainer(tuned(tmp_path, "gru", data=LABELLED / "debian_sections.csv", split_column=None,
                      text_column="description", label_column="section", extend_vocab=20))
    ids = {w: i for i, w in enumerate(t.data.vocab.itos)}
    src = {w: i for i, w in enumerate(released.vocab.itos)}
    shared = [w for w in ids if w in src and not w.startswith("<")]
    assert len(shared) > 4000
    for w in shared:
        assert torch.equal(t.model.embedding.weight[ids[w]], released.model.embedding.weight[src[w]]), w
    added = t.data.vocab.words[len(released.vocab.words):]
    assert len(added) == 20 and not any(w in src for w in added)
    assert t.config.vocab_size == 5020


def test_extend_vocab_adds_the_most_frequent_unknown_words_and_everything_reads_them(tmp_path, source):
    src = load_checkpoint(source)
    data = reviews_csv(tmp_path / "reviews.csv")
    t = Trainer(tuned(tmp_path, source, data=data, extend_vocab=5, epochs=1))
    added = t.data.vocab.words[len(src.vocab.words):]
    # the reference: the training rows' words the checkpoint does not know, counted here; ties by first appearance
    first, counts = {}, {}
    for r in fixture_rows():
        for w in tokenize(r["text"]):
            first.setdefault(w, len(first))
            if r["split"] == "train" and w not in src.vocab.words:
                counts[w] = counts.get(w, 0) + 1
    assert list(added) == sorted(counts, key=lambda w: (-counts[w], first[w]))[:5]
    assert t.data.vocab.words[:len(src.vocab.words)] == src.vocab.words
    fresh = Trainer(TrainConfig(**{**SMALL, "vocab_size": 305}, data_root=str(data), split_column="split",
                                cache_dir=str(tmp_path / "c2"), out=str(tmp_path / "fresh")))
    rows = slice(len(src.vocab), 305)
    assert torch.equal(t.model.embedding.weight[rows], fresh.model.embedding.weight[rows])  # fresh, as initialised
    t.fit()
    saved = load_checkpoint(tmp_path / "ft")
    assert saved.vocab == t.data.vocab and saved.model.vocab_size == 305
    word = added[0]
    assert saved.vocab.encode([word]) == [len(src.vocab)]
    text = f"{word} {word} and a great film"
    by_torch = load_checkpoint(tmp_path / "ft", impl="torch").predict([text])[0].probability
    assert saved.predict([text])[0].probability == pytest.approx(by_torch, abs=1e-6)  # the fused kernel's table too
    if fused.available():
        assert load_checkpoint(tmp_path / "ft", impl="fused").model.impl == "fused"


def test_frozen_weights_stay_bit_for_bit_and_unfreeze_after_their_epochs(tmp_path, source):
    start = weights(source)
    t = Trainer(tuned(tmp_path, source, name="body", freeze="body", epochs=2, lr=1e-2))
    t.fit()
    end = weights(tmp_path / "body" / "last.pt")
    for k in start:
        assert torch.equal(end[k], start[k]) == (not k.startswith("fc.")), k  # the head alone trained

    snapshots = []
    t = Trainer(tuned(tmp_path, source, name="gradual", freeze="body", unfreeze_after=1, epochs=3, lr=1e-2))
    t.add_callback("on_epoch_end", lambda t: snapshots.append({k: v.clone() for k, v in t.model.state_dict().items()}))
    t.fit()
    probe = {"embedding": "embedding.weight", "rnn": "rnn.weight_hh_l0", "fc": "fc.weight"}
    changed = [{m for m, k in probe.items() if not torch.equal(s[k].cpu(), start[k])} for s in snapshots]
    assert changed == [{"fc"}, {"fc", "rnn"}, {"fc", "rnn", "embedding"}]  # top first, one group an epoch


def test_a_fine_tuning_run_resumes_bit_for_bit(tmp_path, source):
    common = dict(freeze="body", unfreeze_after=1, extend_vocab=5, epochs=3, embed_dropout=0.2, seed=5,
                  body_lr_scale=0.5)
    Trainer(tuned(tmp_path, source, name="a", **common)).fit()
    first = Trainer(tuned(tmp_path, source, name="b", **common))
    stop_at = len(first.train_batches) + 1  # inside epoch 2, the recurrent layer just unfrozen
    interrupt_at(first, stop_at)
    moved = source.parent / "moved"
    source.rename(moved)  # a resumed run needs its own last.pt only
    try:
        Trainer(tuned(tmp_path, source, name="b", resume=str(tmp_path / "b" / "last.pt"), **common)).fit()
    finally:
        moved.rename(source)
    a, b = (load_checkpoint_state(tmp_path / n / "last.pt") for n in ("a", "b"))
    assert_same_weights(a["model_state"], b["model_state"])
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert a["optimizer"]["param_groups"][0]["lr_scale"] == 0.5 and a["vocab"] == b["vocab"]
    assert a["config"]["init_from_sha256"] == b["config"]["init_from_sha256"]


def test_fine_tuning_the_fixture_model_beats_training_from_scratch(tmp_path, source):
    """The same tiny run, the same epochs, on the fixture's reviews: started from the model trained on them (its
    weights, ids and head carried over), it fits them from the first step; from scratch it has only begun."""
    common = dict(batch_size=4, threads=1, quiet=True, max_len=60, epochs=2, val_fraction=0.25, data_root=str(FIXTURE),
                  cache_dir=str(tmp_path / "cache"))
    tuned_run = Trainer(TrainConfig(**common, init_from=str(source), out=str(tmp_path / "tuned")))
    tuned_run.fit()
    scratch = Trainer(TrainConfig(**common, **{k: SMALL[k] for k in ("vocab_size", "embed_dim", "hidden_size")},
                                  out=str(tmp_path / "scratch")))
    scratch.fit()
    for a, b in zip(tuned_run.history, scratch.history):
        assert a["train_loss"] < b["train_loss"] - 0.2 and a["train_accuracy"] > b["train_accuracy"], (a, b)


def test_a_language_model_gives_its_body_and_a_new_head(tmp_path):
    lm = pretrain(TrainConfig(**SMALL, epochs=1, data_root=str(FIXTURE),
                              cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "lm")))
    assert lm["task"] == "language_model"
    body = weights(tmp_path / "lm" / "best.pt")
    t = Trainer(tuned(tmp_path, tmp_path / "lm", data=LABELLED / "debian_sections.csv", split_column=None,
                      text_column="description", label_column="section", epochs=1))
    assert all(torch.equal(v.cpu(), body[k]) for k, v in t.model.state_dict().items() if k.startswith("rnn."))
    assert "a language model has none" in t.init_from.head_note
    t.fit()


def test_provenance_is_recorded_and_shown(tmp_path, source, capsys):
    data = reviews_csv(tmp_path / "reviews.csv")
    rnnsent.fine_tune(str(source), data=str(data), split_column="split", epochs=1, out=str(tmp_path / "ft"),
                      cache_dir=str(tmp_path / "cache"), quiet=True, threads=1, batch_size=4, max_len=60)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert (config["init_from"], config["init_from_sha256"]) == (str(source), digest)
    assert load_checkpoint(tmp_path / "ft").provenance == {"init_from": str(source), "sha256": digest}
    assert evaluate_main(["--checkpoint", str(tmp_path / "ft"), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["init_from"]["sha256"] == digest
    assert evaluate_main(["--checkpoint", str(tmp_path / "ft"), "--data", str(data)]) == 0
    assert f"started from: {source} (sha256 {digest})" in capsys.readouterr().out
    assert "fine_tune" in rnnsent.__all__
    # a checksum given beforehand must be the file's
    with pytest.raises(CheckpointError, match=f"has sha256 {digest}, not the 00ff"):
        Trainer(tuned(tmp_path, source, name="x", init_from_sha256="00ff"))


def test_the_model_endpoint_shows_where_training_started(tmp_path, source):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from test_serve import serve_in_process

    from rnnsent.serve import create_app

    train(tuned(tmp_path, source, epochs=1))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    async def scenario(client):
        return (await client.get("/v1/model")).json()

    info = serve_in_process(create_app(load_checkpoint(tmp_path / "ft")), scenario)
    assert info["init_from"] == {"init_from": source.name, "sha256": digest}  # no path of the training machine
    released = serve_in_process(create_app(load_checkpoint("gru")), scenario)
    assert released["init_from"] is None


def test_imdb_data_is_encoded_with_the_checkpoints_vocabulary_and_evaluates(tmp_path, source, capsys):
    """On IMDB (here its fixture) with another --limit, a plain run would build another vocabulary; a run started
    from the checkpoint keeps its own, and evaluate finds the data again with it."""
    config = TrainConfig(batch_size=4, threads=1, quiet=True, max_len=60, epochs=1, init_from=str(source),
                         data_root=str(FIXTURE), limit=8, val_fraction=0.25, cache_dir=str(tmp_path / "cache"),
                         out=str(tmp_path / "imdb"))
    t = Trainer(config)
    assert t.data.vocab == load_checkpoint(source).vocab
    t.fit()
    assert evaluate_main(["--checkpoint", str(tmp_path / "imdb"), "--data", str(FIXTURE), "--limit", "8",
                          "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 8


def test_the_given_vocabulary_reaches_prepare_labelled_and_its_cache_key(tmp_path, source):
    vocab = load_checkpoint(source).vocab
    data = reviews_csv(tmp_path / "reviews.csv")
    common = dict(columns=Columns(split="split"), vocab_size=300, max_len=60, cache_dir=tmp_path / "cache")
    own, given = prepare_labelled(data, **common), prepare_labelled(data, vocab=vocab, **common)
    assert own.vocab != vocab and given.vocab == vocab and own.meta["cache_file"] != given.meta["cache_file"]
    assert prepare_labelled(data, vocab=vocab, **common).meta["cache_hit"]
    assert any("does not know" in note for note in given.meta["notes"])
    extended = prepare_labelled(data, vocab=vocab, extend_vocab=3, **common)
    assert extended.meta["params"]["vocab_size"] == 303 and len(extended.vocab) == 303


def one_line(e) -> str:
    message = str(e.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, source):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    lm = tmp_path / "lm"
    pretrain(TrainConfig(**SMALL, epochs=1, data_root=str(FIXTURE), cache_dir=str(tmp_path / "cache"), out=str(lm)))
    nonsense = tmp_path / "nonsense.csv"
    nonsense.write_text("text,label\n" + "".join(f"qzx{i} vbq{i},{'ab'[i % 2]}\n" for i in range(40)))
    cases = [
        (dict(init_from=str(text)), CheckpointError, "--init-from .*notes.pt: .* is not a readable rnnsent checkpoint"),
        (dict(init_from="gru7"), CheckpointError, "--init-from gru7: checkpoint gru7 does not exist"),
        (dict(init_from=str(lm), freeze="head"), ValueError, "--freeze head: the language model .* has no classifier"),
        (dict(extend_vocab=10, vocab_size=400), ValueError, "--extend-vocab 10 sizes the vocabulary itself .* leave "
                                                            "out --vocab-size 400"),
        (dict(hidden_size=32), ValueError, "--hidden-size 32 contradicts --init-from .*, whose hidden_size is 16"),
        (dict(cell="lstm"), ValueError, "--cell 'lstm' contradicts --init-from .*, whose cell is 'gru'"),
        (dict(vocab_size=400), ValueError, "--vocab-size 400 contradicts --init-from .*, whose vocab_size is 300"),
        (dict(data=nonsense, split_column=None), DataFileError, "knows none of the training split's [0-9]+ tok"),
        (dict(freeze="head", data=None), ValueError, r"--freeze head: the data's labels \(neg, pos\) are not those"),
        (dict(unfreeze_after=1), ValueError, "--unfreeze-after 1 releases what --freeze holds"),
        (dict(init_from=None, freeze="body"), ValueError, "--freeze body keeps trained weights as they are"),
        (dict(init_from=None, extend_vocab=5), ValueError, "--extend-vocab 5 adds words .* needs --init-from"),
        (dict(pretrained=str(lm)), ValueError, "--pretrained .* and --init-from .*: give one"),
    ]
    for overrides, error, message in cases:
        if overrides.get("data", 1) is None:
            overrides["data"] = reviews_csv(tmp_path / "short.csv", ("neg", "pos"))
        with pytest.raises(error, match=message) as refused:
            train(tuned(tmp_path, source, name="refused", **overrides))
        one_line(refused)
        assert not (tmp_path / "refused").exists(), overrides


def test_the_command_line_refuses_in_one_line(tmp_path, source, capsys):
    data = reviews_csv(tmp_path / "reviews.csv")
    common = ["--data", str(data), "--split-column", "split", "--cache-dir", str(tmp_path / "cache"), "--quiet",
              "--out", str(tmp_path / "run"), "--init-from", str(source)]
    assert train_main([*common, "--hidden-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--hidden-size 32 contradicts" in err and "hidden_size is 16" in err
    assert not (tmp_path / "run").exists()
    assert train_main([*common, "--epochs", "1", "--freeze", "embedding", "--batch-size", "4", "--max-len", "60",
                       "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["negative", "positive"]


DDP_SCRIPT = """
import os, sys, torch
from rnnsent.config import TrainConfig
from rnnsent.training.trainer import Trainer
t = Trainer(TrainConfig(data_root=sys.argv[1], init_from=sys.argv[2], out=sys.argv[3], cache_dir=sys.argv[3] + "-cache",
                        max_len=60, batch_size=4, val_fraction=0.25, epochs=3, threads=1, lr=1e-2, quiet=True,
                        freeze="body", unfreeze_after=1))
t.add_callback("on_epoch_end", lambda t: torch.save({k: v.detach().clone() for k, v in t.model.state_dict().items()},
                                                    f"{sys.argv[3]}-rank{os.environ['RANK']}-epoch{t.epoch}.pt"))
t.fit()
"""


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="no gloo backend")
def test_under_torchrun_what_unfreezes_trains_alike_on_every_rank(tmp_path, source):
    """Unfreezing wraps the model in DDP again, so the weights that start training have their gradients averaged
    too: both processes hold the same weights after every epoch."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(FIXTURE), str(source), str(tmp_path / "run")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = weights(source)
    for epoch, moved in ((1, {"fc"}), (2, {"fc", "rnn"}), (3, {"fc", "rnn", "embedding"})):
        ranks = [torch.load(tmp_path / f"run-rank{r}-epoch{epoch}.pt") for r in (0, 1)]
        assert_same_weights(*ranks)
        assert {k.split(".")[0] for k in start if not torch.equal(ranks[0][k], start[k])} == moved, epoch


def test_data_prepared_in_python_must_carry_the_checkpoints_vocabulary(tmp_path, source):
    rows = [r for r in fixture_rows() if r["split"] != "test"]
    texts, labels = [r["text"] for r in rows], [{"neg": "negative", "pos": "positive"}[r["label"]] for r in rows]
    config = TrainConfig(init_from=str(source), max_len=60, batch_size=4, threads=1, quiet=True, epochs=1,
                         out=str(tmp_path / "run"))
    given = rnnsent.prepare_texts(texts, labels, vocab=load_checkpoint(source).vocab, vocab_size=300, max_len=60,
                                  val_fraction=0.25)
    t = Trainer(config, given)
    assert t.init_from.head_kept and t.config.vocab_size == 300
    with pytest.raises(ValueError, match="prepared with its own vocabulary") as refused:
        Trainer(config, rnnsent.prepare_texts(texts, labels, vocab_size=300, max_len=60, val_fraction=0.25))
    one_line(refused)
