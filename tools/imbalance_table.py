"""The table of docs/imbalance.md: on an imbalanced two-class CSV (tools/make_imbalanced.py), a GRU trained with
nothing done about the imbalance, with balanced class weights, with the balanced sampler, and with nothing done
but the threshold tuned on validation; each over several seeds, scored on the file's test rows: macro-F1 and the
rare class's recall (and precision).

    python tools/make_imbalanced.py --out imdb_95_5.csv
    python tools/imbalance_table.py --data imdb_95_5.csv --positive-label negative --work runs/imbalance

Every run is rnnsent's own training (rnnsent.train) with --positive-label, --monitor macro_f1 and the settings
below; the threshold row is the first row's runs (trained with --threshold auto, which changes no weight) decided
by their tuned threshold instead of 0.5.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rnnsent.config import TrainConfig  # noqa: E402
from rnnsent.data import prepare_data  # noqa: E402
from rnnsent.inference.evaluate import evaluate  # noqa: E402
from rnnsent.inference.loading import load_checkpoint  # noqa: E402
from rnnsent.training.trainer import train  # noqa: E402

# run name -> (the table's row, the settings of its runs); the threshold row is the "none" runs at their tuned threshold
METHODS = {
    "none": ("nothing", {"threshold": "auto"}),
    "weights": ("--class-weight balanced", {"class_weight": "balanced"}),
    "sampler": ("--sampler balanced", {"sampler": "balanced"}),
    "threshold": ("--threshold auto", None),
}


def scored(loaded, test, threshold: float) -> dict:
    """macro-F1 and the positive (rare) class's recall and precision on `test` at `threshold`."""
    r = evaluate(loaded.model, test, threshold=threshold, positive=loaded.positive)
    found, said = r["tp"] + r["fn"], r["tp"] + r["fp"]
    return {"macro_f1": r["macro_f1"], "recall": r["tp"] / found if found else 0.0,
            "precision": r["tp"] / said if said else 0.0, "threshold": threshold}


def finished(out: Path, config: TrainConfig) -> bool:
    """Whether `out` holds a finished run of exactly `config`."""
    try:
        return (out / "report.json").is_file() and json.loads((out / "config.json").read_text()) == config.to_dict()
    except (OSError, ValueError):
        return False


def run_all(args) -> dict:
    """{row: [scores per seed]}, training every run that the work folder does not hold finished."""
    base = TrainConfig(data_root=args.data, split_column="split", max_len=args.max_len, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, positive_label=args.positive_label, monitor="macro_f1",
                       threads=args.threads, quiet=True, cache_dir=args.cache_dir, overwrite=True)
    data = prepare_data(base, base.vocab_size)  # the same for every run: the vocabulary is the training rows'
    rows: dict = {row: [] for row, _ in METHODS.values()}
    for seed in args.seeds:
        for name, (row, settings) in METHODS.items():
            if settings is None:
                continue
            out = Path(args.work) / f"{name}-seed{seed}"
            config = TrainConfig(**{**base.to_dict(), **settings, "seed": seed, "out": str(out)})
            if not finished(out, config):
                if args.methods and name not in args.methods:
                    continue
                t0 = time.perf_counter()
                train(config, data)
                print(f"{row}, seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            loaded = load_checkpoint(out)
            rows[row].append(scored(loaded, data.test, 0.5))
            if name == "none":
                rows[METHODS["threshold"][0]].append(scored(loaded, data.test, loaded.threshold))
    return rows


def table(rows: dict) -> str:
    def cell(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    lines = ["| | macro-F1 | recall of the rare class | its precision | recall, each seed | threshold, each seed |",
             "|---|---|---|---|---|---|"]
    for name, scores in rows.items():
        if not scores:
            continue
        lines.append(f"| {name} | " + " | ".join(cell([s[k] for s in scores]) for k in ("macro_f1", "recall",
                                                                                      "precision"))
                     + " | " + ", ".join(f"{s['recall']:.2f}" for s in scores)
                     + " | " + ", ".join(f"{s['threshold']:.3g}" for s in scores) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the CSV of tools/make_imbalanced.py (text, label, split)")
    p.add_argument("--positive-label", required=True, help="the rare class")
    p.add_argument("--work", default="runs/imbalance", help="where the runs go; finished ones are reused")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds [0 1 2]")
    p.add_argument("--methods", nargs="+", choices=[m for m, (_, s) in METHODS.items() if s], default=None,
                   help="train only these runs (the table lists every run the work folder holds) [all]")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run [3]")
    p.add_argument("--max-len", type=int, default=200, help="tokens kept per text [200]")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size [64]")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate [0.001]")
    p.add_argument("--threads", type=int, default=2, help="CPU threads [2]")
    p.add_argument("--cache-dir", default=None, help="rnnsent's cache folder")
    args = p.parse_args(argv)
    rows = run_all(args)
    (Path(args.work) / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    print(f"\n{len(args.seeds)} seeds; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
