"""rnnsent evaluate --report and the rows evaluate scores: the metrics against scikit-learn's own functions applied to
predictions.csv, a run on your own data scored on exactly its own test rows (and never silently on its training
rows), the folder written whole or not at all, and the page in a real headless browser."""
import csv
import io
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from rnnsent.inference.evaluate import positive_class
from rnnsent.inference.report import Scored, predictions_csv, report_metrics, write_report
from rnnsent.cli import evaluate_main
from test_cli import FIXTURE, ROOT, TINY, run

EXTRA = "the report needs the report extra: pip install 'rnnsent[report]'"
sklearn = pytest.importorskip("sklearn.metrics", reason=EXTRA)
pytest.importorskip("matplotlib", reason=EXTRA)
# scikit-learn's note on float32 probabilities, whose rows sum to 1 only to float32's precision (as the model's do)
pytestmark = pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")

LABELLED = ROOT / "tests" / "fixtures" / "labelled"
SMALL = ["--vocab-size", "300", "--embed-dim", "8", "--hidden-size", "6", "--max-len", "60", "--batch-size", "4",
         "--threads", "1", "--epochs", "1", "--quiet"]
MARKUP = ' <img src=x onerror="document.title=1"> & <b>bold</b> "quoted"'  # shown as text, never as HTML
KEYS = ["accuracy", "macro_f1", "weighted_f1", "per_class", "roc_auc", "average_precision", "log_loss", "brier", "ece",
        "confusion_matrix", "labels", "threshold", "positive_class", "n", "data"]


def six_classes(path):
    """Six classes of real text: IMDB's negative and positive fixture reviews and four Debian sections, 12 rows each,
    each text ending in markup that a page must show as text."""
    rows = [(r["text"], r["label"]) for r in csv.DictReader(open(LABELLED / "imdb.csv", encoding="utf-8"))]
    rows += [(r["description"], r["section"]) for r in csv.DictReader(open(LABELLED / "debian_sections.csv"))]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text + MARKUP, label) for text, label in rows)
    return path


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """A run on six classes whose test split is carved (a quarter of the rows), and its report."""
    base = tmp_path_factory.mktemp("six")
    data = six_classes(base / "six.csv")
    proc = run("train.py", "--data", data, "--test-fraction", "0.25", "--out", base / "run", "--cache-dir",
               base / "cache", *SMALL)
    assert proc.returncode == 0, proc.stderr.decode()
    proc = run("evaluate.py", "--checkpoint", base / "run", "--data", data, "--report", base / "report", "--worst", "5",
               "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    (base / "evaluated.json").write_bytes(proc.stdout)
    return base


def evaluate(capsys, *args):
    """rnnsent evaluate in this process: (exit code, standard output, standard error)."""
    capsys.readouterr()
    code = evaluate_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str) -> str:
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (code, err)
    return err.strip()


def read_predictions(path):
    """predictions.csv (a path, or its text) as (rows, true class indices, probabilities (N, K), the class names)."""
    text = path if isinstance(path, str) else path.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    labels = [c[2:] for c in rows[0] if c.startswith("p_")]
    y = np.array([labels.index(r["true"]) for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in labels] for r in rows])
    return rows, y, probs, labels


def expected_metrics(y, probs, labels, threshold, positive):
    """metrics.json's numbers straight from scikit-learn's functions (and the ECE from its definition)."""
    m, ks, k = sklearn, list(range(len(labels))), len(labels)
    pred = (np.where(probs[:, positive] >= threshold, positive, 1 - positive) if k == 2 else probs.argmax(1))
    present = [c for c in ks if 0 < (y == c).sum() < len(y)]
    if k == 2:
        auc = m.roc_auc_score(y == positive, probs[:, positive]) if positive in present else None
        ap = m.average_precision_score(y == positive, probs[:, positive]) if positive in present else None
    elif present == ks:
        auc = m.roc_auc_score(y, probs, multi_class="ovr")
        ap = np.mean([m.average_precision_score(y == c, probs[:, c]) for c in ks])
    else:  # the classes the rows hold
        auc = np.mean([m.roc_auc_score(y == c, probs[:, c]) for c in present])
        ap = np.mean([m.average_precision_score(y == c, probs[:, c]) for c in present])
    p, r, f, s = m.precision_recall_fscore_support(y, pred, labels=ks, zero_division=0)
    return {
        "accuracy": m.accuracy_score(y, pred), "n": len(y),
        "macro_f1": m.f1_score(y, pred, labels=ks, average="macro", zero_division=0),
        "weighted_f1": m.f1_score(y, pred, labels=ks, average="weighted", zero_division=0),
        "per_class": {labels[c]: {"precision": p[c], "recall": r[c], "f1": f[c], "support": s[c]} for c in ks},
        "roc_auc": auc, "average_precision": ap, "log_loss": m.log_loss(y, probs, labels=ks),
        "brier": m.brier_score_loss(y, probs, labels=ks), "ece": ece_by_definition(y, probs, pred),
        "confusion_matrix": m.confusion_matrix(y, pred, labels=ks).tolist(), "labels": labels,
        "threshold": threshold if k == 2 else None, "positive_class": labels[positive] if k == 2 else None}


def ece_by_definition(y, probs, pred, bins=15):
    """Sum over 15 equal-width bins of the predicted class's probability ((lo, hi], 0 in the first) of the bin's
    share of rows times |accuracy - mean probability|, one row at a time."""
    members = [[] for _ in range(bins)]
    for i in range(len(y)):
        confidence = probs[i, pred[i]]
        b = next(b for b in range(bins) if confidence <= (b + 1) / bins or b == bins - 1)
        members[b].append((confidence, pred[i] == y[i]))
    return sum(len(m) / len(y) * abs(sum(r for _, r in m) / len(m) - sum(c for c, _ in m) / len(m))
               for m in members if m)


def assert_metrics_equal(got, want):
    for key, value in want.items():
        if isinstance(value, dict):
            for label, numbers in value.items():
                assert got[key][label] == pytest.approx(numbers, rel=1e-12), (key, label)
        elif value is None or isinstance(value, (list, str)):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def fixed(case):
    """(true classes, probabilities, names, threshold, positive) of a fixed, seeded set of predictions."""
    g = torch.Generator().manual_seed(7)
    n, k = 240, 2 if case.startswith("binary") else 3
    y = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) * 1.5 + 2.0 * torch.nn.functional.one_hot(y, k)  # (N, K): a fair model
    if case == "never_predicted":  # class 2 is never the most probable
        logits[:, 2] -= 20
    if case == "absent":  # no row of class 2
        y = torch.where(y == 2, torch.zeros_like(y), y)
    probs = torch.softmax(logits, -1)
    labels = ["neg", "pos"] if k == 2 else ["a", "b", "c"]
    threshold, positive = (0.3, positive_class(labels, "neg")) if case == "binary_named" else (0.5, 1)
    return y.numpy(), probs.numpy(), labels, threshold if k == 2 else None, positive if k == 2 else None


@pytest.mark.parametrize("case", ["binary", "binary_named", "three", "never_predicted", "absent"])
def test_metrics_equal_scikit_learn_on_predictions_csv(case):
    y, probs, labels, threshold, positive = fixed(case)
    losses = torch.nn.functional.cross_entropy(torch.log(torch.from_numpy(probs)), torch.from_numpy(y),
                                               reduction="none").numpy()
    s = Scored(y, probs, losses, labels, threshold, positive)
    got = report_metrics(s, {"kind": "test"})
    rows, y2, probs2, labels2 = read_predictions(predictions_csv(s, [f"text {i}" for i in range(len(y))]))
    assert labels2 == labels and (y2 == y).all() and (probs2 == probs.astype(np.float64)).all()  # exact round trip
    assert [r["predicted"] for r in rows] == [labels[c] for c in s.pred]
    assert [float(r["loss"]) for r in rows] == losses.astype(np.float64).tolist()
    assert list(got) == KEYS
    assert_metrics_equal(got, expected_metrics(y2, probs2, labels, threshold, positive))
    if case == "never_predicted":
        assert got["per_class"]["c"]["precision"] == 0 and got["per_class"]["c"]["support"] > 0
    if case == "absent":
        assert got["per_class"]["c"]["support"] == 0 and got["roc_auc"] is not None
    if case == "binary_named":  # every binary number is about "neg"
        assert got["positive_class"] == "neg" and got["roc_auc"] == sklearn.roc_auc_score(y == 0, probs2[:, 0])


def test_one_class_rows_have_no_roc_auc():
    y, probs, labels, _, _ = fixed("binary")
    s = Scored(np.ones_like(y), probs, np.zeros(len(y), np.float32), labels, 0.5, 1)
    got = report_metrics(s, {})
    assert got["roc_auc"] is None and got["average_precision"] is None
    json.dumps(got, allow_nan=False)


def test_the_positive_class_is_the_second_unless_named():
    assert positive_class(["negative", "positive"]) == 1
    assert positive_class(["complaint", "ok"], "complaint") == 0
    with pytest.raises(ValueError, match=r"positive_label 'spam' is not one of the classes \(ham, eggs\)"):
        positive_class(["ham", "eggs"], "spam")
    assert positive_class(["a", "b", "c"]) is None  # more than two classes have none
    with pytest.raises(ValueError, match="names one of two classes; the data has 3"):
        positive_class(["a", "b", "c"], "a")


def test_the_report_of_a_run_on_own_data(six):
    """The run's own test rows, every file, the numbers of scikit-learn on predictions.csv, escaped texts."""
    from rnnsent.data.labelled import remake_split
    from rnnsent.inference.heldout import _run_settings
    from rnnsent.inference.loading import load_checkpoint

    report = json.loads((six / "run" / "report.json").read_text())
    got = json.loads((six / "report" / "metrics.json").read_text())
    rows, y, probs, labels = read_predictions(six / "report" / "predictions.csv")
    assert sorted(os.listdir(six / "report")) == ["metrics.json", "predictions.csv", "report.html"]
    assert list(got) == KEYS and got["data"]["kind"] == "own" and got["data"]["verified"] is True
    evaluated = json.loads((six / "evaluated.json").read_text())
    assert got["confusion_matrix"] == report["confusion_matrix"] == evaluated["confusion_matrix"]
    assert got["accuracy"] == pytest.approx(report["test_accuracy"]) and got["n"] == len(rows)
    assert_metrics_equal(got, expected_metrics(y, probs, labels, None, None))
    loaded = load_checkpoint(six / "run")
    _, texts = remake_split(_run_settings(loaded, six / "six.csv"), "test", loaded.vocab, loaded.classes)
    assert [r["text"] for r in rows] == texts and [r["index"] for r in rows] == [str(i) for i in range(len(rows))]
    page = (six / "report" / "report.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "&lt;img" in page
    assert "<img src=x" not in page and "<b>bold" not in page
    assert page.count('src="data:image/png;base64,') == 5 and "http" not in page.replace("http-equiv", "")
    assert "Most confused pairs" in page and page.count('<p class="h"><b>#') == 5


def test_an_own_data_run_is_scored_on_its_own_test_rows(six, capsys):
    """Without --data the recorded file; either way the run's final test, not every row of the file."""
    code, out, err = evaluate(capsys, "--checkpoint", six / "run", "--json")
    assert code == 0, err
    got, report = json.loads(out), json.loads((six / "run" / "report.json").read_text())
    assert got["confusion_matrix"] == report["confusion_matrix"] and got["n"] == 18  # a quarter of the 72 rows
    assert got["accuracy"] == pytest.approx(report["test_accuracy"])


def test_other_rows_need_test_data_and_training_rows_are_never_scored_silently(six, tmp_path, capsys):
    from rnnsent.data.labelled import trained_texts
    from rnnsent.inference.heldout import _run_settings
    from rnnsent.inference.loading import load_checkpoint

    rows = list(csv.reader(open(six / "six.csv", newline="", encoding="utf-8")))
    other = tmp_path / "other.csv"
    with open(other, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([rows[0], *([t.replace(MARKUP, " (a copy)"), y] for t, y in rows[1:])])
    err = one_line(*evaluate(capsys, "--checkpoint", six / "run", "--data", other)[::2])
    assert f"{other} is not the data" in err and f"pass --test-data {other}" in err
    err = one_line(*evaluate(capsys, "--checkpoint", six / "run", "--test-data", six / "six.csv")[::2])
    assert "is the file" in err and "its training rows would be scored" in err and "--data" in err

    seen = trained_texts(_run_settings(load_checkpoint(six / "run"), six / "six.csv"))
    mixed = tmp_path / "mixed.csv"  # three rows the run trained on, one it did not
    with open(mixed, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([rows[0], *[r for r in rows[1:] if r[0] in seen][:3], ["a new python tool", "python"]])
    code, out, err = evaluate(capsys, "--checkpoint", six / "run", "--test-data", mixed, "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 4 and f"note: 3 of the 4 rows of {mixed} are texts" in err


def test_a_checkpoint_without_the_record_still_evaluates_with_a_note(six, tmp_path, capsys):
    from rnnsent.storage.checkpoint import load_checkpoint_state, save_checkpoint

    state = load_checkpoint_state(six / "run" / "best.pt")
    del state["data"]["split"]
    old = save_checkpoint(tmp_path / "old.pt", state)
    code, out, err = evaluate(capsys, "--checkpoint", old, "--json")
    assert code == 0, err
    assert json.loads(out)["confusion_matrix"] == json.loads((six / "evaluated.json").read_text())["confusion_matrix"]
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "records no checksum of its data" in notes[0] and "unverified" in notes[0]


def test_a_report_into_a_file_or_an_unwritable_folder_is_one_line_and_writes_nothing(six, tmp_path, capsys):
    afile = tmp_path / "taken.txt"
    afile.write_text("mine")
    for target, says in ((afile, "is a file; give a folder"), (afile / "report", "is a file, so no folder")):
        assert says in one_line(*evaluate(capsys, "--checkpoint", six / "run", "--report", target)[::2])
    assert afile.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["taken.txt"]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        err = one_line(*evaluate(capsys, "--checkpoint", six / "run", "--report", locked / "report")[::2])
        assert "is not writable" in err and os.listdir(locked) == []


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "report"
    write_report(out, {"n": 1}, "index\n", "<p>first</p>")
    before = {name: (out / name).read_text() for name in os.listdir(out)}

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match=f"--report {out}: No space left on device; nothing was written there"):
        write_report(out, {"n": 2}, "index\n", "<p>second</p>")
    assert {name: (out / name).read_text() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["report"]  # no half-written folder beside it


def test_the_report_of_an_imdb_model_shows_imdb_texts(tmp_path, capsys, monkeypatch):
    from rnnsent.data import load_imdb_reviews

    proc = run("train.py", "--cell", "gru", "--epochs", "1", "--out", tmp_path / "run", "--cache-dir",
               tmp_path / "cache", *TINY)
    assert proc.returncode == 0, proc.stderr.decode()
    monkeypatch.setenv("RNNSENT_DATA", "")
    code, _, err = evaluate(capsys, "--checkpoint", tmp_path / "run", "--cache-dir", tmp_path / "cache", "--report",
                            tmp_path / "report", "--no-attributions", "--json")
    assert code == 0, err
    rows, y, probs, labels = read_predictions(tmp_path / "report" / "predictions.csv")
    assert [r["text"] for r in rows] == [t for t, _ in load_imdb_reviews("test", FIXTURE)]
    assert labels == ["negative", "positive"] and y.tolist() == [y for _, y in load_imdb_reviews("test", FIXTURE)]
    got = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert got["accuracy"] == pytest.approx(json.loads((tmp_path / "run" / "report.json").read_text())["test_accuracy"])
    assert got["threshold"] == 0.5 and got["positive_class"] == "positive" and got["data"]["kind"] == "imdb"
    assert "word attributions were left out (--no-attributions)" in (tmp_path / "report" / "report.html").read_text()
    assert math.isfinite(got["log_loss"])


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def test_the_page_in_a_headless_browser(six, tmp_path):
    """Chromium renders the page with no console error, every figure loads, and no text's markup runs."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives chromium through selenium")
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1340,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        driver.get((six / "report" / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
        title, body = driver.title, driver.find_element(By.TAG_NAME, "body").text
        cards = len(driver.find_elements(By.CSS_SELECTOR, ".card"))
        highlighted = driver.find_elements(By.CSS_SELECTOR, "section .t span[title]")
        logs = driver.get_log("browser")
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
    assert [alt for *_, alt in images] == ["confusion matrix", "predicted probabilities by true class", "ROC curve",
                                           "precision-recall curve", "reliability diagram"]
    assert all(done and width > 100 and height > 100 for done, width, height, _ in images), images
    assert [entry for entry in logs if entry["level"] in ("SEVERE", "WARNING")] == []
    assert title == f"{six / 'run'} on test split of {six / 'six.csv'}"  # no text's onerror ran
    assert MARKUP.strip() in body and cards == 8 and highlighted  # the markup shown as text; words attributed
    assert (tmp_path / "page.png").stat().st_size > 10000
