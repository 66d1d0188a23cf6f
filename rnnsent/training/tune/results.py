"""What a search leaves beside its trials: the results table (printed, and trials.csv), `best` (a link to the best
trial's run folder, which every command that takes a run folder reads), and Optuna's optimisation history and
parameter importances as pictures (history.png, importances.png)."""
from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

from rnnsent.storage.files import atomic_write
from rnnsent.training.tune.study import lost
from rnnsent.training.tune.trial import trial_folder

COLUMNS = ("trial", "state", "metric", "epochs", "seconds")


def state_of(trial) -> str:
    """complete, pruned, failed (by its settings), lost (its worker died), stopped (Ctrl-C, SIGTERM), running,
    waiting."""
    name = trial.state.name.lower()
    if name == "fail":
        return "stopped" if "stopped" in trial.user_attrs else "lost" if lost(trial) else "failed"
    return name


def rows(study, metric: str) -> list[dict]:
    """One row per trial, in trial order: trial, state, its parameters, the metric (a pruned trial's last),
    epochs, seconds, and a note (its error, the trial it retries)."""
    names = sorted({p for t in study.trials for p in t.params})
    out = []
    for t in study.trials:
        value = t.value if t.value is not None else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        note = t.user_attrs.get("error") or t.user_attrs.get("stopped") or (
            f"retry of trial {t.user_attrs['retry_of']}" if "retry_of" in t.user_attrs else "")
        out.append({"trial": t.number, "state": state_of(t), **{n: t.params.get(n) for n in names},
                    metric: value, "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
                    "seconds": round(seconds, 1) if seconds is not None else None, "note": note})
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def table(rows_: list[dict], best: int | None) -> str:
    """The rows as aligned text, the best trial marked with *."""
    if not rows_:
        return "no trials yet"
    keys = [k for k in rows_[0] if k != "note"]
    cells = [[_cell(r[k]) + ("*" if k == "trial" and r["trial"] == best else "") for k in keys] + [r["note"][:60]]
             for r in rows_]
    header = keys + ["note"]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def write_csv(rows_: list[dict], path: Path) -> None:
    if not rows_:
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows_[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows_)
    with atomic_write(path) as f:
        f.write(text.getvalue().encode())


def best_trial(study):
    """The complete trial with the best value, or None."""
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    return study.best_trial if complete else None


def link_best(out: Path, trial) -> Path | None:
    """`out/best` -> the best trial's run folder (relative, replaced atomically); None when that folder is not on
    this machine (the trial ran elsewhere on a shared storage)."""
    folder = trial_folder(out, trial.number)
    if not (folder / "best.pt").is_file():
        return None
    link, tmp = out / "best", out / f".best.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(folder.name, tmp, target_is_directory=True)
    os.replace(tmp, link)
    return link


def pictures(study, out: Path) -> list[str]:
    """history.png and importances.png (Optuna's plots; importances by PED-ANOVA, which needs no scikit-learn);
    what could not be drawn is said, not raised."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna
        from optuna.visualization import matplotlib as plots
    except ImportError:
        return ["no pictures: they need matplotlib (pip install 'rnnsent[tune]')"]
    made, notes = [], []
    draw = {"history.png": lambda: plots.plot_optimization_history(study),
            "importances.png": lambda: plots.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())}
    for name, plot in draw.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API and small-sample warnings
            try:
                ax = plot()
                ax.figure.set_size_inches(8, 4.5)
                ax.figure.tight_layout()
                ax.figure.savefig(out / name, dpi=100)
                made.append(name)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few complete trials for it
                notes.append(f"no {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            finally:
                plt.close("all")
    return notes
