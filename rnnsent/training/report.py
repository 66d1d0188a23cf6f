"""What a run writes besides checkpoints: config.json and command.txt, metrics.jsonl, report.json,
summary.txt and curves.png; and the progress bar and log lines on stderr."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def start_run_folder(out: Path, config: dict) -> None:
    """The resolved settings and the command line that produced the run, beside its checkpoints."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "command.txt").write_text(" ".join(sys.argv) + "\n")


def append_metrics(out: Path, row: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def write_metrics(out: Path, history: list[dict]) -> None:
    """metrics.jsonl holding exactly `history`, one row per epoch (a resumed run's, from its checkpoint)."""
    from rnnsent.storage.files import atomic_write

    with atomic_write(out / "metrics.jsonl") as f:
        f.write("".join(json.dumps(row) + "\n" for row in history).encode())


def epoch_line(row: dict, improved: bool) -> str:
    return (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
            + (f" macro-F1 {row['val_macro_f1']:.4f}" if "val_macro_f1" in row else "")
            + f" | {row['epoch_seconds']:.1f} s, "
            f"{row['samples_per_second']:.0f} samples/s" + (" (best)" if improved else ""))


def final_report(cell: str, test: dict, best_val: float, history: list[dict], device, rnn_implementation: str,
                 trainable_params: int, monitor: str = "accuracy", classes: list | None = None) -> dict:
    """report.json's content: test metrics of the best checkpoint and how the run went. IMDB's keys are as they
    always were; the user's own data (`classes`) adds the classes, macro-F1 and the confusion matrix."""
    epoch_times = [r["epoch_seconds"] for r in history]
    best_row = _best_row(history, monitor)
    out = {
        "cell": cell, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        **({"confusion": {k: test[k] for k in ("tp", "fp", "tn", "fn")}} if "tp" in test else {}),
        "best_val_accuracy": best_val if monitor == "accuracy" else (best_row or {}).get("val_accuracy", -1.0),
        "epochs_run": len(history),
        "mean_epoch_seconds": sum(epoch_times) / len(epoch_times) if epoch_times else 0.0,
        "device": str(device), "rnn_implementation": rnn_implementation, "trainable_params": trainable_params,
    }
    if classes or monitor != "accuracy":
        out.update(monitor=monitor, best_epoch=(best_row or {}).get("epoch"), test_macro_f1=test["macro_f1"],
                   confusion_matrix=test["confusion_matrix"])
        if classes:
            out["classes"] = list(classes)
    return out


def _best_row(history: list[dict], monitor: str) -> dict | None:
    """The epoch best.pt holds: the first with the best validation score (lower is better for loss)."""
    key = f"val_{monitor}"
    rows = [r for r in history if key in r]
    if not rows:
        return None
    sign = -1 if monitor == "loss" else 1
    return max(rows, key=lambda r: sign * r[key])


def confusion_lines(matrix: list[list[int]], classes: list | None = None) -> list[str]:
    """The confusion matrix as a table: one row per true class, one column per predicted class."""
    names = [str(c) for c in classes] if classes else [str(k) for k in range(len(matrix))]
    width = max(8, *(len(n) for n in names), *(len(str(v)) for row in matrix for v in row)) + 1
    corner = "true/predicted"
    lines = [f"{corner:<{width + 6}}" + "".join(f"{n[:width]:>{width}}" for n in names)]
    lines += [
        f"{names[i][: width + 5]:<{width + 6}}" + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)
    ]
    return lines


def write_report(out: Path, report: dict, test: dict, history: list[dict], model_summary: str) -> str:
    """Write report.json, curves.png and summary.txt into the run folder; return the summary."""
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot = plot_curves(history, out / "curves.png")
    if "tp" in test:
        positive = (f"; positive: {report['positive_label']}, threshold {report['threshold']:.4g}"
                    if "positive_label" in report else "")
        scored = (f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}  "
                  f"(tp {test['tp']}, fp {test['fp']}, tn {test['tn']}, fn {test['fn']}{positive})")
    else:
        scored = "\n".join(
            [
                f"test accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  loss {test['loss']:.4f}",
                *confusion_lines(test["confusion_matrix"], report.get("classes")),
            ]
        )
    summary = "\n".join([
        model_summary, "",
        scored,
        f"best validation accuracy {report['best_val_accuracy']:.4f}; {len(history)} epoch(s), "
        f"{report['mean_epoch_seconds']:.1f} s per epoch on {report['device']}",
        f"checkpoints: {out / 'best.pt'} (best), {out / 'last.pt'} (resumable); metrics: {out / 'metrics.jsonl'}"
        + (f"; curves: {plot}" if plot else ""),
    ])
    (out / "summary.txt").write_text(summary + "\n")
    return summary


def plot_curves(history: list[dict], path: Path) -> Path | None:
    """Training and validation loss/accuracy per epoch as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def progress(total: int, initial: int, desc: str, disable: bool):
    """The epoch's progress bar on stderr; while it is drawn, print() (a callback's) writes above it."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=disable, leave=False,
               file=sys.stderr, dynamic_ncols=True)
    if not disable:
        _print_above(bar)
    return bar


class _LinesAbove:
    """sys.stdout while a progress bar is drawn: each whole line lifts the bar, is written, and the bar is drawn
    again under it (as tqdm.write does), instead of landing in the middle of the bar's line."""

    def __init__(self, stream, bar):
        self.stream, self.bar, self.pending = stream, bar, ""

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:
            lines, self.pending = self.pending.rsplit("\n", 1)
            with self.bar.get_lock():
                self.bar.clear(nolock=True)
                self.stream.write(lines + "\n")
                self.stream.flush()
                self.bar.refresh(nolock=True)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # encoding, isatty, fileno, ...: the stream's
        return getattr(self.stream, name)


def _print_above(bar) -> None:
    """Route sys.stdout through _LinesAbove until `bar` closes (also when an error leaves it to be collected)."""
    stdout = sys.stdout
    lines = sys.stdout = _LinesAbove(stdout, bar)
    close = bar.close

    def close_and_restore():
        close()
        if sys.stdout is lines:  # unless someone has replaced it since
            sys.stdout = stdout
        if lines.pending:
            stdout.write(lines.pending)
            lines.pending = ""

    bar.close = close_and_restore


def log(message: str) -> None:
    """A line on stderr that does not tear the progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
