#!/usr/bin/env python3
"""What importing rnnsent costs on top of importing torch, measured in fresh processes.

    python tools/bench_import.py                  # this checkout, 7 rounds
    python tools/bench_import.py --root OTHER     # another copy of rnnsent (an older commit, to compare)

Each statement runs in its own new interpreter (nothing cached in the process), timed from the first
import to the end of the statement; the rounds are interleaved so that a machine busy with other work
slows every statement alike. The last statement, a whole `train --help` process, is wall time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STATEMENTS = {
    "torch": "import torch",
    "rnnsent": "import rnnsent",
    "rnnsent + model": "import rnnsent; rnnsent.SentimentRNN",  # what using the model costs: torch, models, fused
}


def timed(code: str, root: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run(
        [sys.executable, "-c", f"import time; t = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"],
        cwd=root, env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1])


def wall(argv: list[str], root: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(root))
    t = time.perf_counter()
    subprocess.run(argv, cwd=root, env=env, capture_output=True, check=True)
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="the rnnsent checkout to measure [this one]")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    root = args.root.resolve()
    help_cmd = [sys.executable, str(root / "scripts" / "train.py"), "--help"]
    times: dict[str, list[float]] = {name: [] for name in [*STATEMENTS, "train.py --help (process)"]}
    for _ in range(args.rounds):
        for name, code in STATEMENTS.items():
            times[name].append(timed(code, root))
        times["train.py --help (process)"].append(wall(help_cmd, root))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{root}, {args.rounds} fresh processes each (seconds: median, min, max)")
    for name, ts in times.items():
        print(f"  {name:<28} {med[name]:6.2f}  {min(ts):6.2f}  {max(ts):6.2f}")
    extra = med["rnnsent + model"] - med["torch"]
    print(
        f"rnnsent's model on top of import torch: {extra:+.2f} s ({med['rnnsent + model'] / med['torch']:.2f}x import "
        "torch)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
