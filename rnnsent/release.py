"""What a released checkpoint (checkpoints/, given to others) leaves out: the paths of the machine that wrote it."""
from __future__ import annotations

from pathlib import Path

# Config fields that name places on the machine that wrote a checkpoint: a released file must not carry them.
MACHINE_PATHS = ("data_root", "cache_dir", "resume")


def portable_run_path(path) -> str:
    """A run folder (or a checkpoint in one) as runs/<folder>[/<file>], without this machine's part of the path."""
    path = Path(path)
    return str(Path("runs") / (Path(path.parent.name, path.name) if path.suffix == ".pt" else path.name))


def portable_state(state: dict) -> dict:
    """`state` without the paths of the machine that wrote it, for files given to others (checkpoints/)."""
    config = dict(state.get("config", {}))
    for key in MACHINE_PATHS:
        if key in config:
            config[key] = None
    for key in ("out", "pretrained"):  # run folders: runs/<name>, as the recorded command has them
        if config.get(key):
            config[key] = portable_run_path(config[key])
    return {**state, "config": config}
