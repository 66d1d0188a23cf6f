#!/usr/bin/env python3
"""Inference throughput on the CPU, in one run on the same real reviews: reviews/s at batch 1 and batch 64.

Systems, each from raw text to probabilities unless said otherwise:
  onnxruntime          rnnsent.inference.export.OnnxPredictor on the exported file (batches sorted by length, as
                       predict)
  predict (fused)      rnnsent.predict: the fused CPU kernel, batches sorted by length
  predict, input order the same before the sort: batches cut in input order (sort_by_length=False)
  stock layers         rnnsent.predict with PyTorch's nn.GRU/LSTM/RNN (impl="torch"), sorted
  keras                TF-Keras (rnnsent.to_keras's model, the same weights) in a process of its own, given the
                       token ids (tokenizing excluded): model.predict on rows pre-padded to max_len, as a Keras user
                       pads them (batch 64), model.predict_on_batch for one review at a time (batch 1)
Batch 1 runs the first --batch1-reviews reviews one call each; every clock starts after one untimed call. The
PyTorch and onnxruntime systems run --repeats times in turn and the best rate counts (Keras runs once).

    python tools/bench_infer.py --checkpoint gru --threads 1 --json infer.json
    python tools/bench_infer.py --smoke --json /tmp/smoke.json      # fixture reviews, seconds (tests)
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

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "imdb" / "reviews.json"


def keras_worker(spec_path: str) -> None:
    """The Keras side, in its own process (TensorFlow fixes its threads at start; no torch is loaded here)."""
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    import tensorflow as tf

    if spec["threads"]:
        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    model = keras.models.load_model(spec["model"], compile=False)
    x = np.load(spec["data"])["x"]  # (N, max_len) pre-padded ids
    model.predict(x[:64], batch_size=64, verbose=0)  # untimed: tracing
    wall, cpu = time.perf_counter(), time.process_time()
    probs = model.predict(x, batch_size=64, verbose=0)
    batch64 = time.perf_counter() - wall, time.process_time() - cpu
    one = x[: spec["batch1"]]
    model.predict_on_batch(one[:1])
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(len(one)):
        model.predict_on_batch(one[k: k + 1])
    batch1 = time.perf_counter() - wall, time.process_time() - cpu
    Path(spec["out"]).write_text(json.dumps({
        "batch64_seconds": batch64, "batch1_seconds": batch1, "n": len(x), "n1": len(one),
        "first_probabilities": np.asarray(probs[:64]).reshape(len(probs[:64]), -1)[:, -1].tolist(),
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__}}))


if __name__ == "__main__" and sys.argv[1:2] == ["--keras-worker"]:
    keras_worker(sys.argv[2])
    sys.exit(0)

sys.path.insert(0, str(REPO))  # run from a checkout too (the tools beside this one are in its own folder)
import rnnsent  # noqa: E402  (before torch: its OpenMP settings)
import torch  # noqa: E402
from bench_report import machine_info  # noqa: E402

from rnnsent.inference.evaluate import predict  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="gru", help="a checkpoint or released model [gru]")
    p.add_argument("--reviews", type=int, default=5000, help="test reviews for batch 64 (a seeded sample) [5000]")
    p.add_argument("--batch1-reviews", type=int, default=1000, help="of those, reviews scored one at a time [1000]")
    p.add_argument(
        "--threads", type=int, default=None, help="threads for PyTorch, onnxruntime and TensorFlow [all cores]"
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each PyTorch/onnxruntime system; the best counts [3]"
    )
    p.add_argument("--data", default=None, help="where the IMDB data is [the cache]")
    p.add_argument("--no-keras", dest="keras", action="store_false", help="leave TF-Keras out")
    p.add_argument("--smoke", action="store_true", help="the fixture's reviews, few of them, no Keras (for tests)")
    p.add_argument("--json", help="write the rows and the machine here")
    args = p.parse_args(argv)
    if args.smoke:
        args.reviews, args.batch1_reviews, args.keras, args.data, args.repeats = 24, 4, False, str(FIXTURE), 1
    return args


def sample_reviews(args) -> list[str]:
    from rnnsent.data.fetch import load_imdb_reviews

    texts = [t for t, _ in load_imdb_reviews("test", root=args.data, download=False)]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    return [texts[i] for i in order[: args.reviews]]  # both labels, in no particular order of length


def clocked(score, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `score(texts, batch_size)` over all of `texts`
    (batch 1: one call per text), after one untimed call."""
    score(texts[:batch_size], batch_size)
    wall, cpu = time.perf_counter(), time.process_time()
    if batch_size == 1:
        for t in texts:
            score([t], 1)
    else:
        score(texts, batch_size)
    return time.perf_counter() - wall, time.process_time() - cpu


def keras_rows(args, loaded, texts: list[str]) -> tuple[list[dict], dict]:
    """TF-Keras in a worker: the model saved by rnnsent.save_keras, fed the same reviews pre-padded to max_len."""
    import numpy as np

    from rnnsent.data import encode_keras, tokenize
    from rnnsent.inference.keras_io import save_keras

    split = encode_keras([loaded.vocab.encode(tokenize(t)) for t in texts], [0] * len(texts), loaded.max_len)
    with tempfile.TemporaryDirectory(prefix="rnnsent-infer-") as tmp:
        tmp = Path(tmp)
        save_keras(loaded.model, tmp / "model.keras")
        np.savez(tmp / "data.npz", x=split.tokens.numpy().astype(np.int32))
        spec = {"model": str(tmp / "model.keras"), "data": str(tmp / "data.npz"), "out": str(tmp / "out.json"),
                "threads": args.threads, "batch1": args.batch1_reviews}
        (tmp / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run([sys.executable, __file__, "--keras-worker", str(tmp / "spec.json")], env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"the Keras worker failed (exit {proc.returncode})")
        result = json.loads((tmp / "out.json").read_text())
    # The same function as rnnsent on the same pre-padded rows: proof that Keras ran this model.
    same = predict(loaded.model, texts[:64], loaded.vocab, loaded.max_len, "keras")
    diff = max(abs(list(p.probabilities.values())[-1] - q) for p, q in zip(same, result["first_probabilities"]))
    note = f"token ids pre-padded to {loaded.max_len}; tokenizing excluded"
    rows = [
        dict(rates("keras (TF) predict", 64, result["n"], *result["batch64_seconds"]), note=note,
             max_abs_vs_rnnsent_keras_encoding=diff),
        dict(rates("keras (TF) predict", 1, result["n1"], *result["batch1_seconds"]), note=note + "; predict_on_batch"),
    ]
    return rows, result["versions"]


def rates(system: str, batch: int, n: int, wall: float, cpu: float) -> dict:
    return {"system": system, "batch": batch, "reviews": n, "reviews_per_second": n / wall,
            "reviews_per_cpu_second": n / cpu, "wall_seconds": wall, "cpu_seconds": cpu}


def show(row: dict) -> str:
    return (f"{row['system']:<40} batch {row['batch']:>2}: {row['reviews_per_second']:>8.1f} reviews/s, "
            f"{row['reviews_per_cpu_second']:>8.1f} per CPU second")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.set_flush_denormal(True)
    from rnnsent.inference.export import OnnxPredictor, export

    loaded = rnnsent.load_checkpoint(args.checkpoint)
    texts = sample_reviews(args)
    one = texts[: args.batch1_reviews]
    model, vocab, max_len, encoding = loaded.model, loaded.vocab, loaded.max_len, loaded.encoding

    def rnnsent_predict(impl: str, sort: bool):
        def score(batch, batch_size):
            model.impl = impl
            return predict(model, batch, vocab, max_len, encoding, batch_size=batch_size, sort_by_length=sort)
        return score

    with tempfile.TemporaryDirectory(prefix="rnnsent-infer-") as tmp:
        export(loaded, Path(tmp) / "model.onnx")
        onnx = OnnxPredictor(Path(tmp) / "model.onnx", threads=args.threads)
    systems = [("onnxruntime", lambda b, n: onnx.predict(b, batch_size=n)),
               ("rnnsent predict (fused kernel)", rnnsent_predict("auto", True)),
               ("rnnsent predict, input order (before)", rnnsent_predict("auto", False)),
               ("PyTorch stock layers", rnnsent_predict("torch", True))]
    best = {}
    for rep in range(args.repeats):  # round robin, so that a busy moment of a shared machine hits every system
        for name, score in systems:
            for batch, sample in ((64, texts), (1, one)):
                row = rates(name, batch, len(sample), *clocked(score, sample, batch))
                old = best.get((name, batch))
                best[name, batch] = (
                    row if old is None or row["reviews_per_cpu_second"] > old["reviews_per_cpu_second"] else old
                )
                print(f"[{rep + 1}/{args.repeats}] {show(row)}", flush=True)
    rows = [dict(row, repeats=args.repeats) for row in best.values()]
    model.impl = "auto"
    t0 = time.perf_counter()
    from rnnsent.data import tokenize

    for t in texts:
        vocab.encode(tokenize(t))
    tokenize_rate = len(texts) / (time.perf_counter() - t0)
    versions = {}
    if args.keras:
        keras, versions = keras_rows(args, loaded, texts)
        rows += keras
        for r in keras:
            print(show(r), flush=True)
    import onnxruntime

    lengths = [p.tokens for p in predict(model, texts, vocab, max_len, encoding)]
    info = dict(machine_info("cpu"), threads=args.threads or os.cpu_count(), onnxruntime=onnxruntime.__version__,
                **versions)
    result = {"machine": info, "checkpoint": args.checkpoint, "reviews": len(texts), "batch1_reviews": len(one),
              "mean_tokens": sum(lengths) / len(lengths), "max_tokens": max(lengths),
              "tokenize_reviews_per_second": tokenize_rate, "rows": rows, "command": " ".join(sys.argv)}
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def table(result: dict) -> str:
    """A Markdown table: reviews/s (wall clock and per CPU second of the process) at batch 64 and 1, and each
    system's CPU-second rate against rnnsent predict's (fused kernel): on a shared machine the CPU time is the
    steadier measure of one thread's work."""
    by = {(r["system"], r["batch"]): r for r in result["rows"]}
    base = {b: by.get(("rnnsent predict (fused kernel)", b)) for b in (64, 1)}
    lines = ["| system | batch 64: reviews/s | per CPU s | vs predict | batch 1: reviews/s | per CPU s | vs predict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in dict.fromkeys(r["system"] for r in result["rows"]):
        cells = []
        for b in (64, 1):
            r = by.get((name, b))
            if r is None:
                cells += ["-"] * 3
                continue
            ratio = r["reviews_per_cpu_second"] / base[b]["reviews_per_cpu_second"] if base[b] else None
            cells += [f"{r['reviews_per_second']:,.0f}", f"{r['reviews_per_cpu_second']:,.0f}",
                      f"{ratio:.2f}x" if ratio else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
