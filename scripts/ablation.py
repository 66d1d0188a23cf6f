#!/usr/bin/env python3
"""What each accuracy lever adds to `--recipe regularised` (once called best), with the same seeds: the
ablation tables of docs/results.md.

    python scripts/ablation.py --data PATH --device cuda --jobs 4 --out runs/ablation --budget 540

Every run is an ordinary `scripts/pretrain.py` or `scripts/train.py` process (so each row is what its
command gives a user), `--jobs` at a time, in the order of PLAN: the language models first (one per cell,
seed 0, pretrained once and fine-tuned with every seed), the full recipe and the baseline for every cell,
then the levers one by one. With --budget SECONDS no run starts once that much time has passed; the
table marks what did not run. Finished runs are reused when the script is run again.

Writes OUT/ablation.json (every run: its command, best validation and test accuracy, seconds) and
OUT/ablation.md (per cell and variant: the mean over the seeds that ran). Nothing here picks on test
accuracy: the variants are fixed in advance, and a recipe is chosen from their validation scores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from rnnsent.runtime import device_name  # noqa: E402

LM = "lm"  # a pretraining run; its variant's flags are scripts/pretrain.py's
# name -> (flags on top of --recipe regularised, whether it fine-tunes the cell's language model). The names are
# those of the recorded tables (docs/results.md), where "best" is the regularised recipe.
VARIANTS = {
    LM: (["--recipe", "pretrained"], False),
    "best": (["--recipe", "regularised"], False),
    "pretrained": (["--recipe", "pretrained"], True),  # best + language model + EMA + adversarial
    "best +lm": (["--recipe", "regularised"], True),
    "best +lm +ema": (["--recipe", "regularised", "--ema", "0.999"], True),
    "best +lm +adversarial": (["--recipe", "regularised", "--adversarial", "0.05"], True),
    "best +ema": (["--recipe", "regularised", "--ema", "0.999"], False),
    "best +adversarial": (["--recipe", "regularised", "--adversarial", "0.05"], False),
    "tuned": (["--recipe", "tuned"], False),  # best + adversarial, LSTM and SimpleRNN trained longer
    "best +label smoothing": (["--recipe", "regularised", "--label-smoothing", "0.1"], False),
    "best +full reviews": (["--recipe", "regularised", "--max-len", "2600"], False),
    "pretrained +label smoothing": (["--recipe", "pretrained", "--label-smoothing", "0.1"], True),
}
SEEDS = (0, 1, 2)
# (variant, cells, seeds) in the order runs start: what the headline needs first, the levers after.
PLAN = [
    (LM, ("gru", "lstm", "rnn"), (0,)),
    ("pretrained", ("gru",), SEEDS), ("best", ("gru",), SEEDS),
    ("pretrained", ("lstm", "rnn"), SEEDS), ("best", ("lstm", "rnn"), SEEDS),
    ("best +lm", ("gru",), SEEDS), ("best +lm +ema", ("gru",), SEEDS), ("best +lm +adversarial", ("gru",), SEEDS),
    ("best +ema", ("gru",), SEEDS), ("best +adversarial", ("gru",), SEEDS),
    ("best +adversarial", ("lstm", "rnn"), SEEDS), ("tuned", ("lstm", "rnn"), SEEDS),
    ("best +lm", ("lstm", "rnn"), SEEDS), ("best +lm +ema", ("lstm", "rnn"), SEEDS),
    ("best +lm +adversarial", ("lstm", "rnn"), SEEDS),
    ("best +label smoothing", ("gru",), SEEDS), ("pretrained +label smoothing", ("gru",), SEEDS),
    ("best +full reviews", ("gru",), SEEDS),
]


def folder(out: Path, variant: str, cell: str, seed: int) -> Path:
    return out / f"{variant.replace(' +', '+').replace(' ', '-')}-{cell}-seed{seed}"


def command(args, variant: str, cell: str, seed: int) -> list[str]:
    flags, fine_tunes = VARIANTS[variant]
    script = "scripts/pretrain.py" if variant == LM else "scripts/train.py"
    cmd = [script, *flags, "--cell", cell, "--seed", str(seed), "--out",
           str(folder(Path(args.out), variant, cell, seed)), "--device", args.device, "--quiet"]
    if fine_tunes:
        cmd += ["--pretrained", str(folder(Path(args.out), LM, cell, 0))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.data:
        cmd += ["--data", args.data]
    return cmd + args.extra


def run(args, variant: str, cell: str, seed: int) -> dict:
    out = folder(Path(args.out), variant, cell, seed)
    cmd = command(args, variant, cell, seed)
    row = {"variant": variant, "cell": cell, "seed": seed, "command": "python " + " ".join(cmd)}
    if not (out / "report.json").is_file():
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
        row["wall_seconds"] = time.perf_counter() - t0
        if proc.returncode != 0:
            return {**row, "error": (proc.stderr.strip().splitlines() or ["(no message)"])[-1]}
    report = json.loads((out / "report.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    row["train_seconds"] = sum(r["epoch_seconds"] for r in history)
    if variant == LM:
        return {**row, "val_loss": report["best_val_loss"], "val_perplexity": report["val_perplexity"]}
    return {**row, "test_accuracy": report["test_accuracy"], "best_val_accuracy": report["best_val_accuracy"],
            "best_epoch": max(history, key=lambda r: r["val_accuracy"])["epoch"], "epochs_run": report["epochs_run"]}


def schedule(args) -> list[dict]:
    """Run PLAN with --jobs workers; a fine-tuning run waits for its cell's language model."""
    # the language models (seed 0) whatever --seeds says: every seed fine-tunes its cell's one
    todo = [(v, c, s) for v, cells, seeds in PLAN for c in cells if c in args.cells for s in seeds
            if s in args.seeds or v == LM]
    needs_lm = any(VARIANTS[v][1] for v in args.variants)  # a language model only where a variant fine-tunes one
    todo = [job for job in dict.fromkeys(todo) if job[0] in args.variants or (job[0] == LM and needs_lm)]
    start, rows, lock = time.perf_counter(), [], threading.Lock()
    done_lm: set[str] = set()
    running: dict = {}

    def ready(job) -> bool:
        return not VARIANTS[job[0]][1] or job[1] in done_lm

    def save() -> None:
        with lock:
            Path(args.out, "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while todo or running:
            out_of_time = args.budget is not None and time.perf_counter() - start > args.budget
            while not out_of_time and len(running) < args.jobs and any(ready(j) for j in todo):
                job = next(j for j in todo if ready(j))
                todo.remove(job)
                running[pool.submit(run, args, *job)] = job
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                row = future.result()
                rows.append(row)
                if job[0] == LM and "error" not in row:
                    done_lm.add(job[1])
                print(f"[ablation {time.perf_counter() - start:.0f}s] {job}: "
                      f"{row.get('error') or row.get('test_accuracy') or row.get('val_perplexity')}", flush=True)
                save()
        rows += [
            {"variant": v, "cell": c, "seed": s, "skipped": "budget or a failed language model"} for v, c, s in todo
        ]
        save()
    return rows


def table(rows: list[dict]) -> list[dict]:
    out = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        for variant in VARIANTS:
            if variant == LM:
                continue
            runs = [r for r in rows if r["cell"] == cell and r["variant"] == variant and "test_accuracy" in r]
            if runs:
                accs = [r["test_accuracy"] for r in runs]
                out.append({"cell": cell, "variant": variant, "seeds": [r["seed"] for r in runs],
                            "test_mean": statistics.mean(accs), "test_each": accs,
                            "test_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                            "val_mean": statistics.mean(r["best_val_accuracy"] for r in runs),
                            "train_minutes": statistics.mean(r["train_seconds"] for r in runs) / 60})
    return out


def markdown(args, summary: list[dict], rows: list[dict], machine: str) -> str:
    lines = [f"On {machine}, {date.today().isoformat()}, {args.jobs} run(s) at a time. Test accuracy: mean over the "
             "seeds that ran (each seed in brackets); the model of each run is its best validation epoch.", "",
             "| cell | variant | test accuracy | each seed | best val. (mean) | training min/run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for t in summary:
        lines.append(
            f"| {t['cell']} | {t['variant']} | {t['test_mean']:.4f} ± {t['test_std']:.4f} | "
            f"{', '.join(f'{s}: {a:.4f}' for s, a in zip(t['seeds'], t['test_each']))} | {t['val_mean']:.4f} | "
            f"{t['train_minutes']:.1f} |"
        )
    lms = [r for r in rows if r["variant"] == LM and "val_perplexity" in r]
    lines += ["", "Language models (validation perplexity): " + ", ".join(
        f"{r['cell']} {r['val_perplexity']:.1f} ({r['train_seconds'] / 60:.1f} min)" for r in lms)]
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += [
            "",
            "Failed: " + "; ".join(f"{r['variant']} {r['cell']} seed {r['seed']} ({r['error']})" for r in failed),
        ]
    skipped: dict = {}
    for r in rows:
        if "skipped" in r:
            skipped.setdefault(f"{r['variant']} {r['cell']}", []).append(str(r["seed"]))
    if skipped:
        lines += ["", "Not run (out of budget, or no language model): " +
                  "; ".join(f"{k} seed {', '.join(v)}" for k, v in skipped.items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=["gru", "lstm", "rnn"])
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="which to run [all]")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--budget", type=float, default=None, help="start no run after this many seconds [no limit]")
    p.add_argument("--data", default=None, help="where the IMDB data is (see train.py --help)")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("extra", nargs="*", help="more flags for every run, after -- (smoke runs: --epochs 1 --limit 400)")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = schedule(args)
    summary = table(rows)
    machine = device_name(args.device)
    Path(args.out, "ablation.json").write_text(json.dumps({"machine": machine, "date": date.today().isoformat(),
                                                            "table": summary, "runs": rows}, indent=2) + "\n")
    text = markdown(args, summary, rows, machine)
    Path(args.out, "ablation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
