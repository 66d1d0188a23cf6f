"""The `rnnsent` command (and `python -m rnnsent`): `rnnsent train|evaluate|predict|explain|export|serve|tune [flags]`.

Each command takes exactly the flags of scripts/train.py, evaluate.py, predict.py and explain.py: both run the
same functions in rnnsent.cli. torch is imported only after the flags are parsed, so `--help` is instant.
"""
from __future__ import annotations

import sys

COMMANDS = {  # name -> (function in rnnsent.cli, one line for the help)
    "train": ("train_main", "train a model on IMDB (a run folder with checkpoints, metrics and a report)"),
    "pretrain": (
        "pretrain_main",
        "pretrain the embedding and recurrent layer as a language model (for train --pretrained)",
    ),
    "evaluate": ("evaluate_main", "test accuracy, loss and confusion counts of a checkpoint"),
    "predict": (
        "predict_main",
        "sentiment of review texts (a checkpoint, run folder or released model: gru, lstm, rnn)",
    ),
    "explain": ("explain_main", "which words made a checkpoint decide: word attributions (terminal, JSON, HTML)"),
    "export": ("export_main", "write a model as ONNX with its tokenizer as JSON, verified in onnxruntime"),
    "serve": ("serve_main", "an HTTP API with dynamic batching and a demo page (pip install 'rnnsent[serve]')"),
    "tune": ("tune_main", "search hyperparameters with Optuna, trials pruned by epoch (pip install 'rnnsent[tune]')"),
}


def usage() -> str:
    from rnnsent import __version__

    lines = [f"usage: rnnsent {{{','.join(COMMANDS)}}} [flags]   (rnnsent COMMAND --help for its flags)", "",
             f"rnnsent {__version__}: Keras-exact recurrent sentiment classifiers on IMDB, in PyTorch.", "",
             "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from rnnsent import __version__

        print(f"rnnsent {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"rnnsent: error: unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)} "
              "(see rnnsent --help)", file=sys.stderr)
        return 2
    from rnnsent import cli

    function, _ = COMMANDS[argv[0]]
    return getattr(cli, function)(argv[1:], prog=f"rnnsent {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
