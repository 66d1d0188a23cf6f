#!/usr/bin/env python3
"""What a short CUDA training run costs the host: host syncs and warnings per source line, and the top
CUDA kernels with their launch counts, so a sync or warning per step, or a stray copy, shows up by name.

    python tools/gpu_diag.py --data PATH --cell gru --limit 3000 --json diag.json

Runs rnnsent's own Trainer.fit() (the command line's code path) once under
torch.cuda.set_sync_debug_mode("warn"), which reports every operation that makes the host wait for the
GPU, then once under torch.profiler for the kernel table.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too


def run(config_kwargs: dict) -> dict:
    import torch

    from rnnsent.config import TrainConfig
    from rnnsent.training.trainer import Trainer

    config = TrainConfig(**config_kwargs)
    trainer = Trainer(config)
    steps = config.epochs * len(trainer.train_batches)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs, others = collections.Counter(), collections.Counter()
    for w in caught:
        where = f"{Path(w.filename).name}:{w.lineno}"
        text = str(w.message).splitlines()[0][:160]
        (syncs if "synchronizing" in text else others)[f"{where}  {text}"] += 1
    return {"train_steps": steps, "syncs": dict(syncs.most_common()), "warnings": dict(others.most_common())}


def profile(config_kwargs: dict, rows: int = 20) -> dict:
    import torch
    from torch.profiler import ProfilerActivity

    from rnnsent.config import TrainConfig
    from rnnsent.training.trainer import Trainer

    trainer = Trainer(TrainConfig(**config_kwargs))
    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.fit()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)
    launches = sum(
        e.count for e in prof.key_averages() if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
    )
    return {"table": table, "kernel_launches": launches,
            "train_steps": config_kwargs["epochs"] * len(trainer.train_batches)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--cell", default="gru")
    p.add_argument("--limit", type=int, default=3000, help="reviews per split (a short run)")
    p.add_argument("--amp", default="none")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out = tempfile.mkdtemp(prefix="rnnsent-gpu-diag-")
    kwargs = dict(cell=args.cell, limit=args.limit, epochs=1, device="cuda", amp=args.amp, quiet=True, out=out,
                  data_root=args.data, cache_dir=args.cache_dir)
    result = {"config": kwargs, "sync_debug": run(kwargs), "profile": profile(kwargs)}
    d = result["sync_debug"]
    print(f"{args.cell} amp={args.amp}: {d['train_steps']} training steps (plus validation, test and checkpoints)")
    print("host syncs by source line:")
    for k, v in d["syncs"].items():
        print(f"  {v:6d}  {k}")
    print("other warnings:" + ("" if d["warnings"] else " none"))
    for k, v in d["warnings"].items():
        print(f"  {v:6d}  {k}")
    prof = result["profile"]
    print(f"kernel launches: {prof['kernel_launches']} in {prof['train_steps']} steps + evaluation")
    print(prof["table"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
