"""Write an imbalanced two-class CSV from real text: IMDB reviews sampled so that negative reviews are a rare class
(5% by default), as complaints among support tickets or spam among mail are. The measurements of docs/imbalance.md
are made on it (tools/imbalance_table.py).

    python tools/make_imbalanced.py --out imdb_95_5.csv              # 4,000 training rows, 2,000 test rows, 95/5

Columns text, label (positive or negative) and split (train or test): the training rows come from IMDB's training
split, the test rows from its test split, each sampled at random (seed --seed) with the same share of negatives.
The IMDB data is found as rnnsent finds it (--data, RNNSENT_DATA, the cache, a download).
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rnnsent.data import load_imdb_reviews  # noqa: E402
from rnnsent.storage.files import atomic_write  # noqa: E402

LABELS = ("negative", "positive")


def sample(reviews: list[tuple[str, int]], n: int, rare_share: float, rng: random.Random) -> list[tuple[str, str]]:
    """n of `reviews` ((text, 0 or 1)), round(n * rare_share) of them negative, in a random order."""
    rare = round(n * rare_share)
    by_label = {y: [t for t, label in reviews if label == y] for y in (0, 1)}
    rows = [(t, LABELS[0]) for t in rng.sample(by_label[0], rare)]
    rows += [(t, LABELS[1]) for t in rng.sample(by_label[1], n - rare)]
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the CSV to write")
    p.add_argument("--train", type=int, default=4000, help="training rows [4000]")
    p.add_argument("--test", type=int, default=2000, help="test rows [2000]")
    p.add_argument("--rare-share", type=float, default=0.05, help="the share of negative reviews [0.05]")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed [0]")
    p.add_argument("--data", default=None, help="where IMDB is (see train.py --help) [found as rnnsent finds it]")
    args = p.parse_args(argv)
    if not 0 < args.rare_share < 1 or args.train < 2 or args.test < 2:
        p.error("--rare-share must be in (0, 1), --train and --test at least 2")
    rng = random.Random(args.seed)
    rows = [(t, label, split) for split, n in (("train", args.train), ("test", args.test))
            for t, label in sample(load_imdb_reviews(split, root=args.data), n, args.rare_share, rng)]
    text = io.StringIO()
    csv.writer(text).writerows([("text", "label", "split"), *rows])
    with atomic_write(Path(args.out)) as f:
        f.write(text.getvalue().encode())
    counts = {(s, label): sum(1 for _, lb, sp in rows if (sp, lb) == (s, label)) for s in ("train", "test")
              for label in LABELS}
    print(f"wrote {args.out}: " + ", ".join(f"{s} {label} {n}" for (s, label), n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
