#!/usr/bin/env python3
"""rnnsent's `--recipe keras` next to a real Keras 3 model, on the same encoded data, in one run.

    python tools/keras_parity.py --cells gru --epochs 3 --keras-python /path/to/venv/bin/python

Both train the exercise's model (Embedding(5000, 32) -> cell(100) -> Dense(1, sigmoid), Adam 1e-3,
batch 64, 500-token pre-padded reviews) on the same training split (the validation share carved out,
as in every rnnsent run) and are scored on the full 25,000-review test split after each epoch, with
the weights of that epoch (as Keras' model.evaluate does). Keras runs in its own process
(tools/keras_worker.py, shared with bench.py), because its backend is fixed at import: TensorFlow where
that interpreter has it, else torch. The table goes to stdout and, with --json, to a file.

    python tools/keras_parity.py --model keras-example --cells lstm --epochs 2 --threads 1

--model keras-example trains Keras' own IMDB example instead, in both: Embedding(20000, 128) ->
Bidirectional(LSTM(64), return_sequences) -> Bidirectional(LSTM(64)) -> Dense(1, sigmoid), 200-token
pre-padded reviews, batch 32 (the example's settings), everything else as above.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout too (keras_worker is in this folder)

from keras_worker import keras_backend, run_keras  # noqa: E402
from rnnsent.config import KERAS_CELL_NAMES, TrainConfig, recipe_settings  # noqa: E402

# --model: the architecture and the data settings both sides train with (rnnsent's TrainConfig fields).
MODELS = {
    "exercise": {},  # --recipe keras as it is
    "keras-example": {"vocab_size": 20000, "embed_dim": 128, "hidden_size": 64, "num_layers": 2,
                      "bidirectional": True, "max_len": 200, "batch_size": 32},
}


def run_rnnsent(cell: str, epochs: int, seed: int, data, args) -> dict:
    from rnnsent.inference.evaluate import evaluate
    from rnnsent.training.trainer import Trainer

    recipe = recipe_settings("keras", cell)
    recipe.update(MODELS[args.model])
    recipe.update(epochs=epochs, cell=cell, seed=seed, device=args.device, threads=args.threads,
                  out=str(Path(args.out) / f"rnnsent-{cell}-seed{seed}"), quiet=True)
    trainer = Trainer(TrainConfig(**recipe), data=data)
    test_acc = []  # with each epoch's weights, before fit() reloads the best ones for its own report
    trainer.add_callback(
        "on_epoch_end", lambda t: test_acc.append(evaluate(t.model, data.test, device=t.device)["accuracy"])
    )
    trainer.fit()
    return {"system": "rnnsent --recipe keras" + ("" if args.model == "exercise" else f" ({args.model})"), "cell": cell,
            "seed": seed, "test_accuracy": test_acc, "epoch_seconds": [r["epoch_seconds"] for r in trainer.history]}


def table(rows: list[dict], epochs: int) -> str:
    head = ["cell", "system", "seed"] + [f"test acc. epoch {e + 1}" for e in range(epochs)] + ["s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["cell"], r["system"], str(r["seed"])]
                                       + [f"{a:.4f}" for a in r["test_accuracy"]]
                                       + [f"{sum(r['epoch_seconds']) / len(r['epoch_seconds']):.0f}"]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="exercise", choices=sorted(MODELS),
                   help="exercise: the exercise's model; keras-example: Keras' IMDB example (see above)")
    p.add_argument("--cells", nargs="+", default=["gru"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--limit", type=int, default=None, help="only N reviews per split (smoke runs)")
    p.add_argument("--keras-python", default=sys.executable, help="an interpreter with Keras 3 (and TensorFlow)")
    p.add_argument("--keras-backend", default="auto", choices=("auto", "tensorflow", "torch", "jax"),
                   help="auto: tensorflow where importable, else torch")
    p.add_argument("--out", default="runs/keras_parity")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from rnnsent.data import prepare_imdb

    config = TrainConfig(**{**recipe_settings("keras"), **MODELS[args.model]}, limit=args.limit)
    data = prepare_imdb(**config.data_args(), root=args.data)
    rows = [run_rnnsent(c, args.epochs, s, data, args) for c in args.cells for s in args.seeds]
    backend = keras_backend(args.keras_backend, args.keras_python)
    if backend is None:
        raise SystemExit(f"{args.keras_python} has no Keras; pass --keras-python with one that has Keras 3")
    spec = {"layers": {c: KERAS_CELL_NAMES[c] for c in args.cells}, "seeds": args.seeds, "epochs": args.epochs,
            "warmup": None, "batch_size": config.batch_size, "device": args.device, "threads": args.threads,
            "vocab_size": config.vocab_size, "embed_dim": config.embed_dim, "hidden_size": config.hidden_size,
            "num_layers": config.num_layers, "bidirectional": config.bidirectional}
    arrays = {"x": data.train.tokens.numpy().astype("int32"), "y": data.train.labels.numpy(),
              "xt": data.test.tokens.numpy().astype("int32"), "yt": data.test.labels.numpy()}
    keras_rows, versions = run_keras(args.keras_python, backend, spec, arrays)
    rows += [dict(r, system=f"Keras {versions['keras']} ({backend})") for r in keras_rows]
    rows.sort(key=lambda r: (r["cell"], r["system"], r["seed"]))
    print(table(rows, args.epochs))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "versions": versions, "device": args.device}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
