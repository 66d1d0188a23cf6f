#!/usr/bin/env python3
"""rnnsent's `--recipe keras` next to a real Keras 3 model, on the same encoded data, in one run.

    python scripts/keras_parity.py --cells gru --epochs 3 --keras-python /path/to/venv/bin/python

Both train the exercise's model (Embedding(5000, 32) -> cell(100) -> Dense(1, sigmoid), Adam 1e-3,
batch 64, 500-token pre-padded reviews) on the same training split (the validation share carved out,
as in every rnnsent run) and are scored on the full 25,000-review test split after each epoch, with
the weights of that epoch (as Keras' model.evaluate does). Keras runs in its own process, because its
backend is fixed at import: TensorFlow where that interpreter has it, else torch. The table goes to
stdout and, with --json, to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KERAS_LAYERS = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}


def run_rnnsent(cell: str, epochs: int, seed: int, data, args) -> dict:
    from rnnsent.evaluate import evaluate
    from rnnsent.train import RECIPES, Trainer, TrainConfig

    recipe = {k: v for k, v in RECIPES["keras"].items() if k != "doc"}
    recipe.update(epochs=epochs, cell=cell, seed=seed, device=args.device, threads=args.threads,
                  out=str(Path(args.out) / f"rnnsent-{cell}-seed{seed}"), quiet=True)
    trainer = Trainer(TrainConfig(**recipe), data=data)
    trainer.out.mkdir(parents=True, exist_ok=True)  # fit() would; this script drives the epochs itself
    test_acc, seconds = [], []
    while trainer.epoch < epochs:
        metrics = trainer.train_epoch()
        seconds.append(metrics["epoch_seconds"])
        trainer.end_epoch(metrics)
        test_acc.append(evaluate(trainer.model, data.test, device=trainer.device)["accuracy"])
    return {"system": "rnnsent --recipe keras", "cell": cell, "seed": seed, "test_accuracy": test_acc,
            "epoch_seconds": seconds}


def run_keras(cells, epochs: int, seeds, data, args) -> tuple[list[dict], dict]:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="rnnsent-keras-parity-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "data.npz", x=data.train.tokens.numpy().astype(np.int32), y=data.train.labels.numpy(),
                 xt=data.test.tokens.numpy().astype(np.int32), yt=data.test.labels.numpy())
        spec = {"cells": list(cells), "epochs": epochs, "seeds": list(seeds), "threads": args.threads,
                "data": str(tmp / "data.npz"), "out": str(tmp / "result.json")}
        (tmp / "spec.json").write_text(json.dumps(spec))
        probe = "import importlib.util as u; print('tensorflow' if u.find_spec('tensorflow') else 'torch')"
        backend = subprocess.run([args.keras_python, "-c", probe], capture_output=True, text=True).stdout.strip() or "torch"
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        if not args.device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.run([args.keras_python, __file__, "--keras-worker", str(tmp / "spec.json")], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the Keras worker failed:\n{proc.stderr[-3000:]}")
        result = json.loads((tmp / "result.json").read_text())
    return result["rows"], result["versions"]


def keras_worker(spec_path: str) -> None:
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    if os.environ["KERAS_BACKEND"] == "tensorflow" and spec["threads"]:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    import keras

    arrays = np.load(spec["data"])
    x, y, xt, yt = arrays["x"], arrays["y"], arrays["xt"], arrays["yt"]
    rows = []
    for cell in spec["cells"]:
        for seed in spec["seeds"]:
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([keras.Input((x.shape[1],), dtype="int32"), keras.layers.Embedding(5000, 32),
                                      getattr(keras.layers, KERAS_LAYERS[cell])(100),
                                      keras.layers.Dense(1, activation="sigmoid")])
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
            test_acc, seconds = [], []
            for _ in range(spec["epochs"]):
                t0 = time.perf_counter()
                model.fit(x, y, batch_size=64, epochs=1, shuffle=True, verbose=0)
                seconds.append(time.perf_counter() - t0)
                test_acc.append(float(model.evaluate(xt, yt, batch_size=512, verbose=0, return_dict=True)["accuracy"]))
            rows.append({"system": f"Keras {keras.__version__} ({os.environ['KERAS_BACKEND']})", "cell": cell,
                         "seed": seed, "test_accuracy": test_acc, "epoch_seconds": seconds})
    versions = {"keras": keras.__version__, "backend": os.environ["KERAS_BACKEND"]}
    Path(spec["out"]).write_text(json.dumps({"rows": rows, "versions": versions}))


def table(rows: list[dict], epochs: int) -> str:
    head = ["cell", "system", "seed"] + [f"test acc. epoch {e + 1}" for e in range(epochs)] + ["s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["cell"], r["system"], str(r["seed"])]
                                       + [f"{a:.4f}" for a in r["test_accuracy"]]
                                       + [f"{sum(r['epoch_seconds']) / len(r['epoch_seconds']):.0f}"]) + " |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--keras-worker":
        keras_worker(sys.argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=["gru"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--limit", type=int, default=None, help="only N reviews per split (smoke runs)")
    p.add_argument("--expect-per-block", type=int, default=12500)
    p.add_argument("--keras-python", default=sys.executable, help="an interpreter with Keras 3 (and TensorFlow)")
    p.add_argument("--out", default="runs/keras_parity")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from rnnsent.data import prepare_imdb

    data = prepare_imdb(vocab_size=5000, max_len=500, encoding="keras", val_fraction=0.1, seed=0, limit=args.limit,
                        root=args.data, expected_per_block=args.expect_per_block)
    rows = [run_rnnsent(c, args.epochs, s, data, args) for c in args.cells for s in args.seeds]
    keras_rows, versions = run_keras(args.cells, args.epochs, args.seeds, data, args)
    rows += keras_rows
    rows.sort(key=lambda r: (r["cell"], r["system"], r["seed"]))
    text = table(rows, args.epochs)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "versions": versions, "device": args.device}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
