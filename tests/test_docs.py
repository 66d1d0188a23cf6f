"""The README and docs/: every relative link and #anchor resolves (anchors as GitHub makes them from headings),
every docs page can be reached from the README, the README's test command is the one CI runs, docs/flags.md
is the commands' real --help, docs/developing.md has a line for every module of the package, and every Python
block runs (or says why it cannot)."""
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CHANGELOG.md"]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)  # fenced code blocks: links there are not links
CODE = re.compile(r"`[^`\n]*`")  # inline code spans
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Relative links of `page` whose file (inside `root`) or #anchor does not exist, as 'target: why' lines."""
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto: ... are not checked
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.is_relative_to(root.resolve()):
            broken.append(f"{target}: outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: " + "; ".join(broken_links(page))


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_a_link_out_of_the_repository(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text(
        "# Other page\n\n## `--recipe tuned`: 0.90 ± 0.01\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "README.md"
    page.write_text("# Title\n\n## Start here\n\n"
                    "[ok](docs/other.md) [ok](docs/other.md#--recipe-tuned-090--001) [ok](#start-here)\n"
                    "[ok](docs/other.md#twice-1) [ok](https://example.com/x.md#nowhere) `[code](nowhere.md)`\n"
                    "```\n[fenced](nowhere.md)\n```\n"
                    "[a](docs/missing.md) [b](docs/other.md#no-such-heading) [c](#start) [d](../outside.md)\n")
    assert broken_links(page, tmp_path) == [
        "docs/missing.md: no such file",
        "docs/other.md#no-such-heading: no heading with the anchor #no-such-heading in other.md",
        "#start: no heading with the anchor #start in README.md",
        "../outside.md: outside the repository",
    ]


def test_github_slugs_of_the_headings_this_project_uses():
    assert slug("Past 0.90: `--recipe tuned`") == "past-090---recipe-tuned"
    assert slug("On a busy machine") == "on-a-busy-machine"
    assert slug("Use it from Python ([API](developing.md))") == "use-it-from-python-api"
    assert slug("Speed: 8.1× on a CPU") == "speed-81-on-a-cpu"


def test_every_docs_page_is_reached_from_the_readme():
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            dest = (page.parent / target.partition("#")[0]).resolve()
            if dest.suffix == ".md" and dest.is_file() and dest not in reached:
                reached.add(dest)
                todo.append(dest)
    missing = [p.relative_to(ROOT).as_posix() for p in PAGES[1:] if p.resolve() not in reached]
    assert not missing, f"not linked from README.md (or a page it links): {', '.join(missing)}"


def test_the_readme_test_command_is_what_ci_runs():
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "command -v chromium "))
    ]  # (the browser test's system package)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup_and_test = readme.split("Set up and run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert ci == [setup_and_test]


def test_flags_page_is_the_commands_real_help():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from make_flags_doc import render
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert (ROOT / "docs" / "flags.md").read_text(encoding="utf-8") == render(), \
        "docs/flags.md differs from the commands' --help: run python tools/make_flags_doc.py"


# docs/developing.md is the map of the package: a line for every module, starting with its path (`rnnsent/cli.py`
# at the top, `training/trainer.py` or `rnnsent/training/trainer.py` in a subpackage, whose __init__.py its folder
# stands for), and every module path it names anywhere exists.
PACKAGE = ROOT / "rnnsent"
SUBPACKAGES = "|".join(sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
MODULE = rf"rnnsent/\w+\.py|(?:rnnsent/)?(?:{SUBPACKAGES})/[\w/]+\.py"
NAMED = re.compile(rf"(?<![\w/.-])({MODULE})\b")  # a module path anywhere
LISTED = re.compile(rf"^({MODULE})\b", re.MULTILINE)  # a line that starts with one


def relative(path: str) -> str:
    return path.removeprefix("rnnsent/")


def unlisted_modules(text: str, package: Path = PACKAGE) -> list[str]:
    """The modules of `package` that have no line of `text` starting with their path; a subpackage's __init__.py
    may instead be stood for by its folder, rnnsent/<name>/, named anywhere."""
    listed, missing = {relative(m) for m in LISTED.findall(text)}, []
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        folder = f"rnnsent/{path.parent.relative_to(package).as_posix()}/"
        if name not in listed and not (path.name == "__init__.py" and path.parent != package and folder in text):
            missing.append(name)
    return missing


def named_modules(text: str) -> set[str]:
    """Every rnnsent module path named in `text`, relative to rnnsent/: {"cli.py", "training/trainer.py", ...}."""
    return {relative(m) for m in NAMED.findall(text)}


def test_developing_md_lists_every_module_of_the_package():
    missing = unlisted_modules((ROOT / "docs" / "developing.md").read_text(encoding="utf-8"))
    assert not missing, f"docs/developing.md has no line for: {', '.join(missing)} (add one under The modules)"


def test_every_module_developing_md_names_exists():
    named = named_modules((ROOT / "docs" / "developing.md").read_text(encoding="utf-8"))
    gone = sorted(m for m in named if not (PACKAGE / m).is_file())
    assert not gone, f"docs/developing.md names modules that do not exist: {', '.join(gone)}"


def test_the_module_checks_see_a_missing_line_a_missing_folder_and_both_spellings():
    page = (ROOT / "docs" / "developing.md").read_text(encoding="utf-8")
    assert unlisted_modules(re.sub(r"(?m)^training/trainer\.py .*$", "", page)) == ["training/trainer.py"]
    assert unlisted_modules(re.sub(r"(?m)^rnnsent/cli\.py .*$", "", page)) == ["cli.py"]
    assert unlisted_modules(page.replace("rnnsent/serve/", "the serve folder")) == ["serve/__init__.py"]
    assert named_modules("`rnnsent/cli.py`, training/trainer.py and rnnsent/data/text.py; tools/bench.py, "
                         "tests/test_data_text.py, rnnsent/model/csrc/recurrent_cpu.cpp, data/gone.py") == {
        "cli.py", "training/trainer.py", "data/text.py", "data/gone.py"}


# Every ```python block of the README and docs/ runs, as it stands, in a fresh process in an empty folder, unless an
# HTML comment just before it (`<!-- no-test: why -->`) says why it cannot (a GPU, the network, the full data, a
# server that runs until stopped). Where a block names the reader's own file (a comment saying "your file"), a small
# fixture file of the same kind stands in for it.
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
NO_TEST = re.compile(r"<!--\s*no-test\b(.*?)-->")
COMMENT_LINE = re.compile(r"^\s*<!--.*-->\s*$")
FIXTURES = ROOT / "tests" / "fixtures"
YOUR_FILES = {  # the name a page gives the reader's file -> the fixture that stands in for it
    "gru_model.h5": FIXTURES / "keras" / "k2_gru.h5",
    "bidirectional_lstm_imdb.keras": FIXTURES / "keras" / "k3_bidirectional.h5",
    "packages.csv": FIXTURES / "labelled" / "debian_sections.csv",
}


def python_blocks(pages=PAGES) -> list[tuple[str, str, str | None]]:
    """(page:line, code, why it is not run or None) for every ```python block of `pages`."""
    blocks = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for match in PYTHON_BLOCK.finditer(text):
            before = text[: match.start()].splitlines()
            comments = []
            while before and COMMENT_LINE.match(before[-1]):  # the HTML comments right above the fence
                comments.append(before.pop())
            skip = [m.group(1) for line in comments for m in NO_TEST.finditer(line)]
            name = page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name
            where = f"{name}:{text.count(chr(10), 0, match.start()) + 1}"
            blocks.append((where, match.group(1), skip[0].lstrip(":").strip() if skip else None))
    return blocks


def with_your_files(code: str) -> str:
    """`code` with each file a "your file" line names replaced by its stand-in (YOUR_FILES)."""
    lines = []
    for line in code.splitlines():
        if "your file" in line:
            names = [name for name in YOUR_FILES if f'"{name}"' in line]
            assert names, f"a 'your file' line names no file tests/test_docs.py knows a stand-in for: {line}"
            line = line.replace(f'"{names[0]}"', repr(str(YOUR_FILES[names[0]])))
        lines.append(line)
    return "\n".join(lines) + "\n"


BLOCKS = python_blocks()


def test_every_python_block_that_is_not_run_says_why():
    assert BLOCKS and sum(why is None for _, _, why in BLOCKS) >= 5
    for where, _, why in BLOCKS:
        assert why is None or len(why) >= 10, f"{where}: <!-- no-test: ... --> needs its reason after the colon"
    markers = [m for page in PAGES for m in NO_TEST.finditer(prose(page.read_text(encoding="utf-8")))]
    assert len(markers) == sum(why is not None for _, _, why in BLOCKS), "a no-test comment that is not above a block"


def test_the_block_finder_reads_markers_and_stand_ins(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# P\n\n<!-- no-test: needs a GPU -->\n<!-- other -->\n```python\nimport torch\n```\n\n"
                    "<!-- no-test -->\n```python\nx = 1\n```\n\n```python\n"
                    'm = load("gru_model.h5")  # your file\n```\n')
    (gpu, _, why), (_, _, empty), (plain, code, none) = python_blocks([page])
    assert why == "needs a GPU" and empty == "" and none is None and code == 'm = load("gru_model.h5")  # your file\n'
    assert repr(str(YOUR_FILES["gru_model.h5"])) in with_your_files(code)
    with pytest.raises(AssertionError, match="no file tests/test_docs.py knows"):
        with_your_files('m = load("mine.h5")  # your file')


@pytest.mark.parametrize("where, code", [pytest.param(w, c, id=w) for w, c, why in BLOCKS if why is None])
def test_python_block_runs(where, code, tmp_path):
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT), RNNSENT_CACHE=str(tmp_path / "cache"), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", with_your_files(code)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{where} fails:\n{proc.stderr[-3000:]}"
