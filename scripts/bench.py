#!/usr/bin/env python3
"""Training throughput of rnnsent against a plain PyTorch loop and Keras 3, in one run on one device.

For each cell (GRU, LSTM, SimpleRNN) it trains, on the same reviews and at batch 64 with Adam 1e-3:

  rnnsent     rnnsent.train.Trainer's own loop (encoding "fast": true lengths, length-bucketed batches; on
              CPU the fused recurrent kernel of rnnsent/fused.py, on CUDA PyTorch's cuDNN layers)
  plain       an ordinary PyTorch loop: DataLoader(TensorDataset) over the 500-token pre-padded tensors,
              stock nn.Embedding + nn.GRU/LSTM/RNN + nn.Linear, BCEWithLogitsLoss, Adam; no flush-to-zero
  plain+ftz   the same loop with torch.set_flush_denormal(True) (the issue quotes both)
  keras       Keras 3 model.fit in a subprocess: TensorFlow backend where TensorFlow is importable, else
              torch (a backend is fixed at Keras' first import, hence the separate process)

Every system is timed the same way: the first --warmup steps (kernel selection, tf.function tracing,
allocator growth) run untimed, then the clock runs from the end of step warmup-1 to the end of the
epoch. Data preparation, model building and evaluation are never inside the clock. On CPU a full
epoch of the plain loop takes too long, so --limit keeps that many reviews per split (the same ones for
every system); test accuracy is then on the limited test split. Each timed PyTorch run gets a fresh
process (--isolation process) that sets its thread count and flush-to-zero before its first op: both
are per-thread state that OpenMP workers copy when they start (see run_job).

    RNNSENT_CACHE=/work/cache /work/venv-bench/bin/python scripts/bench.py \
        --data /work/data/package/reviews.json --limit 4978 --json /work/bench-results/cpu.json
    python scripts/bench.py --smoke --json /tmp/smoke.json          # seconds, fixture data (CI)
    python scripts/bench.py --ablation --cells gru ...              # the CPU levers, one at a time
    python scripts/bench.py --busy --repeats 5 ...                  # idle vs beside a busy process (bench_busy.py)

This module deliberately imports torch only inside functions: the Keras worker (the same file run
with --keras-worker) must not load PyTorch into a TensorFlow process.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout too

FIXTURE = REPO / "tests" / "fixtures" / "imdb" / "reviews.json"
CELLS = ("gru", "lstm", "rnn")
KERAS_LAYERS = {"gru": "GRU", "lstm": "LSTM", "rnn": "SimpleRNN"}
SYSTEMS = ("rnnsent", "plain", "plain+ftz", "keras")
# The targets on CPU: rnnsent at least this many times Keras (TensorFlow) in the same run.
CPU_TARGET_VS_KERAS = 2.0


# -- machine and memory -------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "torch": _version("torch"), "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
        "keras": _version("keras"), "numpy": _version("numpy"), "device": device,
    }
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process' RSS high-water mark (VmHWM), so each system gets
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


# -- timing helpers -----------------------------------------------------------------------------
def _sync_fn(device):
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _memory_start(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _memory_peak(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    return peak_rss_mb(), "process peak RSS"


def _row(system, cell, samples, seconds, steps, peak, peak_kind, test, extra=None) -> dict:
    return {
        "system": system, "cell": cell, "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
        "timed_samples": samples, "timed_steps": steps, "timed_seconds": seconds,
        "peak_memory_mb": peak, "peak_memory_kind": peak_kind,
        "test_accuracy": test["accuracy"], "test_reviews": test["n"], "eval_seconds": test["seconds"],
        **(extra or {}),
    }


# -- data ---------------------------------------------------------------------------------------
def base_config(args, cell: str, **overrides):
    from rnnsent.train import TrainConfig

    values = dict(cell=cell, encoding="fast", limit=args.limit, data_root=args.data,
                  expected_per_block=args.expect_per_block, cache_dir=args.cache_dir, epochs=1,
                  batch_size=args.batch_size, device=args.device, threads=args.threads, quiet=True,
                  max_len=args.max_len, out=str(Path(tempfile.gettempdir()) / "rnnsent-bench"))
    values.update(overrides)
    return TrainConfig(**values)


def prepare(args) -> dict:
    """Both encodings of the same reviews: "fast" for rnnsent, "keras" (pre-padded) for the baselines."""
    from rnnsent.data import prepare_imdb

    c = base_config(args, "gru")
    data = {enc: prepare_imdb(**dataclasses.replace(c, encoding=enc).data_args(), root=c.data_root,
                              cache_dir=c.cache_dir) for enc in ("fast", "keras")}
    for split in ("train", "test"):  # the same reviews in the same order, whatever the padding
        a, b = getattr(data["fast"], split), getattr(data["keras"], split)
        if not (a.lengths.equal(b.lengths) and a.labels.equal(b.labels)):
            raise RuntimeError(f"the two encodings of the {split} split hold different reviews")
    return data


# -- rnnsent ------------------------------------------------------------------------------------
def run_rnnsent(args, config, data, system="rnnsent", save_checkpoint=False, patch=None) -> dict:
    """rnnsent's Trainer, its real train_epoch(); the clock starts once --warmup steps are done.
    `patch(trainer)` (ablation prototypes only) may swap a part of the trainer before it runs."""
    from rnnsent.evaluate import evaluate
    from rnnsent.train import Trainer

    trainer = Trainer(config, data)
    if patch is not None:
        patch(trainer)
    sync = _sync_fn(trainer.device)
    marks = {"start": None, "samples": 0, "steps": 0}
    original = trainer.train_batches.iterate

    def timed_iterate(epoch, start=0):
        batches = original(epoch, start)
        i = 0
        while True:
            if i == args.warmup:  # steps 0 .. warmup-1 are done: start the clock
                sync()
                marks["start"] = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            if i >= args.warmup:
                marks["samples"] += batch[2].shape[0]
                marks["steps"] += 1
            i += 1
            yield batch

    trainer.train_batches.iterate = timed_iterate
    _memory_start(trainer.device)
    metrics = trainer.train_epoch()  # ends with a host sync (the epoch's loss sums)
    sync()
    end = time.perf_counter()
    peak, peak_kind = _memory_peak(trainer.device)
    if marks["start"] is None:
        raise SystemExit(f"--warmup {args.warmup} leaves no timed step: the epoch has {len(trainer.train_batches)} batches")
    test = _timed(lambda: evaluate(trainer.model, data.test, batch_size=config.eval_batch_size, device=trainer.device))
    extra = {"train_loss": metrics["train_loss"], "encoding": config.encoding, "flush_denormal": config.flush_denormal,
             "threads": config.threads or os.cpu_count(), "eval_batch_size": config.eval_batch_size,
             "rnn_implementation": trainer.rnn_implementation(), "retain_memory": config.retain_memory}
    if save_checkpoint:  # what --ckpt-every N would add: one save per N steps
        trainer.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        trainer.save("last.pt")
        extra["checkpoint_seconds"] = time.perf_counter() - t0
    return _row(system, config.cell, marks["samples"], end - marks["start"], marks["steps"], peak, peak_kind, test, extra)


def _timed(evaluate_fn) -> dict:
    t0 = time.perf_counter()
    result = evaluate_fn()
    return {"accuracy": result["accuracy"], "n": result["n"], "seconds": time.perf_counter() - t0}


# -- the plain PyTorch loop ---------------------------------------------------------------------
def plain_model(cell: str, vocab_size: int = 5000, embed_dim: int = 32, hidden: int = 100):
    """Stock modules, PyTorch's default initialisation: what a tutorial would write."""
    import torch
    from torch import nn

    class PlainRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, embed_dim)
            self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell](embed_dim, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(self.embedding(x))  # (B, T, H)
            return self.fc(out[:, -1]).squeeze(-1)  # (B,): pre-padded, so the last step is the last word

    return PlainRNN()


def run_plain(args, cell: str, data, ftz: bool) -> dict:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = _sync_fn(device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        torch.set_flush_denormal(ftz)
    torch.manual_seed(0)
    train, test = data.train, data.test  # pre-padded to max_len, Keras' pad_sequences
    loader = DataLoader(TensorDataset(train.tokens, train.labels), batch_size=args.batch_size, shuffle=True)
    model = plain_model(cell).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    _memory_start(device)
    start, samples, steps = None, 0, 0
    running = torch.zeros((), device=device)
    for i, (x, y) in enumerate(loader):
        if i == args.warmup:
            sync()
            start = time.perf_counter()
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        running += loss.detach()  # no .item() per step: the baseline gets no avoidable host sync
        if i >= args.warmup:
            samples += y.shape[0]
            steps += 1
    train_loss = float(running) / max(len(loader), 1)
    sync()
    end = time.perf_counter()
    peak, peak_kind = _memory_peak(device)
    if start is None:
        raise SystemExit(f"--warmup {args.warmup} leaves no timed step: the epoch has {len(loader)} batches")

    @torch.no_grad()
    def evaluate_plain():
        model.eval()
        correct = 0
        for s in range(0, len(test), 512):
            x, y = test.tokens[s:s + 512].to(device), test.labels[s:s + 512].to(device)
            correct += int(((model(x) > 0) == (y > 0.5)).sum())
        return {"accuracy": correct / len(test), "n": len(test)}

    test_result = _timed(evaluate_plain)
    return _row("plain+ftz" if ftz else "plain", cell, samples, end - start, steps, peak, peak_kind, test_result,
                {"train_loss": train_loss, "encoding": "keras", "flush_denormal": ftz,
                 "threads": args.threads or os.cpu_count()})


# -- Keras, in a subprocess ---------------------------------------------------------------------
def keras_backend(requested: str, python: str) -> str | None:
    """The backend the Keras worker will use, or None when that interpreter has no Keras."""
    probe = ("import importlib.util as u; print('keras' if u.find_spec('keras') else '', "
             "'tensorflow' if u.find_spec('tensorflow') else '')")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.split()
    if "keras" not in out:
        return None
    if requested != "auto":
        return requested
    return "tensorflow" if "tensorflow" in out else "torch"


def run_keras(args, cells, data, backend: str) -> list[dict]:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="rnnsent-bench-keras-") as tmp:
        tmp = Path(tmp)
        k = data["keras"]
        np.savez(tmp / "data.npz", x=k.train.tokens.numpy().astype(np.int32), y=k.train.labels.numpy(),
                 xt=k.test.tokens.numpy().astype(np.int32), yt=k.test.labels.numpy())
        spec = {"cells": list(cells), "warmup": args.warmup, "batch_size": args.batch_size, "device": args.device,
                "threads": args.threads, "vocab_size": 5000, "max_len": args.max_len, "data": str(tmp / "data.npz"),
                "out": str(tmp / "result.json")}
        (tmp / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        if not args.device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.run([args.keras_python, str(Path(__file__).resolve()), "--keras-worker", str(tmp / "spec.json")],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"the Keras worker failed (exit {proc.returncode}); its output is above")
        result = json.loads((tmp / "result.json").read_text())
    return result["rows"], result["versions"]


def keras_worker(spec_path: str) -> None:
    """Runs in its own process with KERAS_BACKEND set: Keras' fit and evaluate on the saved arrays."""
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf

        if spec["threads"]:
            tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    elif backend == "torch":
        import torch

        torch.set_num_threads(spec["threads"] or os.cpu_count() or 1)
    import keras

    def sync(logs):
        # Reading the loss waits for the step's result (TensorFlow, JAX); CUDA under torch needs a synchronize.
        if logs and "loss" in logs:
            float(logs["loss"])
        if backend == "torch" and spec["device"].startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    class Clock(keras.callbacks.Callback):
        def __init__(self, steps):
            super().__init__()
            self.steps, self.start, self.end, self.samples, self.timed = steps, None, None, 0, 0

        def on_train_batch_end(self, batch, logs=None):
            if batch == spec["warmup"] - 1:
                sync(logs)
                self.start = time.perf_counter()
            elif batch >= spec["warmup"]:
                self.timed += 1
                self.samples += min(spec["batch_size"], n - batch * spec["batch_size"])
                if batch == self.steps - 1:
                    sync(logs)
                    self.end = time.perf_counter()

    arrays = np.load(spec["data"])
    x, y, xt, yt = arrays["x"], arrays["y"], arrays["xt"], arrays["yt"]
    n = len(x)
    rows = []
    for cell in spec["cells"]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((spec["max_len"],)),
            keras.layers.Embedding(spec["vocab_size"], 32),
            getattr(keras.layers, KERAS_LAYERS[cell])(100),
            keras.layers.Dense(1, activation="sigmoid"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
        gc.collect()
        reset_peak_rss()
        if backend == "torch" and spec["device"].startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        steps = -(-n // spec["batch_size"])
        clock = Clock(steps)
        history = model.fit(x, y, batch_size=spec["batch_size"], epochs=1, shuffle=True, verbose=0, callbacks=[clock])
        peak, peak_kind = peak_rss_mb(), "process peak RSS"
        if spec["device"].startswith("cuda"):
            if backend == "torch":
                import torch

                peak, peak_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
            elif backend == "tensorflow":
                import tensorflow as tf

                peak, peak_kind = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, "tf GPU peak"
        t0 = time.perf_counter()
        acc = model.evaluate(xt, yt, batch_size=512, verbose=0, return_dict=True)["accuracy"]
        test = {"accuracy": float(acc), "n": len(xt), "seconds": time.perf_counter() - t0}
        if clock.start is None or clock.end is None:
            raise SystemExit(f"--warmup {spec['warmup']} leaves no timed step: the epoch has {steps} batches")
        rows.append(_row("keras", cell, clock.samples, clock.end - clock.start, clock.timed, peak, peak_kind, test,
                         {"train_loss": float(history.history["loss"][-1]), "encoding": "keras",
                          "backend": backend}))
        del model
    versions = {"keras": keras.__version__, "backend": backend}
    if backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    Path(spec["out"]).write_text(json.dumps({"rows": rows, "versions": versions}))


# -- prototypes for --ablation -----------------------------------------------------------------
def _fused_adam(trainer) -> None:
    """Adam(fused=True) on CPU too (torch >= 2.4): one kernel per step instead of ~10 ops per parameter."""
    import torch

    state = trainer.optimizer.state_dict()
    trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=trainer.config.lr, fused=True)
    trainer.optimizer.load_state_dict(state)


# -- profile ------------------------------------------------------------------------------------
def profile_step(args, cell: str, data) -> str:
    """torch.profiler over a few rnnsent training steps of one bucketed batch: where a step's time goes."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from rnnsent.data import Batcher
    from rnnsent.models import SentimentRNN

    config = base_config(args, cell)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.set_flush_denormal(True)
    model = SentimentRNN(**config.model_args())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batcher = Batcher(data["fast"].train, batch_size=args.batch_size, shuffle=True, seed=0, bucket=True)
    x, lengths, y = next(batcher.iterate(0))

    def step():
        loss = F.binary_cross_entropy_with_logits(model(x, lengths), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    return f"profile: {cell}, 3 steps of one batch of shape {tuple(x.shape)} (B, T)\n{table}"


# -- one system, one cell, one fresh process ----------------------------------------------------
# Flush-to-zero is per-thread CPU state (MXCSR): torch.set_flush_denormal changes only the calling thread,
# and OpenMP workers copy the setting of the thread that starts them, at the process' first parallel op.
# Set later, half the work of a 2-thread run keeps its denormals. So every timed torch run gets its own
# process whose first act is to set threads and flush-to-zero, as a training script would.
PATCHES = {None: None, "fused_adam": "_fused_adam"}


def run_job(args, job: dict, data=None) -> dict:
    if args.isolation == "none":  # quick (smoke, CI), but flush-to-zero may miss threads started earlier
        import torch

        torch.set_num_threads(job["threads"])
        torch.set_flush_denormal(job["ftz"])
        return execute_job(args, job, data)
    with tempfile.TemporaryDirectory(prefix="rnnsent-bench-job-") as tmp:
        spec, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps(dict(job, out=str(out))))
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args.argv, "--torch-worker", str(spec)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"the {job['system']} / {job['cell']} run failed (exit {proc.returncode}); its output is above")
        return json.loads(out.read_text())


def torch_worker(args, spec_path: str) -> None:
    job = json.loads(Path(spec_path).read_text())
    if job["kind"] != "plain":
        import rnnsent  # noqa: F401 (before torch, as in rnnsent's command line: its OpenMP settings)
    import torch

    torch.set_num_threads(job["threads"])
    torch.set_flush_denormal(job["ftz"])  # before the first op: every OpenMP worker inherits it
    result = execute_job(args, job, prepare(args))
    Path(job["out"]).write_text(json.dumps(result))


def execute_job(args, job: dict, data) -> dict:
    if job["kind"] == "rnnsent":
        config = base_config(args, job["cell"], **job["overrides"])
        patch = globals()[PATCHES[job["patch"]]] if job["patch"] else None
        result = run_rnnsent(args, config, data[config.encoding], system=job["system"],
                             save_checkpoint=job["save_checkpoint"], patch=patch)
    elif job["kind"] == "plain":
        result = run_plain(args, job["cell"], data["keras"], ftz=job["ftz"])
    else:
        result = {"text": profile_step(args, job["cell"], data)}
    return result


def rnnsent_job(args, cell: str, system: str = "rnnsent", overrides=None, patch=None, save_checkpoint=False) -> dict:
    config = base_config(args, cell, **(overrides or {}))
    return {"kind": "rnnsent", "cell": cell, "system": system, "overrides": overrides or {}, "patch": patch,
            "save_checkpoint": save_checkpoint, "ftz": config.flush_denormal,
            "threads": config.threads or os.cpu_count() or 1}


def plain_job(args, cell: str, ftz: bool) -> dict:
    return {"kind": "plain", "cell": cell, "system": "plain+ftz" if ftz else "plain", "ftz": ftz,
            "threads": args.threads or os.cpu_count() or 1}


# -- report -------------------------------------------------------------------------------------
def ratios(rows: list[dict]) -> list[dict]:
    by = {(r["system"], r["cell"]): r["samples_per_second"] for r in rows}
    out = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        ours = by.get(("rnnsent", cell))
        if ours is None:
            continue
        entry = {"cell": cell}
        for other in ("plain", "plain+ftz", "keras"):
            if (other, cell) in by:
                entry[f"rnnsent/{other}"] = ours / by[(other, cell)]
        if "rnnsent/keras" in entry:
            entry["target_vs_keras"] = CPU_TARGET_VS_KERAS
            entry["target_met"] = entry["rnnsent/keras"] >= CPU_TARGET_VS_KERAS
        out.append(entry)
    return out


def format_table(rows: list[dict], ratio_rows: list[dict], title: str) -> str:
    head = f"{'cell':<5} {'system':<30} {'samples/s':>10} {'steps':>6} {'seconds':>8} {'peak MB':>8} {'test acc':>9} {'eval s':>7}"
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['cell']:<5} {r['system']:<30} {r['samples_per_second']:>10.1f} {r['timed_steps']:>6} "
                     f"{r['timed_seconds']:>8.2f} {r['peak_memory_mb']:>8.0f} {r['test_accuracy']:>9.4f} {r['eval_seconds']:>7.2f}")
    if ratio_rows:
        lines += ["", f"{'cell':<5} {'rnnsent/plain':>14} {'rnnsent/plain+ftz':>18} {'rnnsent/keras':>14}  target (>= {CPU_TARGET_VS_KERAS:g}x keras)"]
        for e in ratio_rows:
            def f(key):
                return f"{e[key]:.2f}x" if key in e else "-"
            met = "-" if "target_met" not in e else ("met" if e["target_met"] else f"missed ({e['rnnsent/keras'] / CPU_TARGET_VS_KERAS:.0%} of it)")
            lines.append(f"{e['cell']:<5} {f('rnnsent/plain'):>14} {f('rnnsent/plain+ftz'):>18} {f('rnnsent/keras'):>14}  {met}")
    return "\n".join(lines)


def format_ablation(rows: list[dict], title: str) -> str:
    base = {r["cell"]: r["samples_per_second"] for r in rows if r["system"] == "rnnsent"}
    head = f"{'cell':<5} {'variant':<30} {'samples/s':>10} {'vs rnnsent':>10} {'test acc':>9} {'eval s':>7} {'ckpt s':>7}"
    lines = [title, head, "-" * len(head)]
    for r in rows:
        rel = f"{r['samples_per_second'] / base[r['cell']]:.2f}x" if r["cell"] in base else "-"
        ckpt = f"{r['checkpoint_seconds']:.3f}" if "checkpoint_seconds" in r else ""
        lines.append(f"{r['cell']:<5} {r['system']:<30} {r['samples_per_second']:>10.1f} {rel:>10} "
                     f"{r['test_accuracy']:>9.4f} {r['eval_seconds']:>7.2f} {ckpt:>7}")
    return "\n".join(lines)


def ablations(args, cell: str, data) -> list[dict]:
    """rnnsent with one CPU lever changed at a time, through TrainConfig fields alone."""
    variants = [
        ("rnnsent", {}, None),
        ("rnnsent rnn_impl=torch", {"rnn_impl": "torch"}, None),
        ("rnnsent retain_memory=0", {"retain_memory": False}, None),
        ("rnnsent encoding=keras", {"encoding": "keras"}, None),
        ("rnnsent flush_denormal=0", {"flush_denormal": False}, None),
        ("rnnsent threads=1", {"threads": 1}, None),
        ("rnnsent eval_batch=64", {"eval_batch_size": 64}, None),
        ("rnnsent eval_batch=2048", {"eval_batch_size": 2048}, None),
        # Not a TrainConfig field: a prototype patched into the trainer, to see whether it would pay.
        ("proto: fused Adam", {}, "fused_adam"),
    ]
    rows = []
    for name, overrides, patch in variants:
        rows.append(run_job(args, rnnsent_job(args, cell, name, overrides, patch,
                                              save_checkpoint=not overrides and patch is None), data))
        print(format_table(rows[-1:], [], ""), file=sys.stderr, flush=True)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--data", default=None, help="where the IMDB data lies (rnnsent.data.fetch finds it otherwise)")
    p.add_argument("--cache-dir", default=None, help="prepared-data cache [RNNSENT_CACHE]")
    p.add_argument("--limit", type=int, default=None,
                   help="reviews per split, the same for every system (default: 2844 on CPU, i.e. 40 train batches "
                        "after the 10%% validation carve-out; all on CUDA)")
    p.add_argument("--expect-per-block", type=int, default=12500, help="reviews per split and label in the source")
    p.add_argument("--max-len", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64,
                   help="64 is the comparison; anything else is reported as a separate large-batch mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each system's epoch")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every system (default: all cores)")
    p.add_argument("--keras-python", default=sys.executable, help="interpreter for the Keras worker")
    p.add_argument("--keras-backend", default="auto", choices=("auto", "tensorflow", "torch", "jax"),
                   help="auto: tensorflow where importable, else torch")
    p.add_argument("--ablation", action="store_true", help="time rnnsent with each CPU lever toggled (TrainConfig fields)")
    p.add_argument("--busy", type=int, nargs="?", const=1, default=0, metavar="N",
                   help="rnnsent only: default threads and 1 thread, idle and beside N (default 1) busy processes "
                        "of the bench's own, medians of --repeats interleaved runs (scripts/bench_busy.py)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per condition for --busy")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of rnnsent training steps per cell")
    p.add_argument("--isolation", choices=("process", "none"), default=None,
                   help="process: each timed torch run in a fresh process, flush-to-zero set before its first op "
                        "(default); none: all in this process (quick; --smoke's default)")
    p.add_argument("--smoke", action="store_true", help="tiny fixture data and step counts, for CI")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--keras-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.data = args.data or str(FIXTURE)
        args.expect_per_block = 6
        args.limit = None
        args.max_len = min(args.max_len, 100)
        args.batch_size = 4 if args.batch_size == 64 else args.batch_size
        args.warmup = 1
        args.threads = args.threads or 1  # CI machines are shared: spinning thread pools only add noise
        args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="rnnsent-bench-cache-")
    args.isolation = args.isolation or ("none" if args.smoke else "process")
    if args.limit is None and not args.smoke and not args.device.startswith("cuda"):
        args.limit = 2844
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv  # passed on to the per-run worker processes
    if args.keras_worker:
        keras_worker(args.keras_worker)
        return 0
    if args.torch_worker:
        torch_worker(args, args.torch_worker)
        return 0
    from rnnsent.train import resolve_device

    args.device = str(resolve_device(args.device))
    standard = 4 if args.smoke else 64  # the comparison's batch size; any other is its own, labelled mode
    mode = ("smoke, " if args.smoke else "") + (
        f"batch {args.batch_size}" if args.batch_size == standard else f"LARGE-BATCH MODE: batch {args.batch_size}")
    info = machine_info(args.device)
    info["torch_threads"] = args.threads or os.cpu_count()
    print(f"{info['date']}  {info['cpu']} ({info['cores']} cores), torch {info['torch']}, "
          f"TensorFlow {info['tensorflow'] or 'not installed'}, Keras {info['keras'] or 'not installed'}; "
          f"device {args.device}" + (f" ({info['gpu']})" if "gpu" in info else ""), flush=True)
    data = prepare(args)
    n_train, n_test = len(data["fast"].train), len(data["fast"].test)
    scope = f"{n_train} train reviews ({-(-n_train // args.batch_size)} batches, first {args.warmup} untimed), " \
            f"test accuracy on {n_test} test reviews" + (" (limited split)" if args.limit else "")
    print(f"{mode}; {scope}", flush=True)
    if n_train % args.batch_size:
        print(f"note: {n_train} train reviews leave a short batch of {n_train % args.batch_size}; Keras (TensorFlow) "
              "retraces its step for it inside the clock. A --limit whose train split is a multiple of the batch "
              "size avoids that (2844 -> 2560, 4978 -> 4480).", flush=True)

    result = {"machine": info, "args": {k: v for k, v in vars(args).items() if k not in ("keras_worker", "torch_worker", "argv")},
              "command": [sys.executable, str(Path(__file__).resolve()), *args.argv], "mode": mode,
              "train_reviews": n_train, "test_reviews": n_test, "rows": [], "ratios": [], "ablation": []}
    if args.profile:
        result["profiles"] = {}
        for cell in args.cells:
            text = run_job(args, dict(rnnsent_job(args, cell), kind="profile"), data)["text"]
            result["profiles"][cell] = text
            print(text, flush=True)

    if args.busy:
        import bench_busy

        def time_job(cell, threads):
            overrides = {} if threads is None else {"threads": threads}
            return run_job(args, rnnsent_job(args, cell, overrides=overrides), data)

        result["busy"] = bench_busy.run(args.cells, args.repeats, args.busy, time_job,
                                        log=lambda line: print(line, file=sys.stderr, flush=True))
        print(bench_busy.format_table(result["busy"], args.threads or os.cpu_count()), flush=True)
    elif args.ablation:
        for cell in args.cells:
            result["ablation"] += ablations(args, cell, data)
        print(format_ablation(result["ablation"], f"ablation ({mode}; {scope})"), flush=True)
    else:
        backend = keras_backend(args.keras_backend, args.keras_python) if "keras" in args.systems else None
        if "keras" in args.systems and backend is None:
            print(f"Keras is not installed for {args.keras_python}: no Keras rows", flush=True)
        for cell in args.cells:
            for system in ("rnnsent", "plain", "plain+ftz"):
                if system not in args.systems:
                    continue
                job = rnnsent_job(args, cell) if system == "rnnsent" else plain_job(args, cell, system == "plain+ftz")
                row = run_job(args, job, data)
                result["rows"].append(row)
                print(format_table([row], [], ""), file=sys.stderr, flush=True)
        if backend is not None:
            keras_rows, versions = run_keras(args, args.cells, data, backend)
            result["keras"] = versions
            for row in keras_rows:
                row["system"] = "keras" if backend == "tensorflow" else f"keras ({backend})"
            # keep the keras rows beside their cells
            result["rows"] += keras_rows
        order = {c: i for i, c in enumerate(args.cells)}
        result["rows"].sort(key=lambda r: order[r["cell"]])
        for r in result["rows"]:
            if r["system"].startswith("keras"):
                r["system_key"] = "keras"
        result["ratios"] = ratios([dict(r, system=r.get("system_key", r["system"])) for r in result["rows"]])
        title = f"training throughput ({mode}; {scope}; {args.device})"
        print(format_table(result["rows"], result["ratios"], title), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
