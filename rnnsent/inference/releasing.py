"""Releasing models: a run's best.pt copied into the released models' folder (checkpoints/) with its index
RESULTS.json, and the released models checked against that index. scripts/results.py --release and
--check-released call these. What goes in stays portable: no path of the training machine (the state through
rnnsent.storage.checkpoint.portable_state, the recorded commands through portable_command).
"""
from __future__ import annotations

import json
from pathlib import Path


def release(table: list[dict], dest: Path) -> None:
    """Copy each cell's best run (by validation accuracy) to dest/<cell>.pt (best.pt has no optimizer state) and
    index it in dest/RESULTS.json; cells not in `table` keep their entries."""
    from rnnsent.storage.checkpoint import load_checkpoint_state, save_checkpoint

    dest.mkdir(parents=True, exist_ok=True)
    # other cells stay
    index = (json.loads((dest / "RESULTS.json").read_text()) if (dest / "RESULTS.json").is_file() else {})
    for t in table:
        # Released files travel: no path of this machine goes in them (data_root, --out, --data). They predict
        # and cannot resume (best.pt has no optimizer state), so the per-epoch history stays in the run's
        # metrics.jsonl and the file keeps the chosen epoch's metrics: its size does not grow with the epochs.
        state = {**portable_state(load_checkpoint_state(Path(t["best_run"]) / "best.pt")), "history": []}
        save_checkpoint(dest / f"{t['cell']}.pt", state)
        report = json.loads((Path(t["best_run"]) / "report.json").read_text())
        command = recorded_command(Path(t["best_run"]))
        pretrained = json.loads((Path(t["best_run"]) / "config.json").read_text()).get("pretrained")
        if pretrained:  # the language model's command first: both together reproduce the file
            lm = Path(pretrained)
            command = recorded_command(lm if lm.is_dir() else lm.parent) + " && " + command
        index[t["cell"]] = {"file": f"{t['cell']}.pt", "test_accuracy": report["test_accuracy"], "command": command}
    (dest / "RESULTS.json").write_text(json.dumps(index, indent=2) + "\n")


def recorded_command(run: Path) -> str:
    """The command that made run folder `run` (its command.txt), without this machine's paths."""
    return " ".join(portable_command((run / "command.txt").read_text().split()))


def portable_command(argv: list[str]) -> list[str]:
    """A train.py command line without this machine's paths: --data goes (the data is found by the normal
    search and proved by its vocabulary), --out and --pretrained become runs/<its folder name>."""

    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--data":
            skip = True
            continue
        if arg.startswith("--data="):
            continue
        if i > 0 and argv[i - 1] in ("--out", "--pretrained"):
            arg = portable_run_path(arg)
        out.append(arg)
    return out


def check_released(released: Path, data_root=None) -> int:
    """Re-evaluate the released models in `released` on the full test split; 1 if any differs from its
    RESULTS.json, else 0 (a line per model either way)."""
    from rnnsent.inference.loading import load_checkpoint
    from rnnsent.inference.evaluate import evaluate

    index = json.loads((released / "RESULTS.json").read_text())
    failed = 0
    for cell, entry in index.items():
        loaded = load_checkpoint(released / entry["file"])
        data = loaded.prepare_data(root=data_root)
        acc = evaluate(loaded.model, data.test)["accuracy"]
        ok = abs(acc - entry["test_accuracy"]) < 1e-6
        failed += not ok
        print(f"{cell}: test accuracy {acc:.4f}, table {entry['test_accuracy']:.4f} {'ok' if ok else 'MISMATCH'}")
    return 1 if failed else 0

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
