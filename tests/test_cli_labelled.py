"""Your own data through the command lines, as a user runs them: train, evaluate and predict in fresh
processes for each format, checked against the same library calls in this process."""
import json

import pytest

from rnnsent.inference.loading import load_checkpoint
from test_cli import ROOT, one_line_error, run

LABELLED = ROOT / "tests" / "fixtures" / "labelled"
SMALL = ["--vocab-size", "300", "--embed-dim", "8", "--hidden-size", "6", "--max-len", "60", "--batch-size", "4",
         "--threads", "1", "--epochs", "1", "--quiet"]


def split_jsonl(tmp_path):
    """imdb.jsonl's train rows and test rows as two files, for --test-data."""
    rows = [json.loads(line) for line in (LABELLED / "imdb.jsonl").read_text().splitlines()]
    for split in ("train", "test"):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            f.writelines(
                json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows if r["split"] == split
            )
    return tmp_path / "train.jsonl", tmp_path / "test.jsonl"


CASES = {  # format -> (train flags, the file evaluate scores, its column flags, classes)
    "csv": (
        lambda t: ["--data", LABELLED / "debian_sections.csv", "--text-column", "description", "--label-column",
                   "section"],
        lambda t: LABELLED / "debian_sections.csv",
        ["--text-column", "description", "--label-column", "section"],
        ["admin", "perl", "python", "science"],
    ),
    "tsv": (lambda t: ["--data", LABELLED / "imdb.tsv", "--split-column", "split"], lambda t: LABELLED / "imdb.tsv", [],
            ["neg", "pos"]),
    "jsonl": (lambda t: ["--data", split_jsonl(t)[0], "--test-data", t / "test.jsonl"], lambda t: t / "test.jsonl", [],
              ["neg", "pos"]),
    "folders": (lambda t: ["--data", LABELLED / "imdb_folders"], lambda t: LABELLED / "imdb_folders", [],
                ["neg", "pos"]),
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_train_evaluate_predict_round_trip(tmp_path, fmt):
    train_flags, scored, columns, classes = CASES[fmt]
    out = tmp_path / "run"
    proc = run("train.py", *train_flags(tmp_path), "--out", out, "--cache-dir", tmp_path / "cache", *SMALL)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert report["classes"] == classes and len(report["confusion_matrix"]) == len(classes)
    assert report["monitor"] == ("macro_f1" if len(classes) > 2 else "accuracy")

    loaded = load_checkpoint(out)
    assert loaded.classes == classes and loaded.model.num_classes == len(classes)
    proc = run("evaluate.py", "--checkpoint", out, "--data", scored(tmp_path), *columns, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    got = json.loads(proc.stdout.decode())
    # the run's own test rows (carved, the split column's, the folder's test/ or the test file): its final test
    assert got["confusion_matrix"] == report["confusion_matrix"]
    assert got["accuracy"] == pytest.approx(report["test_accuracy"])
    assert got["classes"] == classes and got["n"] == sum(map(sum, got["confusion_matrix"]))
    if fmt == "csv":  # more than two classes: macro-F1 and the confusion matrix, rows named by class
        proc = run("evaluate.py", "--checkpoint", out, "--data", scored(tmp_path), *columns)
        lines = proc.stdout.decode().splitlines()
        assert proc.returncode == 0 and "macro-F1" in lines[0] and lines[1].split()[1:] == classes
    if fmt == "folders":  # without --data, the data the run recorded (its checksum checked)
        proc = run("evaluate.py", "--checkpoint", out, "--json")
        assert proc.returncode == 0 and json.loads(proc.stdout.decode())["confusion_matrix"] == got["confusion_matrix"]

    texts = ["a python module for parsing", "the worst film I have seen"]
    proc = run("predict.py", "--checkpoint", out, *texts, *(["--json"] if fmt != "tsv" else []))
    if fmt == "tsv":  # plain output: the probability, then the label's name
        lines = proc.stdout.decode().splitlines()
        assert [line.split()[1] for line in lines] == [p.label for p in loaded.predict(texts)]
        return
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    for row, text, pred in zip(rows, texts, loaded.predict(texts)):
        assert row["text"] == text and row["label"] == pred.label in classes
        assert row["probability"] == pytest.approx(pred.probability, abs=1e-6)
        assert list(row["probabilities"]) == classes and sum(row["probabilities"].values()) == pytest.approx(
            1.0, abs=1e-5
        )
        assert row["probabilities"][row["label"]] == max(row["probabilities"].values())


def test_rejected_data_is_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("body,team\nit crashes,bugs\n")
    proc = run("train.py", "--data", bad, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", *SMALL)
    err = one_line_error(proc)
    assert f"{bad} line 1: no column 'text' (columns found: 'body', 'team')" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()

