#!/usr/bin/env python3
"""Speed and quality of rnnsent.explain on real IMDB test reviews (docs/explain.md).

    python tools/bench_explain.py --threads 1                  # seconds for one 500-word review, reviews/s for 200
    python tools/bench_explain.py --quality --threads 1        # per released cell, on 100 test reviews: the
                                                                 # completeness gaps and IG/occlusion sign agreement

Speed: the defaults of `rnnsent explain` (integrated gradients, 50 steps, 8 texts per pass) with a released model;
the 500-word review is the first test review of at least 500 words, cut to its first 500; each figure is the
median of --repeats runs after one untimed warm-up. Quality: 100 test reviews (50 of each label, drawn with seed
0); the gap is |sum of attributions - (score - baseline score)| in log-odds, also relative to |score - baseline
score|; agreement is the share of each review's --top words by |IG| whose occlusion value has the same sign.
On a shared machine, run one benchmark at a time.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout too (the tools beside this one are in its own folder)

import rnnsent  # noqa: E402  (before torch: its OpenMP settings)
import torch  # noqa: E402
from bench_report import machine_info  # noqa: E402
from rnnsent.data import load_imdb_reviews  # noqa: E402
from rnnsent.inference.explain import explain  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and load
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sample(reviews: list[tuple[str, int]], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    by_label = [[t for t, y in reviews if y == label] for label in (0, 1)]
    return [t for group in by_label for t in rng.sample(group, min(n // 2, len(group)))]


def speed(args, reviews) -> dict:
    loaded = rnnsent.load_checkpoint(args.checkpoint)
    long_one = next(t for t, _ in reviews if len(t.split()) >= 500)
    review = " ".join(long_one.split()[:500])
    texts = sample(reviews, args.reviews, seed=1)
    one = timed(lambda: explain(loaded, [review]), args.repeats)
    many = timed(lambda: explain(loaded, texts), max(1, args.repeats // 2))
    (e,) = explain(loaded, [review])
    return {"checkpoint": args.checkpoint, "seconds_500_words": one, "tokens_read": len(e.tokens),
            "reviews": len(texts), "mean_words": statistics.mean(len(t.split()) for t in texts),
            "reviews_per_second": len(texts) / many}


def quality(args, reviews) -> list[dict]:
    texts = sample(reviews, 100)
    rows = []
    for cell in args.cells:
        loaded = rnnsent.load_checkpoint(cell)
        t0 = time.perf_counter()
        ig = explain(loaded, texts, steps=args.steps)
        ig_seconds = time.perf_counter() - t0
        occ = explain(loaded, texts, method="occlusion")
        gaps = [abs(e.delta) for e in ig]
        relative = [abs(e.delta) / abs(e.score - e.baseline_score) for e in ig if abs(e.score - e.baseline_score) > 0.1]
        agree = total = 0
        for a, b in zip(ig, occ):
            top = sorted(range(len(a.words)), key=lambda i: -abs(a.attributions[i]))[: args.top]
            agree += sum((a.attributions[i] > 0) == (b.attributions[i] > 0) for i in top)
            total += len(top)
        every = [
            (x > 0) == (y > 0)
            for a, b in zip(ig, occ)
            for x, y, u in zip(a.attributions, b.attributions, a.unknown)
            if not u and (x or y)
        ]
        rows.append(
            {"cell": cell, "steps": args.steps, "reviews": len(texts), "gap_mean": statistics.mean(gaps),
             "gap_max": max(gaps), "relative_gap_mean": statistics.mean(relative), "relative_gap_max": max(relative),
             "warned": sum(e.gap_is_large for e in ig), f"sign_agreement_top{args.top}": agree / total,
             "sign_agreement_all_words": sum(every) / len(every), "ig_seconds": ig_seconds}
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quality", action="store_true", help="completeness gaps and IG/occlusion agreement per cell")
    p.add_argument("--checkpoint", default="gru", help="speed: the model [gru]")
    p.add_argument("--cells", nargs="+", default=["gru", "lstm", "rnn"], help="quality: released cells [gru lstm rnn]")
    p.add_argument("--reviews", type=int, default=200, help="speed: reviews for the reviews/s figure [200]")
    p.add_argument("--repeats", type=int, default=5, help="speed: timed runs, the median is kept [5]")
    p.add_argument("--steps", type=int, default=50, help="quality: integration steps [50, the default]")
    p.add_argument("--top", type=int, default=5, help="quality: strongest words per review compared [5]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads [all cores]")
    p.add_argument("--data", default=None, help="where IMDB is (see rnnsent train --help) [the cache]")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reviews = load_imdb_reviews("test", root=args.data)
    result = {"machine": {**machine_info("cpu"), "threads": torch.get_num_threads()},
              "command": "python tools/bench_explain.py " + " ".join(sys.argv[1:])}
    if args.quality:
        result["quality"] = rows = quality(args, reviews)
        print(f"{'cell':<5} {'steps':>5} {'gap mean':>9} {'gap max':>9} {'rel. mean':>9} {'rel. max':>9} {'warned':>6} "
              f"{'top-' + str(args.top) + ' agree':>12} {'all agree':>9}")
        for r in rows:
            print(
                f"{r['cell']:<5} {r['steps']:>5} {r['gap_mean']:>9.2e} {r['gap_max']:>9.2e} "
                f"{r['relative_gap_mean']:>9.2e} "
                f"{r['relative_gap_max']:>9.2e} {r['warned']:>6} {r[f'sign_agreement_top{args.top}']:>12.3f} "
                f"{r['sign_agreement_all_words']:>9.3f}"
            )
    else:
        result["speed"] = s = speed(args, reviews)
        print(
            f"{s['checkpoint']}: {s['seconds_500_words']:.3f} s for a 500-word review ({s['tokens_read']} tokens "
            "read); "
            f"{s['reviews_per_second']:.2f} reviews/s over {s['reviews']} reviews of {s['mean_words']:.0f} words on "
            "average"
        )
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['machine']['threads']} "
          f"thread(s), torch {result['machine']['torch']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
