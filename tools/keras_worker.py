#!/usr/bin/env python3
"""The Keras side of tools/bench.py and tools/keras_parity.py: the exercise's model in Keras 3, trained and
scored in a process of its own, because Keras fixes its backend at first import (and a TensorFlow process
should not load PyTorch). This file imports neither torch nor rnnsent.

    run_keras(python, backend, spec, arrays)   from the parent: writes the arrays, runs this file, returns its rows
    python tools/keras_worker.py SPEC.json    the worker itself (KERAS_BACKEND set by run_keras)
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def keras_backend(requested: str, python: str) -> str | None:
    """The backend the worker will use: `requested`, or for "auto" TensorFlow where that interpreter has it,
    else torch; None when it has no Keras at all."""
    probe = ("import importlib.util as u; print('keras' if u.find_spec('keras') else '', "
             "'tensorflow' if u.find_spec('tensorflow') else '')")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.split()
    if "keras" not in out:
        return None
    if requested != "auto":
        return requested
    return "tensorflow" if "tensorflow" in out else "torch"


def run_keras(python: str, backend: str, spec: dict, arrays: dict) -> tuple[list[dict], dict]:
    """Train as `spec` says on `arrays` (x, y, xt, yt: pre-padded int token ids and labels); return (rows, versions).

    spec: layers ({cell: Keras layer name}), seeds, epochs, warmup, batch_size, device, threads, vocab_size,
    embed_dim, hidden_size, and optionally num_layers and bidirectional (stacked Keras layers, each in
    Bidirectional). Each row: cell, seed, per epoch test_accuracy / epoch_seconds / eval_seconds,
    the first epoch's peak memory and, unless warmup is None, its clock after `warmup` steps
    (timed_samples, timed_steps, timed_seconds).
    """
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="rnnsent-keras-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "data.npz", **arrays)
        (tmp / "spec.json").write_text(json.dumps(dict(spec, data=str(tmp / "data.npz"), out=str(tmp / "result.json"))))
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        if not spec["device"].startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.run([python, str(Path(__file__).resolve()), str(tmp / "spec.json")], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"the Keras worker failed (exit {proc.returncode}); its output is above")
        result = json.loads((tmp / "result.json").read_text())
    return result["rows"], result["versions"]


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process' RSS high-water mark (VmHWM), so each run gets
    its own peak. Elsewhere the peak is the process' high-water mark so far (monotonic)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM; psutil has no high-water mark on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def worker(spec_path: str) -> None:
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    backend, cuda = os.environ["KERAS_BACKEND"], spec["device"].startswith("cuda")
    if backend == "tensorflow" and spec["threads"]:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    elif backend == "torch":
        import torch

        torch.set_num_threads(spec["threads"] or os.cpu_count() or 1)
    import keras

    def sync(logs):
        # Reading the loss waits for the step's result (TensorFlow, JAX); CUDA under torch needs a synchronize.
        if logs and "loss" in logs:
            float(logs["loss"])
        if backend == "torch" and cuda:
            import torch

            torch.cuda.synchronize()

    class Clock(keras.callbacks.Callback):
        """Times the steps after the first `warmup` (tracing, allocator growth) to the end of the epoch."""

        def __init__(self, n: int):
            super().__init__()
            self.n, self.steps = n, -(-n // spec["batch_size"])
            self.start, self.end, self.samples, self.timed = None, None, 0, 0

        def on_train_batch_end(self, batch, logs=None):
            if batch == spec["warmup"] - 1:
                sync(logs)
                self.start = time.perf_counter()
            elif batch >= spec["warmup"]:
                self.timed += 1
                self.samples += min(spec["batch_size"], self.n - batch * spec["batch_size"])
                if batch == self.steps - 1:
                    sync(logs)
                    self.end = time.perf_counter()

    arrays = np.load(spec["data"])
    x, y, xt, yt = arrays["x"], arrays["y"], arrays["xt"], arrays["yt"]
    rows = []
    for cell, layer in spec["layers"].items():
        for seed in spec["seeds"]:
            keras.utils.set_random_seed(seed)
            layers, stacked = spec.get("num_layers", 1), []  # stacked / bidirectional: tools/bench_models.py
            for k in range(layers):
                rnn = getattr(keras.layers, layer)(spec["hidden_size"], return_sequences=k < layers - 1)
                stacked.append(keras.layers.Bidirectional(rnn) if spec.get("bidirectional") else rnn)
            model = keras.Sequential([keras.Input((x.shape[1],), dtype="int32"),
                                      keras.layers.Embedding(spec["vocab_size"], spec["embed_dim"]),
                                      *stacked, keras.layers.Dense(1, activation="sigmoid")])
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
            gc.collect()
            reset_peak_rss()
            if backend == "torch" and cuda:
                import torch

                torch.cuda.reset_peak_memory_stats()
            clock = Clock(len(x))
            row = {"cell": cell, "seed": seed, "test_accuracy": [], "epoch_seconds": [], "eval_seconds": []}
            for epoch in range(spec["epochs"]):
                t0 = time.perf_counter()
                history = model.fit(x, y, batch_size=spec["batch_size"], epochs=1, shuffle=True, verbose=0,
                                    callbacks=[clock] if epoch == 0 and spec["warmup"] else [])
                row["epoch_seconds"].append(time.perf_counter() - t0)
                if epoch == 0:
                    row.update(_peak_memory(backend, cuda), train_loss=float(history.history["loss"][-1]))
                t0 = time.perf_counter()
                acc = model.evaluate(xt, yt, batch_size=512, verbose=0, return_dict=True)["accuracy"]
                row["eval_seconds"].append(time.perf_counter() - t0)
                row["test_accuracy"].append(float(acc))
            if spec["warmup"]:
                if clock.start is None or clock.end is None:
                    raise SystemExit(
                        f"--warmup {spec['warmup']} leaves no timed step: the epoch has {clock.steps} batches"
                    )
                row.update(timed_samples=clock.samples, timed_steps=clock.timed, timed_seconds=clock.end - clock.start)
            rows.append(row)
            del model
    versions = {"keras": keras.__version__, "backend": backend}
    if backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    Path(spec["out"]).write_text(json.dumps({"rows": rows, "versions": versions}))


def _peak_memory(backend: str, cuda: bool) -> dict:
    peak, kind = peak_rss_mb(), "process peak RSS"
    if cuda and backend == "torch":
        import torch

        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    elif cuda and backend == "tensorflow":
        import tensorflow as tf

        peak, kind = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, "tf GPU peak"
    return {"peak_memory_mb": peak, "peak_memory_kind": kind}


if __name__ == "__main__":
    worker(sys.argv[1])
