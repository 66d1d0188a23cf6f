"""`rnnsent tune`: a hyperparameter search on Optuna (docs/tuning.md). tune() opens or creates the study, checks the
folder, runs the workers and writes the results; the same call again continues the study to t.trials in total."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from rnnsent.training.tune import results, study as studies
from rnnsent.training.tune.study import Tune, TuneError
from rnnsent.training.tune.workers import run_workers, say


def require_optuna() -> None:
    try:
        importlib.import_module("optuna")
    except ImportError:
        raise ImportError("rnnsent tune needs Optuna: pip install 'rnnsent[tune]'") from None


def _check_folder(out: Path, study) -> None:
    """A new study must not write its trial-0000... over the trial folders of another one in the same --out."""
    taken = sorted(p.name for p in out.glob("trial-*") if p.is_dir())
    if taken and not study.trials:
        raise TuneError(f"{out} holds trial folders of another search ({', '.join(taken[:3])}"
                        f"{', ...' if len(taken) > 3 else ''}) but study {study.study_name} has no trials; pass "
                        "that search's --storage and --study to continue it, or another --out")


def open_search(t: Tune):
    """The study, created or loaded and checked (one line, TuneError, for what is wrong); its folder made."""
    require_optuna()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    created = not t.out.exists()
    t.out.mkdir(parents=True, exist_ok=True)  # the default storage lives in it
    try:
        study = studies.open_study(t, studies.open_storage(t))
        _check_folder(t.out, study)
    except BaseException:
        if created and not any(t.out.iterdir()):
            t.out.rmdir()  # a search refused before it began leaves no folder behind
        raise
    return study


def tune(t: Tune) -> tuple[int, dict]:
    """Run the search `t` describes; returns (exit status: 0, or 128 + the signal that stopped it, 2 when a
    worker failed, and the summary: trials by state, the best trial, its folder, the files written)."""
    study = open_search(t)
    if changed := studies.changed_settings(t, study):
        say(f"note: study {t.study_name}'s first trials ran with other settings ({changed[:300]}); their scores "
            "may not compare with this invocation's")
    counted, waiting, _ = studies.progress(study)
    if counted >= t.trials and not waiting:
        say(f"study {t.study_name} already holds {counted} trial(s); raise --trials to run more")
    elif not t.base.quiet:
        say(f"study {t.study_name} in {studies.shown(t.storage_url)}: {counted} of {t.trials} trial(s) so far; "
            f"{t.jobs} worker(s) of {t.threads} thread(s); best {t.metric} ({t.direction}); space: {t.space.text()}")
    if t.jobs > 1 and not t.space.varies_data():
        from rnnsent.data import prepare_data

        prepare_data(t.base, t.base.vocab_size)  # once, before the workers: its errors here, its cache theirs
    code = run_workers(t) if counted < t.trials or waiting else 0
    return code, finish(t)


def finish(t: Tune) -> dict:
    """The table (printed on stdout unless quiet, and trials.csv), the best link and the pictures."""
    import optuna

    study = optuna.load_study(study_name=t.study_name, storage=studies.open_storage(t))
    rows = results.rows(study, t.metric)
    best = results.best_trial(study)
    results.write_csv(rows, t.out / "trials.csv")
    link = results.link_best(t.out, best) if best is not None else None
    notes = results.pictures(study, t.out)
    states = [r["state"] for r in rows]
    summary = {"study": t.study_name, "storage": studies.shown(t.storage_url), "metric": t.metric,
               "trials": len(rows), **{s: states.count(s) for s in sorted(set(states))},
               "best_trial": best.number if best else None, "best_value": best.value if best else None,
               "best_params": best.params if best else None,
               "best_folder": str(link) if link else (best.user_attrs.get("folder") if best else None),
               "table": str(t.out / "trials.csv")}
    if not t.base.quiet:
        print(results.table(rows, best.number if best else None))
        for note in notes:
            say(note)
        if best is not None:
            where = link or f"{best.user_attrs.get('folder')} on {best.user_attrs.get('host')}"
            say(f"best: trial {best.number}, {t.metric} {best.value:.4f} ({where}); table: {t.out / 'trials.csv'}")
    else:
        print(json.dumps(summary))
    return summary
