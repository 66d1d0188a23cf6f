"""tools/bench.py --busy: rnnsent's CPU throughput on an idle machine and beside busy processes.

Real users train beside a browser or a data job. For each cell this times rnnsent's training epoch (the
same job as bench.py's rnnsent row, each in a fresh process) with the default thread count (all cores)
and with one thread, first on the machine as it is ("idle") and then beside N processes of its own that
spin a core each ("busy"), started before the run and stopped after it. Conditions are interleaved
within every repeat, so slow drifts of a shared machine hit them alike, and each figure is the median
of the repeats. The target: busy, the default reaches at least BUSY_TARGET of one thread.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
from typing import Callable

BUSY_TARGET = 0.9  # busy machine: default threads / one thread, at least this
# A core kept busy in pure Python, like `python3 -c "while True: pass"`, that also ends if the bench dies.
SPIN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(1_000_000): pass\n"


class Neighbours:
    """N processes that each keep one core busy, for the length of a with-block."""

    def __init__(self, count: int):
        self.count, self.procs = count, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def run(cells, repeats: int, neighbours: int, time_job: Callable[[str, int | None], dict],
        log: Callable[[str], None] = print) -> dict:
    """time_job(cell, threads) -> a bench row (threads None: the default). Returns raw runs and medians."""
    runs = []
    for repeat in range(repeats):
        for cell in cells:
            for state in ("idle", "busy"):
                for threads in (None, 1):
                    with Neighbours(neighbours if state == "busy" else 0):
                        row = time_job(cell, threads)
                    runs.append({"cell": cell, "state": state, "threads": "default" if threads is None else 1,
                                 "repeat": repeat, "samples_per_second": row["samples_per_second"],
                                 "threads_used": row.get("threads")})
                    log(f"repeat {repeat + 1}/{repeats} {cell} {state:<4} threads {runs[-1]['threads']:<7} "
                        f"{row['samples_per_second']:8.1f} samples/s")
    return {"repeats": repeats, "neighbours": neighbours, "target": BUSY_TARGET, "runs": runs,
            "summary": summarise(runs)}


def summarise(runs: list[dict]) -> list[dict]:
    med = {}
    for r in runs:
        med.setdefault((r["cell"], r["state"], r["threads"]), []).append(r["samples_per_second"])
    med = {k: statistics.median(v) for k, v in med.items()}
    out = []
    for cell in dict.fromkeys(r["cell"] for r in runs):
        for state in ("idle", "busy"):
            for threads in ("default", 1):
                sps = med[(cell, state, threads)]
                out.append({"cell": cell, "state": state, "threads": threads, "samples_per_second": sps,
                            "vs_idle": sps / med[(cell, "idle", threads)],
                            "vs_one_thread": sps / med[(cell, state, 1)]})
    return out


def format_table(result: dict, threads_default: int) -> str:
    n = result["neighbours"]
    busy = f"busy ({n} spinning process{'es' if n != 1 else ''})"
    head = f"{'cell':<5} {'machine':<30} {'threads':>12} {'samples/s':>10} {'vs idle':>8} {'vs 1 thread':>12}"
    lines = [f"busy-machine comparison: median of {result['repeats']} interleaved repeat(s)", head, "-" * len(head)]
    for e in result["summary"]:
        threads = f"{threads_default} (default)" if e["threads"] == "default" else "1"
        lines.append(f"{e['cell']:<5} {(busy if e['state'] == 'busy' else 'idle'):<30} {threads:>12} "
                     f"{e['samples_per_second']:>10.1f} {e['vs_idle']:>7.2f}x {e['vs_one_thread']:>11.2f}x")
    verdicts = [f"{e['cell']} {e['vs_one_thread']:.2f}x" for e in result["summary"]
                if e["state"] == "busy" and e["threads"] == "default"]
    ok = all(e["vs_one_thread"] >= result["target"] for e in result["summary"]
             if e["state"] == "busy" and e["threads"] == "default")
    lines.append(f"busy, default threads / 1 thread: {', '.join(verdicts)} "
                 f"(target >= {result['target']:g}x: {'met' if ok else 'missed'})")
    return "\n".join(lines)
