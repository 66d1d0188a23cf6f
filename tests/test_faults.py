"""Faults of real use, one numbered section each, one or more tests per section: nothing lost, nothing silently
wrong, forged or hostile files bounded, and every refusal one line."""
from __future__ import annotations

import codecs
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnsent
from rnnsent.inference.loading import load_checkpoint
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state, save_checkpoint
from rnnsent.cli import train_main
from rnnsent.config import TrainConfig
from rnnsent.data import DataFileError, Vocab, prepare_imdb, prepare_labelled, prepare_texts
from rnnsent.data.tabular import Columns, read_rows
from rnnsent.model.sentiment import SentimentRNN

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
LABELLED = ROOT / "tests" / "fixtures" / "labelled"
TINY = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8", "--hidden-size", "6", "--max-len", "60",
        "--batch-size", "4", "--threads", "1", "--quiet", "--epochs", "1"]
SMALL = dict(vocab_size=300, max_len=60, use_cache=False)
WORDS = {"pos": "good fine great lovely superb", "neg": "bad awful poor dire grim"}


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def write_csv(path: Path, rows, header="text,label", sep=","):
    path.write_text(header.replace(",", sep) + "\n" + "".join(f"{t}{sep}{y}\n" for t, y in rows))
    return path


def class_folder(root: Path, per_class: int = 12) -> Path:
    for label, words in WORDS.items():
        (root / "train" / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / "train" / label / f"{i:03d}.txt").write_text(f"{words} number {i}")
    return root


# 1. A run folder that holds a run is never overwritten unless the user says so ---------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("finished")
    assert train_main([*TINY, "--out", str(base / "run"), "--cache-dir", str(base / "cache")]) == 0
    return base


def test_1_a_new_run_into_a_finished_run_folder_is_refused_and_touches_nothing(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    before = snapshot(run)
    assert train_main([*TINY, "--out", str(run), "--cache-dir", str(finished / "cache"), "--limit", "20"]) == 2
    err = one_line(capsys)
    assert f"run folder {run} already holds a run (best.pt" in err
    assert "--resume auto" in err and "--overwrite" in err and "another --out" in err
    assert snapshot(run) == before


def test_1_overwrite_replaces_the_run_without_mixing_the_two(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    (run / "last.prev.pt").write_bytes((run / "last.pt").read_bytes())  # as an interrupted run leaves it
    (run / "notes.md").write_text("mine")
    assert (
        train_main([*TINY, "--out", str(run), "--cache-dir", str(finished / "cache"), "--seed", "5", "--overwrite"])
        == 0
    )
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1, "metrics.jsonl holds the new run only"
    assert not (run / "last.prev.pt").exists(), "nothing of the earlier run is left to be mistaken for this one's"
    assert load_checkpoint_state(run / "best.pt")["config"]["seed"] == 5
    assert (run / "notes.md").read_text() == "mine", "files that are not a run's are never touched"


def test_1_out_dot_never_overwrites_the_users_own_config_json(finished, tmp_path, capsys, monkeypatch):
    (tmp_path / "config.json").write_text('{"my": "settings"}\n')
    (tmp_path / "summary.txt").write_text("my summary\n")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert train_main([*TINY, "--out", ".", "--cache-dir", str(finished / "cache")]) == 2
    assert "already holds summary.txt, config.json, which a run would write over" in one_line(capsys)
    assert snapshot(tmp_path) == before


def test_1_resuming_a_checkpoint_of_another_folder_into_a_run_folder_is_refused(finished, tmp_path, capsys):
    import shutil

    shutil.copytree(finished / "run", tmp_path / "a")
    shutil.copytree(finished / "run", tmp_path / "b")
    before = snapshot(tmp_path / "b")
    assert train_main([*TINY, "--out", str(tmp_path / "b"), "--cache-dir", str(finished / "cache"), "--epochs", "2",
                       "--resume", str(tmp_path / "a" / "last.pt")]) == 2
    assert "already holds another run" in one_line(capsys)
    assert snapshot(tmp_path / "b") == before


# 2. --limit on your own data keeps the class mix ----------------------------------------------------------------
def test_2_limit_on_a_class_folder_keeps_every_class_in_every_split(tmp_path):
    root = class_folder(tmp_path / "data", per_class=30)
    data = prepare_labelled(root, limit=20, val_fraction=0.25, **SMALL)
    for split in ("train", "val", "test"):
        labels = getattr(data, split).labels
        assert 0 < int(labels.sum()) < len(labels), f"{split} holds one class only: {labels.tolist()}"
    again = prepare_labelled(root, limit=20, val_fraction=0.25, **SMALL)
    assert torch.equal(again.train.tokens, data.train.tokens), "the sample is seeded"


# 3. A stray quote must not merge rows ---------------------------------------------------------------------------
def stray_quote_rows():
    rows = [(f"review number {i} is {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg") for i in range(40)]
    rows[4] = ('"Airplane is a classic', "pos")  # opens a quote that the csv module reads on, line after line
    rows[30] = ('a 12" record sleeve', "neg")  # ... up to here
    return rows


@pytest.mark.parametrize("sep,suffix", [(",", "csv"), ("\t", "tsv")])
def test_3_a_stray_quote_is_refused_at_the_line_it_opened(tmp_path, sep, suffix):
    path = write_csv(tmp_path / f"data.{suffix}", stray_quote_rows(), sep=sep)
    with pytest.raises(
        DataFileError,
        match=r"line 6: a quoted field .* runs to line 32, taking in 25 lines that look like rows.*--quoting none",
    ):
        list(read_rows(path))


def test_3_quoting_none_reads_every_line_as_a_row(tmp_path):
    path = write_csv(tmp_path / "data.tsv", stray_quote_rows(), sep="\t")
    rows = list(read_rows(path, Columns(quoting="none")))
    assert len(rows) == 40 and rows[4].text == '"Airplane is a classic' and rows[30].text == 'a 12" record sleeve'


def test_3_an_unclosed_quote_at_the_end_of_the_file_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\ngood film,pos\n"bad film,neg\nworse film\nand more\n')
    with pytest.raises(DataFileError, match="line 3: .*never closed"):
        list(read_rows(path))


def test_3_a_real_multi_line_review_is_still_one_row(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n"First line, with a comma.\nSecond line.\nThird, and last.",pos\nshort one,neg\n')
    rows = list(read_rows(path))
    assert [r.label for r in rows] == ["pos", "neg"] and rows[0].text.count("\n") == 2


# 4. Labels stripped the same way everywhere; a missing label is never a class -----------------------------------
def test_4_jsonl_labels_are_stripped_as_csv_ones(tmp_path):
    rows = [("good film", "pos"), ("bad film", "neg "), ("fine film", " pos"), ("awful", "neg")] * 5
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    csv_path = write_csv(tmp_path / "data.csv", rows)
    assert {r.label for r in read_rows(path)} == {r.label for r in read_rows(csv_path)} == {"pos", "neg"}


def test_4_empty_blank_and_nan_labels_are_skipped_with_one_note(tmp_path, caplog):
    rows = [(f"{WORDS['pos']} {i}", "pos") for i in range(10)] + [(f"{WORDS['neg']} {i}", "neg") for i in range(10)]
    rows += [("no label here", ""), ("blank label", "  "), ("nan label", "NaN"), ("null label", "null")]
    path = write_csv(tmp_path / "data.csv", rows)
    with caplog.at_level(logging.INFO, logger="rnnsent"):
        data = prepare_labelled(path, **SMALL)
    assert data.meta["classes"] == ["neg", "pos"]
    assert sum(len(getattr(data, s)) for s in ("train", "val", "test")) == 20
    notes = [n for n in data.meta["notes"] if "label is missing" in n]
    assert len(notes) == 1 and "skipped 4 row(s)" in notes[0] and "line 22" in notes[0]
    with pytest.raises(DataFileError, match=r"line 22: the label is missing"):
        prepare_labelled(path, on_missing_label="error", **SMALL)


def test_4_a_json_null_label_is_missing_too(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": null}\n{"text": "c", "label": NaN}\n')
    assert [r.label for r in read_rows(path)] == ["pos", None, None]


# 5. predict takes any iterable ---------------------------------------------------------------------------------
def test_5_predict_takes_an_iterator():
    loaded = load_checkpoint("gru")
    texts = ["A wonderful film.", "Dull and far too long.", "fine"]
    from_map = rnnsent.predict(loaded, map(str.strip, texts))
    assert [p.probability for p in from_map] == [p.probability for p in rnnsent.predict(loaded, texts)]
    assert len(rnnsent.predict(loaded, (t for t in texts))) == 3


# 6. Settings that disagree with the data -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data():
    texts = [f"{WORDS['pos']} {i}" for i in range(20)] + [f"{WORDS['neg']} {i}" for i in range(20)]
    labels = ["pos"] * 20 + ["neg"] * 20
    return prepare_texts(texts, labels, vocab_size=40, max_len=12, encoding="keras")


def test_6_the_trainer_takes_vocab_size_and_max_len_from_the_data(small_data, tmp_path):
    from rnnsent.training.trainer import Trainer

    config = TrainConfig(out=str(tmp_path / "run"), epochs=1, embed_dim=4, hidden_size=3, threads=1, quiet=True)
    Trainer(config, small_data).fit()
    state = load_checkpoint_state(tmp_path / "run" / "best.pt")
    assert state["model_config"]["vocab_size"] == 40
    assert state["data"]["max_len"] == 12 and state["data"]["encoding"] == "keras"
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.max_len == 12 and loaded.model.embedding.num_embeddings == 40


def test_6_the_trainer_refuses_settings_that_contradict_the_data(small_data, tmp_path):
    from rnnsent.training.trainer import Trainer

    config = TrainConfig(out=str(tmp_path / "run"), vocab_size=5001, embed_dim=4, hidden_size=3, threads=1, quiet=True)
    with pytest.raises(ValueError, match="vocab_size=5001 but the data was prepared with vocab_size 40"):
        Trainer(config, small_data)
    assert not (tmp_path / "run").exists()


def test_6_predict_names_the_classes_of_an_in_memory_model():
    vocab = Vocab(("good", "bad", "fine"))
    model = SentimentRNN("gru", vocab_size=len(vocab), embed_dim=4, hidden_size=3, num_classes=3).eval()
    (p,) = rnnsent.predict(model, ["good"], vocab=vocab, classes=["low", "mid", "high"])
    assert p.label in ("low", "mid", "high") and set(p.probabilities) == {"low", "mid", "high"}
    with pytest.raises(ValueError, match="names 2 classes but the model has 3"):
        rnnsent.predict(model, ["good"], vocab=vocab, classes=["a", "b"])


@pytest.mark.parametrize("lengths", [[3, 5], [0, 2], [-1, 2]])
def test_6_the_model_refuses_lengths_outside_the_batch(lengths):
    model = SentimentRNN("gru", vocab_size=10, embed_dim=4, hidden_size=3).eval()
    with pytest.raises(ValueError, match=r"lengths must be in 1\.\.4"):
        model(torch.ones(2, 4, dtype=torch.long), torch.tensor(lengths))


# 7. --test-data that is --data --------------------------------------------------------------------------------
def test_7_test_data_that_is_the_training_file_is_refused(tmp_path):
    path = write_csv(tmp_path / "data.csv", [("good", "pos"), ("bad", "neg")] * 10)
    os.symlink(path, tmp_path / "same.csv")
    with pytest.raises(DataFileError, match="is the same file as --data .*training rows"):
        prepare_labelled(path, test_path=tmp_path / "same.csv", **SMALL)


# 8. Forged checkpoints: every declared size bounded before anything is allocated --------------------------------
def forged(tmp_path, config: dict, expand: bool) -> Path:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in SentimentRNN(**config).state_dict().items()}
    weights = {k: torch.zeros(1).expand(s) if expand else torch.zeros(s) for k, s in shapes.items()}
    path = tmp_path / "forged.pt"
    save_checkpoint(path, {"model_config": config, "model_state": weights, "vocab": Vocab(("a",)).to_dict(),
                           "data": {"max_len": 8, "encoding": "keras"}})
    return path


def test_8_stride_0_weights_are_refused(tmp_path):
    config = dict(cell="gru", vocab_size=5000, embed_dim=1000, hidden_size=1000)  # ~80 MB as real weights
    path = forged(tmp_path, config, expand=True)
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match="does not store its own elements"):
        load_checkpoint(path)


def test_8_a_declared_size_beyond_the_stored_weights_is_refused(tmp_path):
    path = forged(tmp_path, dict(cell="gru", vocab_size=10, embed_dim=2, hidden_size=2), expand=False)
    state = load_checkpoint_state(path)
    state["model_config"]["hidden_size"] = 10**9
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="declares hidden_size 1,000,000,000, more than the"):
        load_checkpoint(path)


def test_8_a_model_larger_than_free_memory_is_refused_before_it_is_built(tmp_path, monkeypatch):
    from rnnsent import runtime

    path = forged(tmp_path, dict(cell="gru", vocab_size=50, embed_dim=8, hidden_size=8), expand=False)
    monkeypatch.setattr(runtime, "available_memory", lambda device: 1000)
    with pytest.raises(CheckpointError, match="more than the .* GiB of memory available"):
        load_checkpoint(path)


# 9. Class folders: regular files only, bounded, links within the folder ------------------------------------------
def test_9_a_link_out_of_the_data_folder_is_refused(tmp_path):
    root = class_folder(tmp_path / "data")
    os.symlink("/etc/passwd", root / "train" / "pos" / "x.txt")
    with pytest.raises(DataFileError, match="x.txt is a link to /etc/passwd, outside the data folder"):
        prepare_labelled(root, **SMALL)


def test_9_links_inside_the_folder_are_followed_and_hidden_files_skipped(tmp_path, caplog):
    root = class_folder(tmp_path / "data")
    os.symlink(root / "train" / "pos" / "000.txt", root / "train" / "pos" / "linked.txt")
    (root / "train" / "pos" / ".hidden.txt").write_text("zebra " * 50)
    with caplog.at_level(logging.INFO, logger="rnnsent"):
        rows = list(read_rows(root))
    assert len(rows) == 25 and not any("zebra" in r.text for r in rows)
    assert any(".hidden.txt (a hidden file)" in r.message for r in caplog.records)


def test_9_a_named_pipe_is_skipped_not_waited_on(tmp_path):
    root = class_folder(tmp_path / "data")
    os.mkfifo(root / "train" / "neg" / "pipe.txt")
    code = "import sys; from rnnsent.data.tabular import read_rows; print(len(list(read_rows(sys.argv[1]))))"
    proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and proc.stdout.strip() == b"24", proc.stderr.decode()


def test_9_a_file_is_bounded_as_imdb_reviews_are(tmp_path, monkeypatch):
    from rnnsent.data import fetch

    root = class_folder(tmp_path / "data")
    monkeypatch.setattr(fetch, "MAX_REVIEW_BYTES", 1000)
    (root / "train" / "pos" / "big.txt").write_text("good " * 300)
    with pytest.raises(DataFileError, match="big.txt holds more than the bound of 1,000 bytes"):
        list(read_rows(root))


# 10. A data cache that cannot be written costs a line, not the run ---------------------------------------------
def test_10_a_full_disk_for_the_cache_is_one_warning_and_the_data_is_used(tmp_path):
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "  # writes past 4 KiB fail, as on a full disk
            "from rnnsent.data import prepare_labelled; "
            "d = prepare_labelled(sys.argv[1], cache_dir=sys.argv[2], vocab_size=300, max_len=60); "
            "print(len(d.train) + len(d.val) + len(d.test), d.meta['cache_file'])")
    proc = subprocess.run([sys.executable, "-c", code, str(LABELLED / "imdb.csv"), str(tmp_path / "cache")],
                          capture_output=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    err = proc.stderr.decode().strip()
    assert proc.returncode == 0, err
    assert proc.stdout.split()[1] == b"None"
    assert (
        len(err.splitlines()) == 1 and "could not write the prepared-data cache" in err and "going on without it" in err
    )
    assert not list((tmp_path / "cache" / "prepared").glob("*.pt"))


# 11. train --resume on a pretraining run's folder ---------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--monitor", "loss"]])
def test_11_resuming_a_language_model_with_train_says_what_it_is(finished, tmp_path_factory, capsys, extra):
    from rnnsent.cli import pretrain_main

    lm = tmp_path_factory.getbasetemp() / "lm"
    if not (lm / "last.pt").exists():
        assert pretrain_main([*TINY, "--out", str(lm), "--cache-dir", str(finished / "cache")]) == 0
    before = snapshot(lm)
    capsys.readouterr()
    assert (
        train_main([*TINY, "--out", str(lm), "--cache-dir", str(finished / "cache"), "--resume", str(lm), *extra]) == 2
    )
    err = one_line(capsys)
    assert "is a language model's checkpoint (scripts/pretrain.py), not a classifier's" in err and "--pretrained" in err
    assert snapshot(lm) == before


# 12. A label folder whose name is not UTF-8 -------------------------------------------------------------------
def test_12_a_label_folder_name_that_is_not_utf8_is_refused_before_training(tmp_path):
    root = class_folder(tmp_path / "data")
    os.mkdir(os.path.join(os.fsencode(root / "train"), b"caf\xe9"))
    (Path(os.fsdecode(os.path.join(os.fsencode(root / "train"), b"caf\xe9"))) / "1.txt").write_text("x")
    with pytest.raises(DataFileError, match=r"the label folder b'caf\\xe9' has a name that is not UTF-8"):
        prepare_labelled(root, **SMALL)


# 13. Ctrl-C while the data is prepared ---------------------------------------------------------------------------
def test_13_ctrl_c_during_data_preparation_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    from rnnsent.training import settle

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(settle, "prepare_data", interrupted)
    assert train_main([*TINY, "--out", str(tmp_path / "run")]) == 130
    assert "interrupted by Ctrl-C before training began" in one_line(capsys)
    assert not (tmp_path / "run").exists()


# 14. Messages that name the file, the line and the fix ------------------------------------------------------------
def test_14_a_5000_digit_label_names_the_file_and_line(tmp_path):
    path = write_csv(tmp_path / "data.csv", [("good", "1"), ("bad", "9" * 5000)])
    with pytest.raises(DataFileError, match=r"data.csv line 3: the label is a 5,000-digit number"):
        list(read_rows(path))
    jl = tmp_path / "data.jsonl"
    jl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": ' + "9" * 5000 + "}\n")
    with pytest.raises(DataFileError, match=r"data.jsonl line 2: not valid JSON"):
        list(read_rows(jl))


def test_14_a_json_list_of_own_records_is_not_called_a_short_imdb(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}] * 3))
    with pytest.raises(ValueError, match=r"a JSON list of records with the keys 'text', 'label'.*\.jsonl"):
        prepare_imdb(root=path, download=False, use_cache=False)


def test_14_utf16_without_bom_is_named_and_utf32_with_bom_is_read(tmp_path):
    text = "text,label\ngood film,pos\nbad film,neg\n"
    (tmp_path / "a.csv").write_bytes(text.encode("utf-16-le"))
    with pytest.raises(DataFileError, match="holds NUL bytes.*UTF-16 or UTF-32 without a byte-order mark"):
        list(read_rows(tmp_path / "a.csv"))
    (tmp_path / "b.csv").write_bytes(codecs.BOM_UTF32_LE + text.encode("utf-32-le"))
    assert [(r.text, r.label) for r in read_rows(tmp_path / "b.csv")] == [("good film", "pos"), ("bad film", "neg")]


def test_14_a_limit_below_the_number_of_classes_says_so(tmp_path):
    rows = [(f"text {c} {i}", f"c{c:04d}") for c in range(1000) for i in range(3)]
    path = write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(DataFileError, match="--limit 2 keeps fewer rows per split than the 1000 classes"):
        prepare_labelled(path, limit=2, **SMALL)


def test_14_an_empty_validation_split_is_named(tmp_path):
    path = write_csv(
        tmp_path / "data.csv", [(f"good {i}", "pos") for i in range(3)] + [(f"bad {i}", "neg") for i in range(3)]
    )
    with pytest.raises(DataFileError, match="no validation rows are left"):
        prepare_labelled(path, **SMALL)


def test_14_weight_decay_inf_is_refused_as_a_flag(capsys):
    with pytest.raises(SystemExit) as e:
        train_main([*TINY, "--weight-decay", "inf"])
    assert e.value.code == 2
    assert "--weight-decay: weight_decay must be a finite number >= 0, got inf" in one_line(capsys)
    with pytest.raises(ValueError, match="weight_decay must be a finite number"):
        TrainConfig(weight_decay=float("inf"))


# 15. An epoch listed twice in metrics.jsonl after a kill ---------------------------------------------------------
def test_15_a_kill_between_the_metrics_row_and_the_checkpoints_lists_the_epoch_once(finished, tmp_path, monkeypatch):
    from rnnsent.training import trainer as train_module

    class Killed(BaseException):
        pass

    real_save = train_module.Trainer.save

    def save(self, name, full=True):
        if self.epoch == 2:  # epoch 2's row is appended; its checkpoints never come
            raise Killed
        return real_save(self, name, full)

    run, flags = tmp_path / "run", [*TINY, "--cache-dir", str(finished / "cache"), "--epochs", "3"]
    monkeypatch.setattr(train_module.Trainer, "save", save)
    with pytest.raises(Killed):
        train_main([*flags, "--out", str(run)])
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    monkeypatch.setattr(train_module.Trainer, "save", real_save)
    assert train_main([*flags, "--out", str(run), "--resume", "auto"]) == 0
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert train_main([*flags, "--out", str(tmp_path / "straight")]) == 0
    drop = ("epoch_seconds", "samples_per_second")
    clean = [
        {k: v for k, v in json.loads(r).items() if k not in drop}
        for r in (run / "metrics.jsonl").read_text().splitlines()
    ]
    straight = [{k: v for k, v in json.loads(r).items() if k not in drop}
                for r in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert clean == straight
