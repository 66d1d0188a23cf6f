#!/usr/bin/env python3
"""Training throughput of rnnsent against a plain PyTorch loop and Keras 3, in one run on one device.

Per cell, on the same reviews, batch 64, Adam 1e-3: rnnsent (Trainer.train_epoch, encoding "bucketed"; the
fused kernel on CPU, cuDNN on CUDA); plain (DataLoader over 500-token pre-padded tensors, stock modules, no
flush-to-zero); plain+ftz (the same with torch.set_flush_denormal(True)); keras (Keras 3 model.fit in
tools/keras_worker.py: TensorFlow where importable, else torch). Each clock runs from the end of step
warmup-1 to the end of the epoch: data preparation, model building and evaluation are never timed. On CPU
--limit keeps the plain loop's epoch short (test accuracy is then on the limited test split). Each timed
PyTorch run gets a fresh process that sets its threads and flush-to-zero before its first op (see run_job).

    python tools/bench.py --data PATH/TO/reviews.json --limit 4978 --json cpu.json
    python tools/bench.py --smoke --json /tmp/smoke.json          # seconds, fixture data (CI)
    python tools/bench.py --ablation --cells gru ...              # the CPU levers, one at a time
    python tools/bench.py --busy --repeats 5 ...                  # idle vs beside a busy process (bench_busy.py)
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout too (the tools beside this one are in its own folder)

# rnnsent before torch in every process of the bench, the plain loop's too: its OpenMP settings, as in its CLI.
from rnnsent.config import CELLS, KERAS_CELL_NAMES, TrainConfig  # noqa: E402
import torch  # noqa: E402
from bench_report import format_table, machine_info, ratios  # noqa: E402
from keras_worker import keras_backend, peak_rss_mb, reset_peak_rss, run_keras  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "imdb" / "reviews.json"
SYSTEMS = ("rnnsent", "plain", "plain+ftz", "keras")
# --ablation: rnnsent with one CPU lever changed at a time, through TrainConfig fields alone.
ABLATIONS = [("rnnsent", {}), ("rnnsent rnn_impl=torch", {"rnn_impl": "torch"}),
             ("rnnsent retain_memory=0", {"retain_memory": False}), ("rnnsent encoding=keras", {"encoding": "keras"}),
             ("rnnsent flush_denormal=0", {"flush_denormal": False}), ("rnnsent threads=1", {"threads": 1}),
             ("rnnsent eval_batch=64", {"eval_batch_size": 64}), ("rnnsent eval_batch=2048", {"eval_batch_size": 2048})]


def _row(system, cell, samples, steps, seconds, peak, peak_kind, accuracy, n_test, eval_seconds, **extra) -> dict:
    return {"system": system, "cell": cell, "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
            "timed_samples": samples, "timed_steps": steps, "timed_seconds": seconds, "peak_memory_mb": peak,
            "peak_memory_kind": peak_kind, "test_accuracy": accuracy, "test_reviews": n_test,
            "eval_seconds": eval_seconds, **extra}


class Clock:
    """One epoch's clock, the same for rnnsent and the plain loop: it starts when step `warmup` ends (the
    steps before it are untimed) and stops at the end of the epoch; peak memory is measured over the epoch."""

    def __init__(self, device: torch.device, warmup: int):
        self.device, self.warmup, self.start, self.done = device, warmup, None, (0, 0)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        reset_peak_rss()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(self, steps: int, samples: int) -> None:
        """After every training step: steps and samples done so far in the epoch."""
        if steps == self.warmup:
            self.start = (self._now(), steps, samples)
        self.done = (steps, samples)

    def row(self, system: str, cell: str, evaluate, **extra) -> dict:
        """The epoch's row, once it is over; evaluate() -> {"accuracy", "n", ...} is timed on its own."""
        end = self._now()
        if self.start is None or self.done[0] == self.start[1]:
            raise SystemExit(f"--warmup {self.warmup} leaves no timed step: the epoch has {self.done[0]} batches")
        if self.device.type == "cuda":
            peak, peak_kind = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda max_memory_allocated"
        else:
            peak, peak_kind = peak_rss_mb(), "process peak RSS"
        t0 = time.perf_counter()
        test = evaluate()
        return _row(system, cell, self.done[1] - self.start[2], self.done[0] - self.start[1], end - self.start[0],
                    peak, peak_kind, test["accuracy"], test["n"], time.perf_counter() - t0, **extra)


# -- data ---------------------------------------------------------------------------------------
def base_config(args, cell: str, **overrides) -> TrainConfig:
    values = dict(cell=cell, encoding="bucketed", limit=args.limit, data_root=args.data, cache_dir=args.cache_dir,
                  epochs=1, batch_size=args.batch_size, device=args.device, threads=args.threads, quiet=True,
                  max_len=args.max_len, out=str(Path(tempfile.gettempdir()) / "rnnsent-bench"))
    return TrainConfig(**{**values, **overrides})


def prepare(args) -> dict:
    """Both encodings of the same reviews: "bucketed" for rnnsent, "keras" (pre-padded) for the baselines."""
    from rnnsent.data import prepare_imdb

    c = base_config(args, "gru")
    data = {enc: prepare_imdb(**dataclasses.replace(c, encoding=enc).data_args(), root=c.data_root,
                              cache_dir=c.cache_dir) for enc in ("bucketed", "keras")}
    for split in ("train", "test"):  # the same reviews in the same order, whatever the padding
        a, b = getattr(data["bucketed"], split), getattr(data["keras"], split)
        if not (a.lengths.equal(b.lengths) and a.labels.equal(b.labels)):
            raise RuntimeError(f"the two encodings of the {split} split hold different reviews")
    return data


# -- the systems --------------------------------------------------------------------------------
def run_rnnsent(args, config: TrainConfig, data, system="rnnsent", save_checkpoint=False) -> dict:
    """rnnsent's Trainer and its real train_epoch(); a step callback drives the clock."""
    from rnnsent.inference.evaluate import evaluate
    from rnnsent.training.trainer import Trainer

    trainer = Trainer(config, data)
    clock = Clock(trainer.device, args.warmup)
    trainer.add_callback("on_step_end", lambda t: clock.step(t.step_in_epoch, t.seen))
    metrics = trainer.train_epoch()
    row = clock.row(system, config.cell,
                    lambda: evaluate(trainer.model, data.test, config.eval_batch_size, trainer.device),
                    train_loss=metrics["train_loss"], encoding=config.encoding, flush_denormal=config.flush_denormal,
                    threads=config.threads or os.cpu_count(), eval_batch_size=config.eval_batch_size,
                    rnn_implementation=trainer.task.rnn_implementation(trainer), retain_memory=config.retain_memory)
    if save_checkpoint:  # what --ckpt-every N would add: one save per N steps
        trainer.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        trainer.save("last.pt")
        row["checkpoint_seconds"] = time.perf_counter() - t0
    return row


def run_plain(args, cell: str, data, ftz: bool) -> dict:
    """What a tutorial would write: stock modules, PyTorch's default initialisation, a DataLoader, Adam."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from rnnsent.inference.evaluate import evaluate
    from rnnsent.runtime import resolve_device

    class Plain(nn.Module):
        num_classes = 2  # so that rnnsent's evaluate() scores it like its own models

        def __init__(self):
            super().__init__()
            stock = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]  # PyTorch's own layer
            self.embedding, self.rnn = nn.Embedding(5000, 32), stock(32, 100, batch_first=True)
            self.fc = nn.Linear(100, 1)

        def forward(self, x, lengths=None):
            out, _ = self.rnn(self.embedding(x))  # (B, T, H)
            return self.fc(out[:, -1]).squeeze(-1)  # (B,): pre-padded, so the last step is the last word

    device = resolve_device(args.device)
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(data.train.tokens, data.train.labels), batch_size=args.batch_size, shuffle=True)
    model = Plain().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    clock, running, samples = Clock(device, args.warmup), torch.zeros((), device=device), 0
    for step, (x, y) in enumerate(loader, 1):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        running += loss.detach()  # no .item() per step: the baseline gets no avoidable host sync
        samples += len(y)
        clock.step(step, samples)
    return clock.row("plain+ftz" if ftz else "plain", cell, lambda: evaluate(model, data.test, 512, device),
                     train_loss=float(running) / max(len(loader), 1), encoding="keras", flush_denormal=ftz,
                     threads=args.threads or os.cpu_count())


def keras_rows(args, cells, data, backend: str) -> tuple[list[dict], dict]:
    k = data["keras"]
    spec = {"layers": {c: KERAS_CELL_NAMES[c] for c in cells}, "seeds": [0], "epochs": 1, "warmup": args.warmup,
            "batch_size": args.batch_size, "device": args.device, "threads": args.threads, "vocab_size": 5000,
            "embed_dim": 32, "hidden_size": 100}
    arrays = {"x": k.train.tokens.numpy().astype("int32"), "y": k.train.labels.numpy(),
              "xt": k.test.tokens.numpy().astype("int32"), "yt": k.test.labels.numpy()}
    rows, versions = run_keras(args.keras_python, backend, spec, arrays)
    system = "keras" if backend == "tensorflow" else f"keras ({backend})"
    rows = [_row(system, r["cell"], r["timed_samples"], r["timed_steps"], r["timed_seconds"], r["peak_memory_mb"],
                 r["peak_memory_kind"], r["test_accuracy"][0], len(k.test), r["eval_seconds"][0],
                 train_loss=r["train_loss"], encoding="keras", backend=backend, system_key="keras") for r in rows]
    return rows, versions


# -- one system, one cell, one fresh process ----------------------------------------------------
# Flush-to-zero is per-thread CPU state (MXCSR): torch.set_flush_denormal changes only the calling thread,
# and OpenMP workers copy the setting of the thread that starts them, at the process' first parallel op.
# Set later, half the work of a 2-thread run keeps its denormals. So every timed torch run gets its own
# process whose first act is to set threads and flush-to-zero, as a training script would.
def job_spec(system: str, cell: str, overrides: dict | None = None, checkpoint: bool = False) -> dict:
    return {"system": system, "cell": cell, "overrides": overrides or {}, "checkpoint": checkpoint}


def run_job(args, job: dict, data=None) -> dict:
    if args.isolation == "none":  # quick (smoke, CI), but flush-to-zero may miss threads started earlier
        return execute_job(args, job, data)
    with tempfile.TemporaryDirectory(prefix="rnnsent-bench-job-") as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args.argv,
                               "--torch-worker", json.dumps(dict(job, out=str(out)))], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(
                f"the {job['system']} / {job['cell']} run failed (exit {proc.returncode}); its output is above"
            )
        return json.loads(out.read_text())


def execute_job(args, job: dict, data) -> dict:
    """Sets the job's threads and flush-to-zero (rnnsent's from its config), then runs it."""
    plain = job["system"].startswith("plain")
    config = None if plain else base_config(args, job["cell"], **job["overrides"])
    torch.set_num_threads((args.threads if plain else config.threads) or os.cpu_count() or 1)
    torch.set_flush_denormal(job["system"] == "plain+ftz" if plain else config.flush_denormal)
    data = data or prepare(args)  # a worker process prepares (reads from the cache) after both settings
    if plain:
        return run_plain(args, job["cell"], data["keras"], ftz=job["system"] == "plain+ftz")
    return run_rnnsent(args, config, data[config.encoding], job["system"], save_checkpoint=job["checkpoint"])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto [cpu]")
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS, help="[all]")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS, help="[all]")
    p.add_argument("--data", default=None, help="where the IMDB data lies [rnnsent.data.fetch finds it]")
    p.add_argument("--cache-dir", default=None, help="prepared-data cache [RNNSENT_CACHE]")
    p.add_argument("--limit", type=int, default=None,
                   help="reviews per split, the same for every system [2844 on CPU, i.e. 40 train batches "
                        "after the 10%% validation carve-out; all on CUDA]")
    p.add_argument("--max-len", type=int, default=500, help="[500]")
    p.add_argument("--batch-size", type=int, default=64,
                   help="64 is the comparison; anything else is reported as a separate large-batch mode [64]")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each system's epoch (>= 1) [3]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every system [all cores]")
    p.add_argument("--keras-python", default=sys.executable, help="interpreter for the Keras worker [this one]")
    p.add_argument("--keras-backend", default="auto", choices=("auto", "tensorflow", "torch", "jax"),
                   help="auto: tensorflow where importable, else torch [auto]")
    p.add_argument(
        "--ablation", action="store_true", help="time rnnsent with each CPU lever toggled (TrainConfig fields)"
    )
    p.add_argument("--busy", type=int, nargs="?", const=1, default=0, metavar="N",
                   help="rnnsent only: default threads and 1 thread, idle and beside N busy processes of the "
                        "bench's own, medians of --repeats interleaved runs (tools/bench_busy.py) [off; N: 1]")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per condition for --busy [5]")
    p.add_argument("--isolation", choices=("process", "none"), default=None,
                   help="process: each timed torch run in a fresh process, flush-to-zero set before its first op; "
                        "none: all in this process (quick) [process; none with --smoke]")
    p.add_argument("--smoke", action="store_true", help="tiny fixture data and step counts, for CI")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.data, args.limit, args.max_len, args.warmup = args.data or str(FIXTURE), None, min(args.max_len, 100), 1
        args.batch_size = 4 if args.batch_size == 64 else args.batch_size
        args.threads = args.threads or 1  # CI machines are shared: spinning thread pools only add noise
        args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="rnnsent-bench-cache-")
    if args.warmup < 1:
        p.error("--warmup must be at least 1: the clock starts when a step ends")
    args.isolation = args.isolation or ("none" if args.smoke else "process")
    if args.limit is None and not args.smoke and not args.device.startswith("cuda"):
        args.limit = 2844
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv  # passed on to the per-run worker processes
    if args.torch_worker:
        spec = json.loads(args.torch_worker)
        Path(spec["out"]).write_text(json.dumps(execute_job(args, spec, None)))
        return 0
    from rnnsent.runtime import resolve_device

    args.device = str(resolve_device(args.device))
    standard = 4 if args.smoke else 64  # the comparison's batch size; any other is its own, labelled mode
    mode = ("smoke, " if args.smoke else "") + (
        f"batch {args.batch_size}" if args.batch_size == standard else f"LARGE-BATCH MODE: batch {args.batch_size}")
    info = dict(machine_info(args.device), torch_threads=args.threads or os.cpu_count())
    print(f"{info['date']}  {info['cpu']} ({info['cores']} cores), torch {info['torch']}, "
          f"TensorFlow {info['tensorflow'] or 'not installed'}, Keras {info['keras'] or 'not installed'}; "
          f"device {args.device}" + (f" ({info['gpu']})" if "gpu" in info else ""), flush=True)
    data = prepare(args)
    n_train, n_test = len(data["bucketed"].train), len(data["bucketed"].test)
    scope = f"{n_train} train reviews ({-(-n_train // args.batch_size)} batches, first {args.warmup} untimed), " \
            f"test accuracy on {n_test} test reviews" + (" (limited split)" if args.limit else "")
    print(f"{mode}; {scope}", flush=True)
    if n_train % args.batch_size:
        print(f"note: {n_train} train reviews leave a short batch of {n_train % args.batch_size}; Keras (TensorFlow) "
              "retraces its step for it inside the clock. A --limit whose train split is a multiple of the batch "
              "size avoids that (2844 -> 2560, 4978 -> 4480).", flush=True)

    result = {"machine": info, "args": {k: v for k, v in vars(args).items() if k not in ("torch_worker", "argv")},
              "command": [sys.executable, str(Path(__file__).resolve()), *args.argv], "mode": mode,
              "train_reviews": n_train, "test_reviews": n_test, "rows": [], "ratios": [], "ablation": []}

    def timed(table: list, one: dict) -> None:  # run it, keep its row and show it at once
        table.append(run_job(args, one, data))
        print(format_table(table[-1:], [], ""), file=sys.stderr, flush=True)

    if args.busy:
        import bench_busy

        def time_job(cell, threads):  # threads None: the default
            return run_job(args, job_spec("rnnsent", cell, None if threads is None else {"threads": threads}), data)

        result["busy"] = bench_busy.run(args.cells, args.repeats, args.busy, time_job,
                                        log=lambda line: print(line, file=sys.stderr, flush=True))
        print(bench_busy.format_table(result["busy"], args.threads or os.cpu_count()), flush=True)
    elif args.ablation:
        for cell in args.cells:
            for name, overrides in ABLATIONS:  # the unchanged row also times a checkpoint save
                timed(result["ablation"], job_spec(name, cell, overrides, checkpoint=not overrides))
        print(format_table(result["ablation"], [], f"ablation ({mode}; {scope})", ablation=True), flush=True)
    else:
        backend = keras_backend(args.keras_backend, args.keras_python) if "keras" in args.systems else None
        if "keras" in args.systems and backend is None:
            print(f"Keras is not installed for {args.keras_python}: no Keras rows", flush=True)
        for cell in args.cells:
            for system in [s for s in ("rnnsent", "plain", "plain+ftz") if s in args.systems]:
                timed(result["rows"], job_spec(system, cell))
        if backend is not None:
            rows, result["keras"] = keras_rows(args, args.cells, data, backend)
            result["rows"] += rows
        order = {c: i for i, c in enumerate(args.cells)}
        result["rows"].sort(key=lambda r: order[r["cell"]])  # keep the keras rows beside their cells
        result["ratios"] = ratios(result["rows"])
        print(format_table(result["rows"], result["ratios"], f"training throughput ({mode}; {scope}; {args.device})"),
              flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
