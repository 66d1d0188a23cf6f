#!/usr/bin/env python3
"""Training throughput of rnnsent against a plain PyTorch loop and Keras 3, in one run on one device.

Per cell, on the same reviews, batch 64, Adam 1e-3: rnnsent (Trainer.train_epoch, encoding "bucketed"; the
fused kernel on CPU, cuDNN on CUDA); plain (DataLoader over 500-token pre-padded tensors, stock modules, no
flush-to-zero); plain+ftz (the same with torch.set_flush_denormal(True)); keras (Keras 3 model.fit in
scripts/keras_worker.py: TensorFlow where importable, else torch). Each clock runs from the end of step
warmup-1 to the end of the epoch: data preparation, model building and evaluation are never timed. On CPU
--limit keeps the plain loop's epoch short (test accuracy is then on the limited test split). Each timed
PyTorch run gets a fresh process that sets its threads and flush-to-zero before its first op (see run_job).

    python scripts/bench.py --data PATH/TO/reviews.json --limit 4978 --json cpu.json
    python scripts/bench.py --smoke --json /tmp/smoke.json          # seconds, fixture data (CI)
    python scripts/bench.py --ablation --cells gru ...              # the CPU levers, one at a time
    python scripts/bench.py --busy --repeats 5 ...                  # idle vs beside a busy process (bench_busy.py)
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
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # run from a checkout too

from keras_worker import keras_backend, peak_rss_mb, reset_peak_rss, run_keras  # noqa: E402
from rnnsent.config import CELLS, KERAS_CELL_NAMES  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "imdb" / "reviews.json"
SYSTEMS = ("rnnsent", "plain", "plain+ftz", "keras")
# The targets on CPU: rnnsent at least this many times Keras (TensorFlow) in the same run.
CPU_TARGET_VS_KERAS = 2.0


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: str) -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
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


# -- timing helpers -----------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_start(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
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


def _timed(evaluate_fn) -> dict:
    t0 = time.perf_counter()
    result = evaluate_fn()
    return {"accuracy": result["accuracy"], "n": result["n"], "seconds": time.perf_counter() - t0}


# -- data ---------------------------------------------------------------------------------------
def base_config(args, cell: str, **overrides):
    from rnnsent.config import TrainConfig

    values = dict(cell=cell, encoding="bucketed", limit=args.limit, data_root=args.data,
                  expected_per_block=args.expect_per_block, cache_dir=args.cache_dir, epochs=1,
                  batch_size=args.batch_size, device=args.device, threads=args.threads, quiet=True,
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
def run_rnnsent(args, config, data, system="rnnsent", save_checkpoint=False) -> dict:
    """rnnsent's Trainer, its real train_epoch(); a step callback starts the clock once --warmup steps are done."""
    from rnnsent.evaluate import evaluate
    from rnnsent.train import Trainer

    trainer = Trainer(config, data)
    marks = {}

    def start_clock(t):
        if t.step_in_epoch == args.warmup:
            _sync(t.device)
            marks.update(start=time.perf_counter(), seen=t.seen, step=t.step_in_epoch)

    trainer.add_callback("on_step_end", start_clock)
    _memory_start(trainer.device)
    metrics = trainer.train_epoch()  # ends with a host sync (the epoch's loss sums)
    _sync(trainer.device)
    end = time.perf_counter()
    peak, peak_kind = _memory_peak(trainer.device)
    if not marks or trainer.step_in_epoch == marks["step"]:
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
    return _row(system, config.cell, trainer.seen - marks["seen"], end - marks["start"],
                trainer.step_in_epoch - marks["step"], peak, peak_kind, test, extra)


def run_plain(args, cell: str, data, ftz: bool) -> dict:
    """What a tutorial would write: stock modules, PyTorch's default initialisation, a DataLoader."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from rnnsent.recurrent import LAYERS
    from rnnsent.runtime import resolve_device

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        torch.set_flush_denormal(ftz)
    torch.manual_seed(0)
    train, test = data.train, data.test  # pre-padded to max_len, Keras' pad_sequences
    loader = DataLoader(TensorDataset(train.tokens, train.labels), batch_size=args.batch_size, shuffle=True)
    embedding, rnn, fc = nn.Embedding(5000, 32), LAYERS[cell](32, 100, batch_first=True), nn.Linear(100, 1)
    model = nn.ModuleList([embedding, rnn, fc]).to(device)

    def forward(x):
        out, _ = rnn(embedding(x))  # (B, T, H)
        return fc(out[:, -1]).squeeze(-1)  # (B,): pre-padded, so the last step is the last word

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    _memory_start(device)
    start, samples, steps = None, 0, 0
    running = torch.zeros((), device=device)
    for i, (x, y) in enumerate(loader):
        if i == args.warmup:
            _sync(device)
            start = time.perf_counter()
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()
        running += loss.detach()  # no .item() per step: the baseline gets no avoidable host sync
        if i >= args.warmup:
            samples, steps = samples + y.shape[0], steps + 1
    train_loss = float(running) / max(len(loader), 1)
    _sync(device)
    end = time.perf_counter()
    peak, peak_kind = _memory_peak(device)
    if start is None:
        raise SystemExit(f"--warmup {args.warmup} leaves no timed step: the epoch has {len(loader)} batches")

    @torch.no_grad()
    def evaluate_plain():
        model.eval()
        correct = sum(int(((forward(test.tokens[s:s + 512].to(device)) > 0) == (test.labels[s:s + 512].to(device) > 0.5)).sum())
                      for s in range(0, len(test), 512))
        return {"accuracy": correct / len(test), "n": len(test)}

    return _row("plain+ftz" if ftz else "plain", cell, samples, end - start, steps, peak, peak_kind,
                _timed(evaluate_plain), {"train_loss": train_loss, "encoding": "keras", "flush_denormal": ftz,
                                         "threads": args.threads or os.cpu_count()})


def keras_rows(args, cells, data, backend: str) -> tuple[list[dict], dict]:
    k = data["keras"]
    spec = {"layers": {c: KERAS_CELL_NAMES[c] for c in cells}, "seeds": [0], "epochs": 1, "warmup": args.warmup,
            "batch_size": args.batch_size, "device": args.device, "threads": args.threads, "vocab_size": 5000,
            "embed_dim": 32, "hidden_size": 100}
    arrays = {"x": k.train.tokens.numpy().astype("int32"), "y": k.train.labels.numpy(),
              "xt": k.test.tokens.numpy().astype("int32"), "yt": k.test.labels.numpy()}
    rows, versions = run_keras(args.keras_python, backend, spec, arrays)
    system = "keras" if backend == "tensorflow" else f"keras ({backend})"
    return [_row(system, r["cell"], r["timed_samples"], r["timed_seconds"], r["timed_steps"], r["peak_memory_mb"],
                 r["peak_memory_kind"], {"accuracy": r["test_accuracy"][0], "n": len(k.test), "seconds": r["eval_seconds"][0]},
                 {"train_loss": r["train_loss"], "encoding": "keras", "backend": backend, "system_key": "keras"})
            for r in rows], versions


# -- one system, one cell, one fresh process ----------------------------------------------------
# Flush-to-zero is per-thread CPU state (MXCSR): torch.set_flush_denormal changes only the calling thread,
# and OpenMP workers copy the setting of the thread that starts them, at the process' first parallel op.
# Set later, half the work of a 2-thread run keeps its denormals. So every timed torch run gets its own
# process whose first act is to set threads and flush-to-zero, as a training script would.
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
    Path(job["out"]).write_text(json.dumps(execute_job(args, job, prepare(args))))


def execute_job(args, job: dict, data) -> dict:
    if job["kind"] == "rnnsent":
        config = base_config(args, job["cell"], **job["overrides"])
        return run_rnnsent(args, config, data[config.encoding], system=job["system"], save_checkpoint=job["save_checkpoint"])
    return run_plain(args, job["cell"], data["keras"], ftz=job["ftz"])


def rnnsent_job(args, cell: str, system: str = "rnnsent", overrides=None, save_checkpoint=False) -> dict:
    config = base_config(args, cell, **(overrides or {}))
    return {"kind": "rnnsent", "cell": cell, "system": system, "overrides": overrides or {},
            "save_checkpoint": save_checkpoint, "ftz": config.flush_denormal, "threads": config.threads or os.cpu_count() or 1}


def plain_job(args, cell: str, ftz: bool) -> dict:
    return {"kind": "plain", "cell": cell, "system": "plain+ftz" if ftz else "plain", "ftz": ftz,
            "threads": args.threads or os.cpu_count() or 1}


def ablations(args, cell: str, data) -> list[dict]:
    """rnnsent with one CPU lever changed at a time, through TrainConfig fields alone."""
    variants = [("rnnsent", {}), ("rnnsent rnn_impl=torch", {"rnn_impl": "torch"}),
                ("rnnsent retain_memory=0", {"retain_memory": False}), ("rnnsent encoding=keras", {"encoding": "keras"}),
                ("rnnsent flush_denormal=0", {"flush_denormal": False}), ("rnnsent threads=1", {"threads": 1}),
                ("rnnsent eval_batch=64", {"eval_batch_size": 64}), ("rnnsent eval_batch=2048", {"eval_batch_size": 2048})]
    rows = []
    for name, overrides in variants:
        rows.append(run_job(args, rnnsent_job(args, cell, name, overrides, save_checkpoint=not overrides), data))
        print(format_table(rows[-1:], [], ""), file=sys.stderr, flush=True)
    return rows


# -- report -------------------------------------------------------------------------------------
def ratios(rows: list[dict]) -> list[dict]:
    by = {(r.get("system_key", r["system"]), r["cell"]): r["samples_per_second"] for r in rows}
    out = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        if ("rnnsent", cell) not in by:
            continue
        entry = {"cell": cell}
        for other in ("plain", "plain+ftz", "keras"):
            if (other, cell) in by:
                entry[f"rnnsent/{other}"] = by[("rnnsent", cell)] / by[(other, cell)]
        if "rnnsent/keras" in entry:
            entry.update(target_vs_keras=CPU_TARGET_VS_KERAS, target_met=entry["rnnsent/keras"] >= CPU_TARGET_VS_KERAS)
        out.append(entry)
    return out


def format_table(rows: list[dict], ratio_rows: list[dict], title: str, ablation: bool = False) -> str:
    base = {r["cell"]: r["samples_per_second"] for r in rows if r["system"] == "rnnsent"}
    head = f"{'cell':<5} {'system':<30} {'samples/s':>10} " + (
        f"{'vs rnnsent':>10} {'test acc':>9} {'eval s':>7} {'ckpt s':>7}" if ablation else
        f"{'steps':>6} {'seconds':>8} {'peak MB':>8} {'test acc':>9} {'eval s':>7}")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        start = f"{r['cell']:<5} {r['system']:<30} {r['samples_per_second']:>10.1f} "
        if ablation:
            rel = f"{r['samples_per_second'] / base[r['cell']]:.2f}x" if r["cell"] in base else "-"
            ckpt = f"{r['checkpoint_seconds']:.3f}" if "checkpoint_seconds" in r else ""
            lines.append(start + f"{rel:>10} {r['test_accuracy']:>9.4f} {r['eval_seconds']:>7.2f} {ckpt:>7}")
        else:
            lines.append(start + f"{r['timed_steps']:>6} {r['timed_seconds']:>8.2f} {r['peak_memory_mb']:>8.0f} "
                                 f"{r['test_accuracy']:>9.4f} {r['eval_seconds']:>7.2f}")
    if ratio_rows:
        lines += ["", f"{'cell':<5} {'rnnsent/plain':>14} {'rnnsent/plain+ftz':>18} {'rnnsent/keras':>14}  "
                      f"target (>= {CPU_TARGET_VS_KERAS:g}x keras)"]
        for e in ratio_rows:
            f = [f"{e[k]:.2f}x" if k in e else "-" for k in ("rnnsent/plain", "rnnsent/plain+ftz", "rnnsent/keras")]
            met = "-" if "target_met" not in e else (
                "met" if e["target_met"] else f"missed ({e['rnnsent/keras'] / CPU_TARGET_VS_KERAS:.0%} of it)")
            lines.append(f"{e['cell']:<5} {f[0]:>14} {f[1]:>18} {f[2]:>14}  {met}")
    return "\n".join(lines)


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
    p.add_argument("--expect-per-block", type=int, default=12500, help="reviews per split and label in the source [12500]")
    p.add_argument("--max-len", type=int, default=500, help="[500]")
    p.add_argument("--batch-size", type=int, default=64,
                   help="64 is the comparison; anything else is reported as a separate large-batch mode [64]")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each system's epoch (>= 1) [3]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every system [all cores]")
    p.add_argument("--keras-python", default=sys.executable, help="interpreter for the Keras worker [this one]")
    p.add_argument("--keras-backend", default="auto", choices=("auto", "tensorflow", "torch", "jax"),
                   help="auto: tensorflow where importable, else torch [auto]")
    p.add_argument("--ablation", action="store_true", help="time rnnsent with each CPU lever toggled (TrainConfig fields)")
    p.add_argument("--busy", type=int, nargs="?", const=1, default=0, metavar="N",
                   help="rnnsent only: default threads and 1 thread, idle and beside N busy processes of the "
                        "bench's own, medians of --repeats interleaved runs (scripts/bench_busy.py) [off; N: 1]")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per condition for --busy [5]")
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # removed; main() says what to do instead
    p.add_argument("--isolation", choices=("process", "none"), default=None,
                   help="process: each timed torch run in a fresh process, flush-to-zero set before its first op; "
                        "none: all in this process (quick) [process; none with --smoke]")
    p.add_argument("--smoke", action="store_true", help="tiny fixture data and step counts, for CI")
    p.add_argument("--json", default=None, help="also write the results here")
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
        torch_worker(args, args.torch_worker)
        return 0
    if args.profile:
        raise SystemExit("--profile was removed: run torch.profiler.profile() around Trainer(config).train_epoch()")
    from rnnsent.runtime import resolve_device

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
        print(format_table(result["ablation"], [], f"ablation ({mode}; {scope})", ablation=True), flush=True)
    else:
        backend = keras_backend(args.keras_backend, args.keras_python) if "keras" in args.systems else None
        if "keras" in args.systems and backend is None:
            print(f"Keras is not installed for {args.keras_python}: no Keras rows", flush=True)
        for cell in args.cells:
            for system in [s for s in ("rnnsent", "plain", "plain+ftz") if s in args.systems]:
                job = rnnsent_job(args, cell) if system == "rnnsent" else plain_job(args, cell, system == "plain+ftz")
                result["rows"].append(run_job(args, job, data))
                print(format_table(result["rows"][-1:], [], ""), file=sys.stderr, flush=True)
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
