#!/usr/bin/env python3
"""Write docs/flags.md from the real `--help` of rnnsent train, pretrain, evaluate, predict, explain and export.

    python tools/make_flags_doc.py            # rewrite docs/flags.md
    python tools/make_flags_doc.py --check    # exit 1 if docs/flags.md is out of date (tests/test_docs.py does this)

Each flag's line is its --help entry word for word. Training's flags are grouped by the settings class that
holds them (rnnsent.config: ModelConfig, DataConfig, OptimConfig, RunConfig), so a new field lands in its
group by itself; evaluate's, predict's, explain's and export's few flags are listed as they come.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "flags.md"
WIDTH = "10000"  # argparse wraps --help to $COLUMNS: this wide, no entry wraps, and the page is the same everywhere

HEADER = """# Command-line flags

Every flag of `rnnsent train`, `pretrain`, `evaluate`, `predict`, `explain`, `export`, `serve` and `tune` (the
same flags as `scripts/train.py`, `pretrain.py`, `evaluate.py`, `predict.py`, `explain.py` and `export.py`), as their
`--help` prints them; the default is in brackets.
`tools/make_flags_doc.py` writes this page from the commands themselves and `tests/test_docs.py` checks that
it is current. What the flags do in practice: the [README's tour](../README.md#a-quick-tour),
[results.md](results.md) (the recipes and levers), [own-data.md](own-data.md), [speed.md](speed.md) (the
CPU settings), [fault-tolerance.md](fault-tolerance.md) (checkpoints and resuming) and [explain.md](explain.md)
(word attributions, training in TensorBoard), [export.md](export.md) (ONNX and onnxruntime) and [serve.md](serve.md)
(the HTTP server; `rnnsent serve` has no script of its own).
"""


def help_text(command: str) -> str:
    """What `rnnsent COMMAND --help` prints, at the page's fixed width."""
    from rnnsent import cli

    main = getattr(cli, f"{command}_main")
    out, old = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(["--help"], prog=f"rnnsent {command}")
    finally:
        if old is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue()


def entries(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(description, [(flag with its metavar, help)]) of an argparse --help text."""
    head, _, body = text.partition("\noptions:\n")
    head = head.partition("\npositional arguments:\n")[0]
    description = " ".join(head.split("\n\n", 1)[1].split()) if "\n\n" in head else ""
    rows: list[list[str]] = []
    for line in body.splitlines():
        if re.match(r"^  \S", line):  # a new flag: "  --flag METAVAR   help" (help may start on the next line)
            flag, _, rest = line.strip().partition("  ")
            rows.append([flag, rest.strip()])
        elif line.strip() and rows:
            rows[-1][1] = f"{rows[-1][1]} {line.strip()}".strip()
    positional = text.partition("\npositional arguments:\n")[2].partition("\n\n")[0]
    for line in positional.splitlines():
        name, _, what = line.strip().partition("  ")
        rows.insert(0, [f"{name} ...", what.strip()])
    return description, [(flag, what) for flag, what in rows if not flag.startswith("-h")]


def cell(text: str) -> str:
    """Help text as a Markdown table cell: nothing in it is read as markup."""
    return re.sub(r"([\\`*<>|])", r"\\\1", text)


def table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| flag | what it does [default] |", "| --- | --- |",
            *(f"| `{flag}` | {cell(what)} |" for flag, what in rows), ""]


def training_groups(rows: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Training's flags grouped by the settings class of the field each one sets."""
    from rnnsent.cli import train_parser
    from rnnsent.config import DataConfig, ModelConfig, OptimConfig, RunConfig

    dest = {opt: action.dest for action in train_parser()._actions for opt in action.option_strings}
    groups = [("Model", ModelConfig, "the network: cell, sizes, dropout, initialisation (`ModelConfig`)"),
              ("Data", DataConfig, "which data and how it is split and encoded (`DataConfig`), IMDB or your own"),
              ("Optimisation", OptimConfig, ("how the weights are learned: schedule, regularisers, "
                                             "early stopping, the seed (`OptimConfig`)")),
              ("Machine and run folder", RunConfig, ("where and how the run executes, what it writes and "
                                                     "resumes; none of it changes what is learned (`RunConfig`)"))]
    fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls, _ in groups}
    out = [("Recipe", "a named set of the settings below; an explicit flag wins over it",
            [r for r in rows if dest.get(r[0].split()[0]) == "recipe"])]
    for name, _, what in groups:
        out.append((name, what, [r for r in rows if dest.get(r[0].split()[0]) in fields[name]]))
    placed = {r for _, _, group in out for r in group}
    if rest := [r for r in rows if r not in placed]:
        out.append(("Other", "flags that set no field of the training settings", rest))
    return out


def render() -> str:
    lines = [HEADER]
    description, rows = entries(help_text("train"))
    train_rows = rows
    lines += ["## train", "", f"`rnnsent train`, `scripts/train.py`: {cell(description)}", ""]
    for name, what, group in training_groups(rows):
        lines += [f"### {name}", "", f"{what[0].upper()}{what[1:]}.", "", *table(group)]
    description, pre_rows = entries(help_text("pretrain"))
    lines += ["## pretrain", "", f"`rnnsent pretrain`, `scripts/pretrain.py`: {cell(description)}", ""]
    if pre_rows == rows:
        lines += ["Its flags are exactly [train's](#train).", ""]
    else:
        lines += table(pre_rows)
    for command in ("evaluate", "predict", "explain", "export", "serve"):
        description, rows = entries(help_text(command))
        script = f", `scripts/{command}.py`" if (ROOT / "scripts" / f"{command}.py").is_file() else ""  # (serve: none)
        lines += [f"## {command}", "", f"`rnnsent {command}`{script}: {cell(description)}", "", *table(rows)]
    description, tune_rows = entries(help_text("tune"))
    own = [r for r in tune_rows if r not in train_rows]  # the search's own; the rest are train's
    lines += ["## tune", "", f"`rnnsent tune`: {cell(description)}", "",
              "Its flags are [train's](#train) but `--resume` and `--overwrite` (with `--out` its own), and these:", "",
              *table(own)]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only say whether docs/flags.md is current")
    args = p.parse_args()
    text = render()
    if args.check:
        current = DOC.is_file() and DOC.read_text(encoding="utf-8") == text
        print("docs/flags.md is current" if current else "docs/flags.md is out of date: run tools/make_flags_doc.py")
        return 0 if current else 1
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
