"""The workers of a search: each runs trials of the shared study until it holds --trials, on its share of the cores.

`--jobs 1` is this process; `--jobs N` is N processes (spawned, each its own process group), and this one forwards
Ctrl-C or SIGTERM to them as SIGTERM: each stops its trial between two steps with last.pt saved, the trial's
settings wait to run again, and the trials that finished are kept. A worker killed outright (SIGKILL) leaves its
trial running in the study until its heartbeat is missed; another worker then marks it failed and runs its settings
again, and the others go on.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import warnings

import numpy as np

from rnnsent.runtime import StopFlag
from rnnsent.training.stopping import TrainingInterrupted
from rnnsent.training.tune import study as studies
from rnnsent.training.tune.trial import Objective, TrialFailed
from rnnsent.training.tune.study import Tune

EXIT_WORKER_ERROR = 2


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_sampler(t: Tune, trials_before: int, worker: int):
    """Seeded TPE. The seed mixes --search-seed with the trials the study held when this worker started and the
    worker's number, so that parallel workers and later invocations do not draw the same random start again."""
    import optuna

    seed = int(np.random.SeedSequence([t.seed, trials_before, worker]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # the lie: running trials' values, in parallel


def make_pruner(name: str):
    import optuna

    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
            "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
            "none": optuna.pruners.NopPruner}[name]()


def trial_line(trial, metric: str) -> str:
    """One line for a finished trial: its state, metric, epochs and time, and its settings."""
    settings = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial.params.items())
    epochs, state = trial.user_attrs.get("epochs", 0), trial.state.name.lower()
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
    if state == "complete":
        what = f"complete: best {metric} {trial.value:.4f} in {epochs} epoch(s)"
    elif state == "pruned":
        what = f"pruned after epoch {epochs}: {metric} {trial.value:.4f}" if trial.value is not None else "pruned"
    else:
        what = f"failed: {trial.user_attrs.get('error') or trial.user_attrs.get('stopped') or 'stopped'}"
    return f"trial {trial.number} {what}, {seconds:.0f} s ({settings})"


def work(t: Tune, worker: int = 0) -> int:
    """Run trials of the study until it holds t.trials (counted as rnnsent.training.tune.study says); returns the
    exit status: 0, or a signal's 128 + number when Ctrl-C or SIGTERM stopped it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial comes from trial_line
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    study = studies.open_study(t, studies.open_storage(t), create=False)
    study.sampler, study.pruner = make_sampler(t, len(study.trials), worker), make_pruner(t.pruner)
    data = None
    if not t.space.varies_data():
        from rnnsent.data import prepare_data

        data = prepare_data(t.base, t.base.vocab_size)
    with StopFlag() as stop:
        objective = Objective(t, data, stop)
        show = [] if t.base.quiet else [lambda s, trial: say(trial_line(trial, t.metric))]
        while not stop.requested:
            counted, waiting, running = studies.progress(study)
            if counted >= t.trials and not waiting:
                if not (running and t.heartbeat and not t.storage_url.startswith(studies.JOURNAL_PREFIX)):
                    break
                # a running trial may belong to a worker that died: wait until it ends or misses its heartbeat
                _wait(min(1.0, t.heartbeat), stop)
                optuna.storages.fail_stale_trials(study)
                continue
            try:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=show)
            except TrainingInterrupted as e:
                trial = study.get_trials(deepcopy=False)[objective.current.number]
                studies.retry(study, trial)
                if not t.base.quiet:
                    say(f"trial {trial.number} stopped ({str(e).split(';')[0]}); its settings run again next time")
                return e.exit_code
    return 128 + stop.requested if stop.requested else 0


def _wait(seconds: float, stop: StopFlag) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop.requested:
        time.sleep(0.2)


def _worker_process(t: Tune, worker: int) -> None:
    """A spawned worker: its own process group (the terminal's Ctrl-C reaches the parent, which forwards it once)."""
    os.setpgrp()
    try:
        sys.exit(work(t, worker))
    except (ValueError, OSError) as e:
        say(f"error: worker {worker}: {e}")
        sys.exit(EXIT_WORKER_ERROR)


def run_workers(t: Tune) -> int:
    """t.jobs workers on the study; returns 0, or 128 + the signal that stopped them."""
    if t.jobs == 1:
        return work(t)
    context = multiprocessing.get_context("spawn")  # not fork: torch's threads do not survive a fork
    procs = [context.Process(target=_worker_process, args=(t, i), name=f"rnnsent-tune-{i}") for i in range(t.jobs)]
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        # the first signal asks every worker to stop between steps; a second Ctrl-C stops them at once
        sent = signal.SIGTERM if len(received) == 1 else signal.SIGINT
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, sent)

    before = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    for i, p in enumerate(procs):
        if p.exitcode is not None and p.exitcode < 0 and not received:
            say(f"worker {i} (pid {p.pid}) was killed by {signal.Signals(-p.exitcode).name}; the other workers went "
                "on, and its trial was marked failed once its heartbeat was missed")
    if received:
        return 128 + received[0]
    return EXIT_WORKER_ERROR if any(p.exitcode == EXIT_WORKER_ERROR for p in procs) else 0
