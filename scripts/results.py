#!/usr/bin/env python3
"""Reproduce the results table (docs/results.md): real training runs, several seeds, one table.

    python scripts/results.py --recipe regularised --cells gru lstm rnn --seeds 0 1 2 --jobs 2 --release

Each (cell, seed) is one ordinary `scripts/train.py` run in its own process (so a run here is exactly
what a user gets from the command shown in the table), `--jobs` of them at a time. The script then
reads each run's report.json and metrics.jsonl and writes `<out>/results.md` and `<out>/results.json`.
`--release` copies each cell's best run (highest validation accuracy; the test split never picks)
to checkpoints/<cell>.pt (installed with the package; `--checkpoint <cell>` loads it by name).
`--check-released` re-evaluates checkpoints/*.pt on the full test split and compares with
checkpoints/RESULTS.json.

A recipe that fine-tunes a language model (`--recipe pretrained`) first pretrains one per cell
(`scripts/pretrain.py --recipe R --cell C --seed 0`, once, however many seeds), and every seed's run
starts from it; the table's commands name both steps.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASED = ROOT / "checkpoints"  # the released models, the wheel's package data (rnnsent.inference.loading.RELEASED)
sys.path.insert(0, str(ROOT))
from rnnsent.cli import recipe_flag  # noqa: E402
from rnnsent.config import RECIPES  # noqa: E402
from rnnsent.inference.releasing import check_released, release  # noqa: E402
from rnnsent.runtime import device_name  # noqa: E402


def needs_pretraining(recipe: str) -> bool:

    return "pretrain" in RECIPES[recipe]


def lm_folder(args, cell: str) -> Path:
    return Path(args.out) / f"{args.recipe}-lm-{cell}"


def train_command(args, cell: str, seed: int, out: Path, script: str = "scripts/train.py") -> list[str]:
    cmd = [script, "--recipe", args.recipe, "--cell", cell, "--seed", str(seed), "--out", str(out),
           "--device", args.device, "--quiet"]
    if script.endswith("train.py") and needs_pretraining(args.recipe):
        cmd += ["--pretrained", str(lm_folder(args, cell))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.data:
        cmd += ["--data", args.data]
    cmd += args.extra
    return cmd


def execute(args, cmd: list[str], out: Path, what: str) -> None:
    """Run one command whose run folder is `out`, unless a finished one is there (or --rerun)."""
    if (out / "report.json").is_file() and not args.rerun:
        print(f"[results] reusing {out}", file=sys.stderr)
        return
    if out.exists():
        shutil.rmtree(out)
    print(f"[results] {' '.join(cmd)}", file=sys.stderr)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({what}): {proc.stderr.strip().splitlines()[-1:]}")
    (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")


def pretrain_one(args, cell: str) -> str:
    """The cell's language model (seed 0) for a recipe that fine-tunes one; returns its command."""
    out = lm_folder(args, cell)
    cmd = train_command(args, cell, 0, out, script="scripts/pretrain.py")
    execute(args, cmd, out, f"{cell} language model")
    return "python " + " ".join(cmd)


def run_one(args, cell: str, seed: int) -> dict:
    out = Path(args.out) / f"{args.recipe}-{cell}-seed{seed}"
    cmd = train_command(args, cell, seed, out)
    execute(args, cmd, out, f"{cell}, seed {seed}")
    report = json.loads((out / "report.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "cell": cell, "seed": seed, "run": str(out), "command": "python " + " ".join(cmd),
        "test_accuracy": report["test_accuracy"], "best_val_accuracy": report["best_val_accuracy"],
        "epochs_run": report["epochs_run"], "best_epoch": max(history, key=lambda r: r["val_accuracy"])["epoch"],
        "train_seconds": sum(r["epoch_seconds"] for r in history),
        "wall_seconds": float((out / "wall_seconds.txt").read_text()) if (out / "wall_seconds.txt").is_file() else None,
        "device": report["device"],
    }


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        runs = [r for r in rows if r["cell"] == cell]
        accs = [r["test_accuracy"] for r in runs]
        table.append({
            "cell": cell, "runs": len(runs), "test_mean": statistics.mean(accs),
            "test_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "test_each": accs,
            "val_mean": statistics.mean(r["best_val_accuracy"] for r in runs),
            "epochs": max(r["epochs_run"] for r in runs),
            "train_minutes": statistics.mean(r["train_seconds"] for r in runs) / 60,
            "best_run": max(runs, key=lambda r: r["best_val_accuracy"])["run"],
        })
    return table


def markdown(args, table: list[dict], rows: list[dict], machine: str) -> str:
    lines = [
        f"Recipe `{args.recipe}`, seeds {', '.join(map(str, args.seeds))}, on {machine}, {date.today().isoformat()}; "
        f"`{args.threads or 'all'}` thread(s) per run, {args.jobs} run(s) at a time.",
        "",
        "| cell | test accuracy (mean ± std) | each seed | best val. accuracy (mean) | epochs | training min/run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in table:
        lines.append(f"| {t['cell']} | {t['test_mean']:.4f} ± {t['test_std']:.4f} | "
                     f"{', '.join(f'{a:.4f}' for a in t['test_each'])} | {t['val_mean']:.4f} | {t['epochs']} | "
                     f"{t['train_minutes']:.1f} |")
    lines += ["", "Commands:", ""] + [f"    {r['command']}" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="regularised", type=recipe_flag, choices=sorted(RECIPES), help="[regularised]")
    p.add_argument("--cells", nargs="+", default=["gru", "lstm", "rnn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (CPU: cores // threads)")
    p.add_argument("--data", default=None, help="where the IMDB data is (see train.py --help)")
    p.add_argument("--out", default="runs/results")
    p.add_argument("--rerun", action="store_true", help="train again even where a finished run exists")
    p.add_argument("--release", action="store_true", help="copy each cell's best run to checkpoints/")
    p.add_argument("--check-released", action="store_true", help="only re-evaluate checkpoints/*.pt")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    args = p.parse_args()
    if args.check_released:
        return check_released(RELEASED, args.data)
    jobs = [(c, s) for c in args.cells for s in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        if needs_pretraining(args.recipe):
            lm_commands = dict(zip(args.cells, pool.map(lambda cell: pretrain_one(args, cell), args.cells)))
        rows = list(pool.map(lambda job: run_one(args, *job), jobs))
    for row in rows:
        if needs_pretraining(args.recipe):
            row["command"] = f"{lm_commands[row['cell']]} && {row['command']}"
    table = summarise(rows)
    machine = device_name(args.device)
    out = Path(args.out)
    (out / "results.json").write_text(
        json.dumps(
            {"machine": machine, "date": date.today().isoformat(), "recipe": args.recipe, "table": table, "runs": rows},
            indent=2,
        )
        + "\n"
    )
    text = markdown(args, table, rows, machine)
    (out / "results.md").write_text(text)
    print(text)
    if args.release:
        release(table, RELEASED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
