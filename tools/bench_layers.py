#!/usr/bin/env python3
"""Sequences per second of rnnsent.nn's LSTM / GRU / RNN against torch.nn's own layers on the same weights, forward
(no_grad) and forward+backward, one process per run with the two interleaved at every point.

Each point is one layer (batch_first, input size = hidden size unless --input-size) on random input of one batch
size and length, at one thread count: `--warmup` calls of each, then `--iters` calls alternating which goes first;
the medians give sequences/s and the ratio rnnsent.nn / torch.nn. With --packed the input is a PackedSequence of
random lengths from 1 to the length (the longest row that long), as variable-length batches are fed.

The default grid finishes in about 8 minutes on 2 shared cores: every cell, batch size and hidden size at length
50 with 1 and 2 threads, and length 500 at batch 1 and 16. --full runs LSTM/GRU/RNN x batch 1, 16, 64, 256 x hidden
64, 128, 256, 512 x length 50, 500 x 1 and 2 threads (its largest points take seconds per call: most of an hour).

    python tools/bench_layers.py                       # the default grid, a markdown table on stdout
    python tools/bench_layers.py --full --json out.json
    python tools/bench_layers.py --cells gru --batch 64 --hidden 128 --lengths 500 --threads 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout too (the tools beside this one are in its own folder)

import rnnsent  # noqa: E402,F401 (before torch: its OpenMP settings)
import torch  # noqa: E402
import rnnsent.nn as rnn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402
from bench_report import machine_info  # noqa: E402

CELLS = {"lstm": (torch.nn.LSTM, rnn.LSTM), "gru": (torch.nn.GRU, rnn.GRU), "rnn": (torch.nn.RNN, rnn.RNN)}
FULL = dict(cells=list(CELLS), batch=[1, 16, 64, 256], hidden=[64, 128, 256, 512], lengths=[50, 500], threads=[1, 2])
# The default: every cell, batch and hidden size at length 50 with both thread counts, and length 500 at batch 1 and
# 16 (where a call takes well under a second on 2 cores).
DEFAULT = dict(FULL, lengths=[50])
DEFAULT_LONG = dict(FULL, batch=[1, 16], lengths=[500])


def _call(layer: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor | None, backward: bool) -> float:
    """Seconds for one forward (no_grad) or one forward+backward (gradients of the input and every weight)."""
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        inp = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = layer(inp)
        if backward:
            (out.data if lengths is not None else out).sum().backward()
    seconds = time.perf_counter() - start
    layer.zero_grad(set_to_none=True)
    x.grad = None
    return seconds


def point(cell: str, batch: int, hidden: int, length: int, threads: int, input_size: int | None, iters: int,
          warmup: int, packed: bool = False, impl: str = "fused") -> dict:
    """One point of the grid: both layers, forward and forward+backward, interleaved."""
    torch.set_num_threads(threads)
    torch_cls, cls = CELLS[cell]
    torch.manual_seed(0)
    ref = torch_cls(input_size or hidden, hidden, batch_first=True)
    ours = cls(input_size or hidden, hidden, batch_first=True, impl=impl)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, length, input_size or hidden, requires_grad=True)
    lengths = None
    if packed:
        lengths = torch.randint(1, length + 1, (batch,), generator=torch.Generator().manual_seed(0))
        lengths[0] = length
    row = dict(cell=cell, batch=batch, hidden=hidden, length=length, threads=threads, packed=packed, impl=impl)
    for backward in (False, True):
        times = {"rnnsent": [], "torch": []}
        for i in range(warmup + iters):
            pair = [("rnnsent", ours), ("torch", ref)]
            for name, layer in pair if i % 2 else pair[::-1]:
                seconds = _call(layer, x, lengths, backward)
                if i >= warmup:
                    times[name].append(seconds)
        key = "fwd_bwd" if backward else "fwd"
        ours_s, torch_s = statistics.median(times["rnnsent"]), statistics.median(times["torch"])
        row.update({f"{key}_rnnsent_seq_s": batch / ours_s, f"{key}_torch_seq_s": batch / torch_s,
                    f"{key}_ratio": torch_s / ours_s})
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one row per cell, threads, length and batch; a column per hidden size holding the speed-up of
    rnnsent.nn over torch.nn, forward / forward+backward."""
    hiddens = sorted({r["hidden"] for r in rows})
    lines = ["| cell | threads | length | batch | " + " | ".join(f"hidden {h}" for h in hiddens) + " |",
             "|---|---|---|---|" + "---|" * len(hiddens)]
    keys = sorted({(r["cell"], r["threads"], r["length"], r["batch"]) for r in rows},
                  key=lambda k: (list(CELLS).index(k[0]), k[1], k[2], k[3]))
    for cell, threads, length, batch in keys:
        cells = []
        for h in hiddens:
            r = next((r for r in rows if (r["cell"], r["threads"], r["length"], r["batch"], r["hidden"])
                      == (cell, threads, length, batch, h)), None)
            cells.append(f"{r['fwd_ratio']:.1f} / {r['fwd_bwd_ratio']:.1f}" if r else "")
        lines.append(f"| {cell} | {threads} | {length} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the whole grid (hours on 2 cores)")
    p.add_argument("--cells", nargs="+", choices=list(CELLS))
    p.add_argument("--batch", nargs="+", type=int)
    p.add_argument("--hidden", nargs="+", type=int)
    p.add_argument("--lengths", nargs="+", type=int)
    p.add_argument("--threads", nargs="+", type=int)
    p.add_argument("--input-size", type=int, help="the layers' input size (default: the hidden size)")
    p.add_argument("--packed", action="store_true", help="PackedSequence input of random lengths")
    p.add_argument("--impl", choices=["fused", "auto"], default="fused",
                   help="rnnsent.nn's impl: fused (the kernel, the default) or auto (what the layer picks)")
    p.add_argument("--iters", type=int, default=3, help="timed calls of each layer per point (the median counts)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each layer first")
    p.add_argument("--json", type=Path, help="write the machine and every point here")
    args = p.parse_args(argv)
    asked = {k: getattr(args, k) for k in FULL if getattr(args, k)}
    grids = [dict(FULL, **asked)] if args.full or asked else [DEFAULT, DEFAULT_LONG]
    if not rnn.fused.available():
        print(f"error: {rnn.fused.status()}", file=sys.stderr)
        return 1
    rows = []
    for grid in grids:
        for threads in grid["threads"]:
            for cell in grid["cells"]:
                for length in grid["lengths"]:
                    for batch in grid["batch"]:
                        for hidden in grid["hidden"]:
                            rows.append(point(cell, batch, hidden, length, threads, args.input_size, args.iters,
                                              args.warmup, args.packed, args.impl))
                            r = rows[-1]
                            print(f"{cell} threads {threads} length {length} batch {batch} hidden {hidden}: "
                                  f"forward x{r['fwd_ratio']:.2f}, forward+backward x{r['fwd_bwd_ratio']:.2f}",
                                  file=sys.stderr, flush=True)
    info = machine_info("cpu")
    print(f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}; rnnsent.nn / torch.nn speed-up, "
          f"forward / forward+backward (sequences per second, medians), impl={args.impl}"
          f"{', packed input' if args.packed else ''}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
