"""Write tests/fixtures/labelled/: real labelled text in every format rnnsent reads as "your own data".

  imdb.csv, imdb.tsv, imdb.jsonl, imdb_folders/   the 24 IMDB fixture reviews (tests/fixtures/imdb) with
      labels neg/pos and a split column (the folders: train/<label>/, test/<label>/, and unsup/ to be skipped).
      Their <br /> tags are written as line breaks, which the tokenizer reads the same way, so the CSV and TSV
      hold quoted fields with line breaks, commas and quotes inside. All four must prepare identically.
  debian_sections.csv   a multi-class source: the short descriptions of Debian packages (an apt Packages
      file), labelled by their Section; the first 12 packages of each of four sections, in file order.

    python tools/make_labelled_fixtures.py --packages PACKAGES_FILE
(a Packages file: /usr/lib/apt/apt-helper cat-file /var/lib/apt/lists/*_main_binary-amd64_Packages.lz4 > Packages)
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rnnsent.data import load_imdb_reviews  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "labelled"
IMDB = ROOT / "tests" / "fixtures" / "imdb"
SECTIONS = ("admin", "python", "perl", "science")
PER_SECTION = 12


def imdb_rows() -> list[tuple[str, str, str]]:
    """(text, label, split) in the order the class folders are read: split, then label, then file."""
    rows = []
    for split in ("train", "test"):
        for text, y in load_imdb_reviews(split, root=IMDB, download=False):
            rows.append((re.sub(r"<br\s*/?>", "\n", text), "pos" if y else "neg", split))
    return rows


def write_imdb(rows) -> None:
    for name, dialect in (("imdb.csv", csv.excel), ("imdb.tsv", csv.excel_tab)):
        with open(OUT / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, dialect)
            w.writerow(["text", "label", "split"])
            w.writerows(rows)
    with open(OUT / "imdb.jsonl", "w", encoding="utf-8") as f:
        for text, label, split in rows:
            f.write(json.dumps({"text": text, "label": label, "split": split}, ensure_ascii=False) + "\n")
    folders = OUT / "imdb_folders"
    shutil.rmtree(folders, ignore_errors=True)
    for k, (text, label, split) in enumerate(rows):
        d = folders / split / label
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{k:04d}.txt").write_text(text, encoding="utf-8")
    unsup = folders / "train" / "unsup"
    unsup.mkdir()
    shutil.copy(IMDB / "aclImdb" / "train" / "unsup" / "0_0.txt", unsup / "0000.txt")


def write_debian(packages: Path) -> None:
    picked: dict[str, list[tuple[str, str]]] = {s: [] for s in SECTIONS}
    for stanza in packages.read_text(encoding="utf-8").split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, flags=re.M))
        section = fields.get("Section")
        if section in picked and len(picked[section]) < PER_SECTION and fields.get("Description"):
            picked[section].append((fields["Package"], fields["Description"]))
    with open(OUT / "debian_sections.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["package", "description", "section"])
        # Interleaved, so any prefix of the file holds every section.
        for k in range(PER_SECTION):
            for s in SECTIONS:
                w.writerow([*picked[s][k], s])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packages", type=Path, help="an apt Packages file (for debian_sections.csv)")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    write_imdb(imdb_rows())
    if args.packages:
        write_debian(args.packages)


if __name__ == "__main__":
    main()
