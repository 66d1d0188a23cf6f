"""Fused CPU kernels for the recurrent layer, compiled on first use (rnnsent/model/csrc/recurrent_cpu.cpp).

PyTorch's stock CPU GRU/LSTM/RNN run a dozen small autograd ops per time step, forward and backward;
at rnnsent's size (batch 64, 100 units) dispatching them costs more than the arithmetic. The C++
kernel runs a whole sequence per call: per step one small GEMM and one vectorised gate loop, the batch
split across threads, and dW_hh and db_hh summed per thread inside the backward loop. See the .cpp
for the maths.

The kernel is built with torch.utils.cpp_extension (a C++ compiler and ninja; ~15-20 s once per
machine, then cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions). The first build says so
in one log line (logger "rnnsent.model.fused", level WARNING so that it shows without any logging set up);
`python -m rnnsent.model.fused --build` builds it ahead of time (a Dockerfile step). Where it cannot be built
the models fall back to PyTorch's layers, say so once per process, and `status()` says why. Nothing
here changes the model's parameters: the fused and stock paths compute the same function on the same
weights.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch


CELL_IDS = {"lstm": 0, "gru": 1, "rnn": 2, "rnn_relu": 3}  # the kernel's cell numbers (rnn: tanh)
SOURCE = Path(__file__).resolve().parent / "csrc" / "recurrent_cpu.cpp"
STALE_LOCK_S = 600.0  # a build lock older than this belongs to a build that died

_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet
_error: str | None = None
log = logging.getLogger(__name__)


def _build_key() -> str:
    """What the build depends on: the source, the CPU's instruction sets (-march=native) and torch. The source is
    in the key so that checkouts of different versions sharing one cache keep a build each, not rebuild in turn."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256(f"{flags}|{torch.__version__}|".encode() + SOURCE.read_bytes()).hexdigest()[:10]


def _disabled() -> bool:
    return os.environ.get("RNNSENT_FUSED", "1") == "0"


def _build_name() -> str:
    return f"rnnsent_cpu_{_build_key()}"


def build_directory(name: str) -> Path:
    """Where the build of `name` lives: TORCH_EXTENSIONS_DIR or PyTorch's default root, per torch version."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return Path(root) / f"torch-{torch.__version__}" / name


def clear_stale_lock(directory: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove a build lock left by a build that was killed (Ctrl-C, OOM) before it finished.

    PyTorch's extension builder waits, without a timeout, for the lock file of a concurrent build to go
    away; one left by a dead build would hang every later run. A build takes seconds, so a lock older
    than max_age_s has no live owner."""
    lock = directory / "lock"
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
            return True
    except FileNotFoundError:
        pass
    return False


def needs_build() -> bool:
    """True when available() would compile first (nothing loaded yet and no build on disk): worth a log line."""
    if _loaded is not None or _disabled():
        return False
    name = _build_name()
    return not (build_directory(name) / f"{name}.so").exists()


def _build(name: str, cflags: list[str]) -> None:
    from torch.utils.cpp_extension import load

    directory = build_directory(name)
    directory.mkdir(parents=True, exist_ok=True)
    clear_stale_lock(directory)
    load(name=name, sources=[str(SOURCE)], extra_cflags=cflags, build_directory=str(directory),
         is_python_module=False, verbose=False)


def available() -> bool:
    """Build (once per machine) and load the kernel; False, with the reason in status(), where that fails."""
    if _loaded is not None:
        return _loaded
    if torch.compiler.is_compiling():  # first use inside torch.compile: load it outside the traced code
        return torch._disable_dynamo(_load)()
    return _load()


def _load() -> bool:
    global _loaded, _error
    with _lock:
        if _loaded is not None:
            return _loaded
        if _disabled():
            _loaded, _error = False, "disabled by RNNSENT_FUSED=0"
            return False
        try:
            # -march=native: built where it runs. The CPU's flags are in the name, so a home directory
            # shared by different machines keeps one build per instruction set. -fno-trapping-math lets GCC
            # turn the exp clamps into vector min/max (without it AVX2 builds do not vectorise the gates).
            # -fopenmp: at::parallel_for is inline OpenMP, serial without it (it then binds to the libgomp
            # that PyTorch already loaded).
            name = _build_name()
            if needs_build():  # a silent stall of 15-20 s looks like a hang: say what it is, once
                log.warning(f"rnnsent: compiling the fused CPU kernel (once per machine, about 15-20 s; cached in "
                            f"{build_directory(name)}; `python -m rnnsent.model.fused --build` does it ahead of time)")
            flags = ["-O3", "-fno-trapping-math"]
            try:
                _build(name, flags + ["-march=native", "-fopenmp"])
            except Exception:  # a compiler without -march=native or OpenMP (Apple's clang): portable, serial build
                _build(name + "_portable", flags)
            torch.ops.rnnsent_cpu.sequence_forward  # noqa: B018 (raises if the library did not register)
            _register_ops()
            _loaded = True
        except Exception as e:  # no compiler, no ninja, read-only cache...: fall back, remember why
            lines = str(e).strip().splitlines()
            errors = [line for line in lines if "error" in line.lower()]  # the compiler's own words first
            _loaded, _error = False, f"{type(e).__name__}: {(errors or lines or [''])[0].strip()}"
            log.warning(f"rnnsent: using {status()}")  # once: _loaded is settled for this process
    return _loaded


def status() -> str:
    """One line for logs: whether the fused CPU kernel is in use, or why not."""
    if _loaded is None:
        available()
    if _loaded:
        return "fused CPU kernel (rnnsent/model/csrc/recurrent_cpu.cpp)"
    return (f"PyTorch's stock layers (fused CPU kernel unavailable: {_error}; it needs a C++ compiler and "
            "ninja, `pip install ninja`)")


# The kernel as PyTorch operators: the C++ file defines rnnsent_cpu::sequence_forward and ::sequence_backward
# (TORCH_LIBRARY), _register_ops gives them fake implementations (output shapes without running them) and vmap rules,
# and _Recurrent is their autograd formula. So PyTorch's tools see ops with known shapes and derivatives instead of
# an opaque Python call: torch.compile traces around them, torch.func.grad differentiates them, torch.func.vmap
# maps them (per-sample gradients), and a second derivative runs through `reference`, the same function in
# PyTorch's own ops.


def _gates(cell: int) -> int:
    return (4, 3, 1, 1)[cell]


def _per_sample(op):
    """A vmap rule that runs `op` once per sample of the mapped dimension and stacks the results. The kernel is
    batched already; what vmap adds is per-sample weights or per-sample W_hh gradients (vmap over grad), which
    need one call each."""

    def rule(info, in_dims, *args):
        results = [op(*[a.select(d, i).contiguous() if d is not None else a for a, d in zip(args, in_dims)])
                   for i in range(info.batch_size)]
        outputs = [torch.stack(parts) for parts in zip(*results)]
        return outputs, [0] * len(outputs)

    return rule


def _register_ops() -> None:
    """Fake (meta) implementations and vmap rules of the two C++ ops, once they are loaded."""

    @torch.library.register_fake("rnnsent_cpu::sequence_forward")
    def _forward_fake(cell, x, w_hh, b_hh, lengths, h0, c0, save, full):
        T, B, H = x.size(0), x.size(1), w_hh.size(1)
        hs = x.new_empty(T + 1 if save or full else 2, B, H)
        steps = T if save else 1
        act = x.new_empty(steps, B, _gates(cell) * H) if cell in (0, 1) else x.new_empty(0)
        extra = x.new_empty(0) if cell >= 2 else x.new_empty((T + 1 if save else 2) if cell == 0 else steps, B, H)
        last_c = x.new_empty(B, H) if cell == 0 else x.new_empty(0)
        return [x.new_empty(B, H), hs, act, extra, last_c]

    @torch.library.register_fake("rnnsent_cpu::sequence_backward")
    def _backward_fake(cell, grad_last, grad_last_c, grad_seq, w_hh, lengths, hs, act, extra):
        T, B, H = hs.size(0) - 1, hs.size(1), hs.size(2)
        return [hs.new_empty(T, B, _gates(cell) * H), w_hh.new_empty(w_hh.shape), w_hh.new_empty(w_hh.size(0)),
                hs.new_empty(B, H), hs.new_empty(B, H) if cell == 0 else hs.new_empty(0)]

    @torch.library.register_fake("rnnsent_cpu::projection_backward")
    def _projection_fake(grad, x, w, need_x, need_w, need_b):
        return [x.new_empty(x.shape if need_x else (0,)), w.new_empty(w.shape if need_w else (0,)),
                w.new_empty(w.size(0) if need_b else 0)]

    torch.library.register_vmap("rnnsent_cpu::sequence_forward", _per_sample(torch.ops.rnnsent_cpu.sequence_forward))
    torch.library.register_vmap("rnnsent_cpu::sequence_backward",
                                _per_sample(torch.ops.rnnsent_cpu.sequence_backward))
    torch.library.register_vmap("rnnsent_cpu::projection_backward",
                                _per_sample(torch.ops.rnnsent_cpu.projection_backward))


SECOND_DERIVATIVE = ("rnnsent's fused CPU kernel has first derivatives only here (under torch.compile); for second "
                     "derivatives (create_graph=True, double backward) run the layer with impl=\"torch\"")


class _Recurrent(torch.autograd.Function):
    """(last [B, H], every state [T+1, B, H] or scratch, ..., the LSTM's last cell state) = the kernel on
    (x_proj, W_hh, b_hh, lengths, h0, c0). setup_context (not ctx in forward) and generate_vmap_rule let
    torch.func transforms use it; `again` recomputes x_proj with its graph, for second derivatives."""

    generate_vmap_rule = True

    @staticmethod
    def forward(cell, x, w_hh, b_hh, lengths, h0, c0, save, full, again):
        return tuple(torch.ops.rnnsent_cpu.sequence_forward(cell, x, w_hh, b_hh, lengths, h0, c0, save, full))

    @staticmethod
    def setup_context(ctx, inputs, output):
        cell, _, w_hh, b_hh, lengths, h0, c0, save, _, again = inputs
        _, hs, act, extra, _ = output
        ctx.cell, ctx.saved, ctx.again = cell, save, again
        ctx.mark_non_differentiable(act, extra)
        if save:
            ctx.save_for_backward(w_hh, b_hh, lengths, h0, c0, hs, act, extra)

    @staticmethod
    def backward(ctx, grad_last, grad_hs, _act, _extra, grad_last_c):
        if not ctx.saved:  # forward was told no gradient would be asked for (see run)
            raise RuntimeError("rnnsent's fused kernel ran without keeping its steps for backward; call the layer "
                               "with gradients enabled, or with impl=\"torch\"")
        w_hh, b_hh, lengths, h0, c0, hs, act, extra = ctx.saved_tensors
        if torch.is_grad_enabled() and not torch._C._functorch.is_functorch_wrapped_tensor(hs):
            return _second_order(ctx, grad_last, grad_hs, grad_last_c)  # create_graph=True: a differentiable backward
        B, H = hs.size(1), hs.size(2)
        grad_last = grad_last if grad_last is not None else hs.new_zeros(B, H)
        grad_last_c = grad_last_c if grad_last_c is not None and ctx.cell == 0 else hs.new_empty(0)
        grad_seq = grad_hs[1:] if grad_hs is not None else hs.new_empty(0)  # hs[0] is the initial state
        dx, dw, db, dh0, dc0 = torch.ops.rnnsent_cpu.sequence_backward(
            ctx.cell, grad_last.contiguous(), grad_last_c.contiguous(), grad_seq.contiguous(), w_hh, lengths, hs,
            act, extra)
        return (None, dx, dw, db, None, dh0 if h0.numel() else None, dc0 if c0.numel() else None, None, None, None)


class _Projection(torch.autograd.Function):
    """F.linear(x, w, b), the input projection x @ W^T + b, with a backward whose gradients do not depend on the
    thread count (rnnsent_cpu::projection_backward; left to MKL, a long sum over T*B rows is split by thread)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b):
        return torch.nn.functional.linear(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        g2, x2 = grad.reshape(-1, grad.size(-1)), x.reshape(-1, x.size(-1))  # (N, G), (N, E)
        if not torch.compiler.is_compiling() and (torch.is_grad_enabled()
                                                  or torch._C._functorch.is_functorch_wrapped_tensor(grad)):
            # to be differentiated again, or under torch.func: PyTorch's own products
            return (grad @ w if need_x else None, g2.t() @ x2 if need_w else None,
                    g2.sum(0) if need_b and ctx.has_bias else None)
        dx, dw, db = torch.ops.rnnsent_cpu.projection_backward(
            g2.contiguous(), x2.contiguous(), w.contiguous(), need_x, need_w, need_b and ctx.has_bias)
        return dx.view(x.shape) if need_x else None, dw if need_w else None, db if need_b and ctx.has_bias else None


def project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, w, b), the same values, with gradients that are the same bits for any thread count (float32 on
    the CPU where the kernel is loaded; F.linear itself elsewhere)."""
    if _loaded and x.dtype == w.dtype == torch.float32 and x.device.type == w.device.type == "cpu":
        return _Projection.apply(x, w, b)
    return torch.nn.functional.linear(x, w, b)


def _second_order(ctx, grad_last, grad_hs, grad_last_c):
    """_Recurrent's backward when its own derivative will be asked for (create_graph=True): the same gradients
    through `reference`, PyTorch's ops on x_proj recomputed by ctx.again, so that they are differentiable."""
    if ctx.again is None:
        raise RuntimeError(SECOND_DERIVATIVE)
    w_hh, b_hh, lengths, h0, c0, hs, _, _ = ctx.saved_tensors
    x = ctx.again()  # x_proj again, with the graph to what made it
    last, seq, last_c = reference(ctx.cell, x, w_hh, b_hh, lengths, h0 if h0.numel() else None,
                                  c0 if c0.numel() else None)
    outputs = [(last, grad_last), (seq, None if grad_hs is None else grad_hs[1:]), (last_c, grad_last_c)]
    outputs = [(o, g) for o, g in outputs if g is not None and o is not None]
    wanted = [(k, t) for k, t in [(1, x), (2, w_hh), (3, b_hh), (5, h0), (6, c0)]
              if ctx.needs_input_grad[k] and t.requires_grad and t.numel()]
    grads = torch.autograd.grad([o for o, _ in outputs], [t for _, t in wanted], [g for _, g in outputs],
                                create_graph=True, allow_unused=True)
    result = [None] * 10
    for (k, t), g in zip(wanted, grads):
        result[k] = g if g is not None else torch.zeros_like(t)
    return tuple(result)


def reference(cell: int, x: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, lengths: torch.Tensor,
              h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What the kernel computes, in PyTorch's ops one step at a time (differentiable to any order):
    (state after each row's last real step [B, H], every step's state [T, B, H], the LSTM's last cell state)."""
    B, H = x.size(1), w_hh.size(1)
    h = h0 if h0 is not None else x.new_zeros(B, H)
    c = c0 if c0 is not None else x.new_zeros(B, H)
    last, last_c, states = x.new_zeros(B, H), x.new_zeros(B, H), []
    for t in range(x.size(0)):
        g = torch.nn.functional.linear(h, w_hh, b_hh)  # (B, G*H)
        if cell == 0:  # LSTM: i, f, g, o
            i, f, n, o = (x[t] + g).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(n)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif cell == 1:  # GRU: r, z, n with the reset gate applied after W_hn, as PyTorch's
            (xr, xz, xn), (gr, gz, gn) = x[t].chunk(3, dim=1), g.chunk(3, dim=1)
            r, z = torch.sigmoid(xr + gr), torch.sigmoid(xz + gz)
            n = torch.tanh(xn + r * gn)
            h = n + z * (h - n)
        else:
            h = (torch.tanh if cell == 2 else torch.relu)(x[t] + g)
        states.append(h)
        ends = (lengths.to(x.device) == t + 1).unsqueeze(1)  # (B, 1): rows whose last real step this is
        last, last_c = torch.where(ends, h, last), torch.where(ends, c, last_c)
    return last, torch.stack(states), (last_c if cell == 0 else None)


def run(cell: str, x_proj: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, lengths: torch.Tensor,
        h0: torch.Tensor | None = None, c0: torch.Tensor | None = None, full: bool = False, again=None
        ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One direction of one recurrent layer from time-major input projections x_proj = x @ W_ih^T + b_ih,
    [T, B, G*H], lengths [B] in [1, T] and initial states h0 (c0 for the LSTM) [B, H] or None for zeros: the
    state after each row's last real step, [B, H], with `full` every step's state, [T, B, H] (past a row's
    length: computed, but outside the output), and the LSTM's cell state after the last real step. `again()`
    recomputes x_proj with its graph (for second derivatives; without it they are refused)."""
    # Keep every step for backward only when a gradient will be asked for.
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x_proj, w_hh, b_hh, h0, c0))
    last, hs, _, _, last_c = _Recurrent.apply(
        CELL_IDS[cell], x_proj.contiguous(), w_hh.contiguous(), b_hh.contiguous(),
        lengths.to(device="cpu", dtype=torch.long).contiguous(), x_proj.new_empty(0) if h0 is None else h0.contiguous(),
        x_proj.new_empty(0) if c0 is None else c0.contiguous(), save, full, again if save else None)
    return last, (hs[1:] if full else None), (last_c if cell == "lstm" else None)


def last_state(cell: str, x_proj: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
               lengths: torch.Tensor) -> torch.Tensor:
    """The recurrent layer's state after each sequence's last real step, [B, H] (see run)."""
    return run(cell, x_proj, w_hh, b_hh, lengths)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnsent.model.fused", description=(
        "rnnsent's fused CPU kernel. --build compiles it now (once per machine, about 15-20 s) instead of on "
        "first use, for example in a Dockerfile; the build is cached under TORCH_EXTENSIONS_DIR or "
        "~/.cache/torch_extensions."))
    p.add_argument("--build", action="store_true", help="compile (or load) the kernel now and say where it is")
    if not p.parse_args(argv).build:
        p.print_help()
        return 0
    ok = available()
    print(status())
    if ok:
        print(f"cached in {build_directory(_build_name()).parent}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
