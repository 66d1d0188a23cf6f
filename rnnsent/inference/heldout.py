"""Which rows a model is scored on (rnnsent evaluate, and its report): never rows it trained on, unless asked.

  - IMDB's models: a split of IMDB made as the run made it (LoadedModel.prepare_data; its vocabulary proves it).
  - A run on your own data: its own split made again from its file (rnnsent.data.labelled.remake_split) with the
    seed, fractions and limit of its config, then proved to be the same rows by the record the run kept (the
    file's SHA-256 and the split's fingerprint). A checkpoint from before the record is scored on the split
    made again the same way, unverified, and a note says so.
  - Other rows (--test-data FILE, or a file given to an IMDB model): every row of FILE. The run's own data file is
    refused there (its training rows would be scored), and texts the run trained on are counted in a note.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from rnnsent.config import DataConfig, field_names
from rnnsent.data import EncodedSplit
from rnnsent.data.tabular import Columns, DataFileError, is_user_data
from rnnsent.storage.checkpoint import CheckpointError

log = logging.getLogger(__name__)
SPLITS = ("test", "val", "train")


@dataclass(frozen=True)
class HeldOut:
    """The rows to score: the encoded split, its texts (None unless asked for), and where they came from."""

    split: EncodedSplit
    texts: list[str] | None
    what: str  # for evaluate's line: "test", or the file scored
    source: dict  # metrics.json's "data": where the rows came from and how they were checked


def held_out(loaded, name: str, split: str = "test", data=None, test_data=None, columns: Columns | None = None,
             cache_dir=None, limit: int | None = None, texts: bool = False) -> HeldOut:
    """The rows of `loaded` (a LoadedModel; `name` what the user called it) to score (module docstring). `data`
    names the data it was trained on, `test_data` a file of other rows; `columns` read `test_data` (default: the
    run's own); `limit` keeps that many rows; `texts` also reads the rows' texts."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    own = loaded.classes is not None
    if test_data is None and not own and is_user_data(data):
        test_data = data  # an IMDB model and a file of yours: other rows
    if test_data is not None:
        if split != "test":
            raise ValueError(f"--test-data scores every row of {test_data}; --split {split} names a split of the data "
                             "the model was trained on: leave one of them out")
        return _other_rows(loaded, name, test_data, columns, limit, cache_dir)
    if own:
        return _own_split(loaded, name, split, data, limit)
    return _imdb_split(loaded, split, data, cache_dir, limit, texts)


def _run_settings(loaded, data_root) -> DataConfig:
    """The run's data settings (its config), reading the data at `data_root`."""
    saved = {k: v for k, v in loaded.config.items() if k in field_names(DataConfig)}
    saved.update(max_len=loaded.max_len, encoding=loaded.encoding,
                 data_root=str(data_root) if data_root is not None else None)
    try:
        return DataConfig(**saved)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{loaded.path or 'this checkpoint'} has unusable data settings: {e}") from None


def _record(loaded) -> dict | None:
    """The run's record of how its data was split (rnnsent.data.labelled.split_record), or None before there was
    one; a record that is not one is refused (the file is untrusted)."""
    record = loaded.state.get("data", {}).get("split")
    if record is None:
        return None
    if not (isinstance(record, dict) and isinstance(record.get("data_sha256"), str)
            and isinstance(record.get("fingerprints"), dict)):
        raise CheckpointError(f"{loaded.path or 'this checkpoint'} has a damaged record of how its data was split")
    return record


def _own_data_file(loaded, name: str, data) -> Path:
    """The file (or class folder) the run on your own data was trained on: `data`, else the path it recorded."""
    recorded = loaded.config.get("data_root")
    path = data if data is not None else recorded
    if path is None or not Path(path).exists():
        where = f" ({recorded}, not here)" if recorded else ""
        raise ValueError(f"{name} was trained on your own data{where}; pass --data with that file to score its "
                         "held-out test rows, or --test-data FILE to score every row of another file")
    if not is_user_data(path):
        classes = f"{len(loaded.classes)} classes: {', '.join(map(str, loaded.classes))}"
        raise ValueError(f"{name} was trained on your own data ({classes}); --data {path} is IMDB (or no file of "
                         "labelled rows: .csv, .tsv, .jsonl or a class folder), which has none of them: pass --data "
                         "the file it was trained on, or --test-data FILE to score every row of another file")
    return Path(path)


def _own_split(loaded, name: str, split: str, data, limit: int | None) -> HeldOut:
    """The run's own split, made again from its data file and checked against its record."""
    from rnnsent.data.labelled import files_digest, fingerprint, remake_split, take_rows

    path, record = _own_data_file(loaded, name, data), _record(loaded)
    settings = _run_settings(loaded, path)
    if record is not None:
        digest = files_digest(path)
        if digest == record.get("test_data_sha256"):  # the run's own test file, given as --data
            return _other_rows(loaded, name, path, None, limit, None)
        if digest != record.get("data_sha256"):
            raise ValueError(f"{path} is not the data {name} was trained on (its SHA-256 is not the one the run "
                             f"recorded), so its {split} rows cannot be found; to score every row of it pass "
                             f"--test-data {path}")
        if settings.test_data is not None and not Path(settings.test_data).exists():
            raise ValueError(f"{name} was tested on {settings.test_data}, which is not here; pass --test-data with "
                             "that file")
    rows, texts = remake_split(settings, split, loaded.vocab, loaded.classes)
    verified = record is not None and fingerprint(rows) == record["fingerprints"].get(split)
    if record is not None and not verified:
        raise DataFileError(f"the {split} split made again from {path} is not the one {name} recorded (other rows, "
                            "or another tokenizer); was the run made by another version of rnnsent?")
    if record is None:
        log.info(f"note: {name} records no checksum of its data (an earlier rnnsent wrote it): its {split} split is "
                 f"made again from {path} with its seed {settings.split_seed} and test fraction "
                 f"{settings.test_fraction}, unverified")
    if limit is not None and limit < len(rows):
        rows, texts = take_rows(rows, texts, limit)
    source = {"kind": "own", "path": str(path), "split": split, "verified": verified, "rows": len(rows)}
    return HeldOut(rows, texts, f"{split} split of {path}", source)


def _other_rows(loaded, name: str, path, columns: Columns | None, limit: int | None, cache_dir) -> HeldOut:
    """Every row of the file `path` (at most `limit` of them), refused when it is the run's own data file."""
    from rnnsent.data.labelled import files_digest, read_labelled, take_rows

    record = _record(loaded)
    if not Path(path).exists():
        raise DataFileError(f"{path}: no such file or folder")
    recorded = loaded.config.get("data_root")
    same = (files_digest(path) == record.get("data_sha256") if record is not None
            else recorded is not None and Path(recorded).exists() and Path(recorded).resolve() == Path(path).resolve())
    if same:
        raise ValueError(f"--test-data {path} is the file {name} was trained on: its training rows would be scored; "
                         f"pass --data {path} to score its held-out test rows")
    c = loaded.config
    if columns is None:
        columns = Columns(c.get("text_column") or "text", c.get("label_column") or "label",
                          quoting=c.get("quoting") or "csv")
    rows, texts = read_labelled(path, loaded.vocab, loaded.max_len, loaded.encoding, loaded.classes, columns)
    if limit is not None and limit < len(rows):
        rows, texts = take_rows(rows, texts, limit)
    _note_trained_rows(loaded, name, path, texts, cache_dir)
    return HeldOut(rows, texts, str(path), {"kind": "file", "path": str(path), "split": None, "rows": len(rows)})


def _note_trained_rows(loaded, name: str, path, texts: list[str], cache_dir) -> None:
    """A note when rows of `texts` are texts the model was trained on (its training or validation rows), or when
    the data it was trained on is not here to tell."""
    try:
        trained = _trained_texts(loaded, name, cache_dir)
    except (ValueError, OSError):  # (NoSourceError is an OSError: IMDB is not here, and is not downloaded for this)
        log.info(f"note: the data {name} was trained on is not here, so whether rows of {path} are among its "
                 "training rows was not checked")
        return
    shared = sum(t in trained for t in texts)
    if shared:
        log.info(f"note: {shared} of the {len(texts)} rows of {path} are texts {name} was trained on (its training or "
                 "validation rows); they are scored with the rest")


def _trained_texts(loaded, name: str, cache_dir) -> set[str]:
    """The texts of the model's training and validation rows, if its data is here (ValueError or OSError if not)."""
    if loaded.classes is None:
        from rnnsent.data.dataset import imdb_split_texts

        c = _run_settings(loaded, None)
        return {t for split in ("train", "val")
                for t in imdb_split_texts(split, c.val_fraction, c.split_seed, c.limit, None, cache_dir, False)}
    from rnnsent.data.labelled import files_digest, trained_texts

    data, record = _own_data_file(loaded, name, None), _record(loaded)
    if record is not None and record.get("data_sha256") != files_digest(data):
        raise ValueError(f"{data} is not the file {name} was trained on")
    return trained_texts(_run_settings(loaded, data))


def _imdb_split(loaded, split: str, data, cache_dir, limit: int | None, texts: bool) -> HeldOut:
    """A split of IMDB as the run made it (its vocabulary checked), and its texts when asked for."""
    prepared = loaded.prepare_data(root=data, cache_dir=cache_dir, limit=limit)
    rows = getattr(prepared, split)
    shown = None
    if texts:
        from rnnsent.data.dataset import imdb_split_texts

        c = replace(_run_settings(loaded, None), limit=prepared.meta.get("params", {}).get("limit"))
        where = prepared.meta.get("source_path") or data  # the source the split was prepared from
        shown = imdb_split_texts(split, c.val_fraction, c.split_seed, c.limit, where, cache_dir)
        if len(shown) != len(rows):
            raise CheckpointError(f"IMDB's {split} split has {len(rows)} rows but {len(shown)} texts were read")
    source = {"kind": "imdb", "path": prepared.meta.get("source_path"), "split": split, "verified": True,
              "rows": len(rows)}
    return HeldOut(rows, shown, split, source)
