"""A search's settings (Tune) and its Optuna study: the storage it lives in (SQLite beside the trials by default, any
SQLAlchemy URL, or Optuna's journal file), opened or created with its metric and direction checked, and how many of
its trials count toward --trials.

A trial counts when it finished (complete, pruned, or failed by its own settings: a non-finite loss), runs, or waits
to run. One whose worker died (SIGKILL, a lost machine: the heartbeat of an SQL storage marks it failed) or was
stopped (Ctrl-C, SIGTERM) does not: its settings wait to run again once, as a new trial (retry).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from rnnsent.config import RunConfig, TrainConfig
from rnnsent.training.tune.space import Space

PRUNERS = ("median", "halving", "none")
JOURNAL_PREFIX = "journal:"
# The attributes a study made by rnnsent tune carries, and the settings that may differ between its invocations.
MACHINERY = {f.name for f in dataclasses.fields(RunConfig)}


class TuneError(ValueError):
    """A search that cannot start: storage, study or folder; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Tune:
    """Everything a search needs, for this process and each worker process (it pickles)."""

    base: TrainConfig  # the flags' settings; base.out is the search's folder, each trial's run a folder in it
    space: Space
    trials: int  # in the study, in total, counting every invocation and machine
    jobs: int = 1  # worker processes on this machine
    storage: str | None = None  # None: SQLite, study.db in base.out
    study: str | None = None  # None: the name of base.out
    pruner: str = "median"
    seed: int = 0  # the sampler's
    heartbeat: int = 60  # seconds between a running trial's heartbeats (SQL storages); lost after two missed
    threads: int = 1  # CPU threads of each worker

    @property
    def out(self) -> Path:
        return Path(self.base.out)

    @property
    def study_name(self) -> str:
        return self.study or self.out.resolve().name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def metric(self) -> str:
        return f"val_{self.base.monitored()}"

    @property
    def direction(self) -> str:
        return "minimize" if self.base.monitored() == "loss" else "maximize"

    def fixed_settings(self) -> dict:
        """The settings every trial shares (not the machinery), and the space: recorded with the study."""
        return {**{k: v for k, v in self.base.to_dict().items() if k not in MACHINERY}, "space": self.space.text()}


def shown(url: str) -> str:
    """A storage URL as messages show it: without its password."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: shown as given, it has no password to hide
        return url


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def open_storage(t: Tune):
    """The study's storage: an RDBStorage with a heartbeat (stale trials are retried once), or a JournalStorage for
    journal:FILE. One line (TuneError) when it cannot be opened or reached."""
    import optuna
    import sqlalchemy.exc

    url = t.storage_url
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len(JOURNAL_PREFIX):])
        if not path.parent.is_dir():
            raise TuneError(f"--storage {url}: no folder {path.parent} to keep the journal in")
        return JournalStorage(JournalFileBackend(str(path)))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # workers wait for each other
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=t.heartbeat,
                                              grace_period=2 * t.heartbeat, heartbeat_stale_trial_callback=retry)
    except ImportError as e:
        raise TuneError(f"--storage {shown(url)}: its database driver is not installed ({_first_line(e.__cause__ or e)}"
                        "): pip install it (PostgreSQL: 'psycopg[binary]', or psycopg2-binary with "
                        "postgresql+psycopg2://...; MySQL: pymysql with mysql+pymysql://...)") from None
    except sqlalchemy.exc.ArgumentError as e:
        raise TuneError(f"--storage {shown(url)} is not a storage URL ({_first_line(e)}): give sqlite:///FILE, "
                        "postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB or journal:FILE") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise TuneError(f"cannot reach --storage {shown(url)}: {_first_line(e)}") from None


def retry(study, trial) -> None:
    """Queue a lost or stopped trial's settings to run again, once (a retry that is lost is not retried)."""
    import optuna

    if "retry_of" in trial.user_attrs:
        return
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions,
                                              user_attrs={"retry_of": trial.number}))


def open_study(t: Tune, storage, sampler=None, pruner=None, create: bool = True):
    """The study named t.study_name: created with its direction, metric and settings when new, else loaded with
    them checked (another direction or metric is one line; other settings are a note)."""
    import optuna

    exists = t.study_name in optuna.study.get_all_study_names(storage)
    if not exists and not create:
        raise TuneError(f"no study {t.study_name} in {shown(t.storage_url)}")
    study = optuna.create_study(storage=storage, study_name=t.study_name, direction=t.direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True) if not exists else optuna.load_study(
        study_name=t.study_name, storage=storage, sampler=sampler, pruner=pruner)
    attrs = study.user_attrs
    if len(study.directions) != 1 or study.direction.name.lower() != t.direction:
        raise TuneError(f"study {t.study_name} in {shown(t.storage_url)} exists and "
                        f"{'/'.join(d.name.lower() for d in study.directions)}s its objective, but this search "
                        f"would {t.direction} {t.metric}: pass its --monitor, or another --study")
    if "metric" not in attrs:
        if study.trials:
            raise TuneError(f"study {t.study_name} in {shown(t.storage_url)} was not made by rnnsent tune (it records "
                            "no metric); pass another --study")
        study.set_user_attr("metric", t.metric)
        study.set_user_attr("settings", t.fixed_settings())
    elif attrs["metric"] != t.metric:
        raise TuneError(f"study {t.study_name} in {shown(t.storage_url)} searches for the best {attrs['metric']}, "
                        f"but this search's is {t.metric}: pass its --monitor, or another --study")
    return study


def changed_settings(t: Tune, study) -> str:
    """What this invocation sets otherwise than the study's first ('' when nothing), for a note."""
    before, now = study.user_attrs.get("settings", {}), t.fixed_settings()
    return ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(now) if before.get(k) != now.get(k))


def lost(trial) -> bool:
    """A trial failed by no fault of its settings: its worker died or was stopped."""
    return trial.state.name == "FAIL" and "error" not in trial.user_attrs


def progress(study) -> tuple[int, int, int]:
    """(trials that count toward --trials, trials waiting to run, trials running)."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    return sum(not lost(t) for t in trials), states.count("WAITING"), states.count("RUNNING")
