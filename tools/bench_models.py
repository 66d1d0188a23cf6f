#!/usr/bin/env python3
"""Training throughput of stacked and bidirectional models: rnnsent's fused CPU kernel, PyTorch's stock layers
(impl="torch") and Keras 3 on TensorFlow (tools/keras_worker.py), in one run on the same reviews.

Models: Keras' IMDB example (Embedding(20000, 128) -> Bidirectional(LSTM(64), return_sequences) ->
Bidirectional(LSTM(64)) -> Dense(1)) and a 2-layer bidirectional GRU of the exercise's size (Embedding(5000, 32),
GRU(100)). Every system trains on the same pre-padded reviews (Keras' input, no lengths), batch 64, Adam 1e-3,
one epoch; each clock starts after `--warmup` steps and stops at the epoch's end. Samples per second.

    python tools/bench_models.py --limit 1280 --max-len 200 --threads 1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout too (the tools beside this one are in its own folder)

import rnnsent  # noqa: E402,F401 (before torch: its OpenMP settings)
import torch  # noqa: E402
from bench_report import machine_info  # noqa: E402
from keras_worker import keras_backend, run_keras  # noqa: E402
from rnnsent.config import KERAS_CELL_NAMES  # noqa: E402
from rnnsent.data import prepare_imdb  # noqa: E402
from rnnsent.model.sentiment import SentimentRNN, count_parameters  # noqa: E402
from rnnsent.model.objective import loss as objective_loss  # noqa: E402

MODELS = {
    "keras-example-bilstm": dict(cell="lstm", vocab_size=20000, embed_dim=128, hidden_size=64, num_layers=2,
                                 bidirectional=True),
    "gru-2layer-bidirectional": dict(cell="gru", vocab_size=5000, embed_dim=32, hidden_size=100, num_layers=2,
                                     bidirectional=True),
}


def time_rnnsent(settings: dict, impl: str, x: torch.Tensor, y: torch.Tensor, batch: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = SentimentRNN(**settings, impl=impl).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, samples = None, 0
    for step, i in enumerate(range(0, len(x), batch)):
        xb, yb = x[i: i + batch], y[i: i + batch]
        loss = objective_loss(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == warmup - 1:
            start = time.perf_counter()
        elif step >= warmup:
            samples += len(xb)
    seconds = time.perf_counter() - start
    return {"samples_per_second": samples / seconds, "timed_samples": samples, "timed_seconds": seconds,
            "parameters": count_parameters(model)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=1280, help="training reviews (half of each label)")
    p.add_argument("--max-len", type=int, default=200, help="pre-padded review length")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--data", default=None, help="IMDB source (rnnsent.data.fetch) [the cache]")
    p.add_argument("--no-keras", action="store_true", help="leave out the Keras run")
    p.add_argument("--json", default=None, help="write the rows here too")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rows = []
    for name in args.models:
        settings = MODELS[name]
        data = prepare_imdb(vocab_size=settings["vocab_size"], max_len=args.max_len, encoding="keras",
                            limit=args.limit, val_fraction=0.1, root=args.data)
        x, y = data.train.tokens, data.train.labels
        for impl in ("auto", "torch"):
            row = time_rnnsent(settings, impl, x, y, args.batch_size, args.warmup)
            rows.append({"model": name, "system": "rnnsent fused" if impl == "auto" else "rnnsent stock", **row})
            print(json.dumps(rows[-1]), flush=True)
        backend = None if args.no_keras else keras_backend("tensorflow", sys.executable)
        if backend:
            spec = dict(layers={settings["cell"]: KERAS_CELL_NAMES[settings["cell"]]}, seeds=[0], epochs=1,
                        warmup=args.warmup, batch_size=args.batch_size, device="cpu", threads=args.threads,
                        vocab_size=settings["vocab_size"], embed_dim=settings["embed_dim"],
                        hidden_size=settings["hidden_size"], num_layers=settings["num_layers"],
                        bidirectional=settings["bidirectional"])
            arrays = dict(
                x=x.numpy().astype("int32"), y=y.numpy(), xt=x[:64].numpy().astype("int32"), yt=y[:64].numpy()
            )
            (k,), versions = run_keras(sys.executable, backend, spec, arrays)
            rows.append({"model": name, "system": f"Keras {versions['keras']} ({backend})",
                         "samples_per_second": k["timed_samples"] / k["timed_seconds"],
                         "timed_samples": k["timed_samples"], "timed_seconds": k["timed_seconds"]})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'model':<28}{'system':<34}{'samples/s':>10}{'vs stock':>10}")
    for row in rows:
        stock = next(r for r in rows if r["model"] == row["model"] and r["system"] == "rnnsent stock")
        print(f"{row['model']:<28}{row['system']:<34}{row['samples_per_second']:>10.1f}"
              f"{row['samples_per_second'] / stock['samples_per_second']:>9.2f}x")
    machine = dict(machine_info("cpu"), threads=args.threads)
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {args.threads} thread(s), torch {machine['torch']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": machine}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
