"""Fused CPU kernels for the recurrent layer, compiled on first use (rnnsent/csrc/recurrent_cpu.cpp).

PyTorch's stock CPU GRU/LSTM/RNN run a dozen small autograd ops per time step, forward and backward;
at rnnsent's size (batch 64, 100 units) dispatching them costs more than the arithmetic. The C++
kernel runs a whole sequence per call: per step one small GEMM and one vectorised gate loop, the batch
split across threads, and dW_hh and db_hh summed per thread inside the backward loop. See the .cpp
for the maths.

The kernel is built with torch.utils.cpp_extension (a C++ compiler and ninja; ~15-20 s once per
machine, then cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions). The first build says so
in one log line (logger "rnnsent.fused", level WARNING so that it shows without any logging set up);
`python -m rnnsent.fused --build` builds it ahead of time (a Dockerfile step). Where it cannot be built
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

from rnnsent.config import IMPLS  # noqa: F401 (re-exported: the choices of rnn_impl)

CELL_IDS = {"lstm": 0, "gru": 1, "rnn": 2}  # the kernel's cell numbers
SOURCE = Path(__file__).resolve().parent / "csrc" / "recurrent_cpu.cpp"
STALE_LOCK_S = 600.0  # a build lock older than this belongs to a build that died

_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet
_error: str | None = None
log = logging.getLogger(__name__)


def _cpu_key() -> str:
    """What the build depends on besides the source: the CPU's instruction sets (-march=native) and torch."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256(f"{flags}|{torch.__version__}".encode()).hexdigest()[:10]


def _disabled() -> bool:
    return os.environ.get("RNNSENT_FUSED", "1") == "0"


def _build_name() -> str:
    return f"rnnsent_cpu_{_cpu_key()}"


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
    global _loaded, _error
    if _loaded is not None:
        return _loaded
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
                            f"{build_directory(name)}; `python -m rnnsent.fused --build` does it ahead of time)")
            flags = ["-O3", "-fno-trapping-math"]
            try:
                _build(name, flags + ["-march=native", "-fopenmp"])
            except Exception:  # a compiler without -march=native or OpenMP (Apple's clang): portable, serial build
                _build(name + "_portable", flags)
            torch.ops.rnnsent_cpu.sequence_forward  # noqa: B018 (raises if the library did not register)
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
        return "fused CPU kernel (rnnsent/csrc/recurrent_cpu.cpp)"
    return (f"PyTorch's stock layers (fused CPU kernel unavailable: {_error}; it needs a C++ compiler and "
            "ninja, `pip install ninja`)")


# The kernel as a PyTorch operator (torch.library), so that PyTorch's tools see one op with a known autograd
# formula and known output shapes instead of an opaque Python call: torch.compile traces around it (the fake
# implementations give it shapes), torch.func.grad differentiates it, and a second derivative stops with a
# message instead of coming out wrong. The C++ functions are called only when a real tensor reaches the op.


def _gates(cell: int) -> int:
    return (4, 3, 1)[cell]


@torch.library.custom_op("rnnsent::recurrent_forward", mutates_args=())
def _forward_op(cell: int, x: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, lengths: torch.Tensor,
                save: bool, full: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last [B, H], seq [T, B, H] if full else [0, B, H], and what backward needs if save: hs, act, extra)."""
    last, hs, act, extra = torch.ops.rnnsent_cpu.sequence_forward(cell, x, w_hh, b_hh, lengths, save, full)
    seq = hs[1:].clone() if full else x.new_empty(0, x.size(1), w_hh.size(1))  # an op's outputs never alias
    if not save:
        hs, act, extra = (x.new_empty(0) for _ in range(3))
    return last, seq, hs, act, extra


@_forward_op.register_fake
def _forward_fake(cell, x, w_hh, b_hh, lengths, save, full):
    T, B, H = x.size(0), x.size(1), w_hh.size(1)
    seq = x.new_empty(T if full else 0, B, H)
    if not save:
        return x.new_empty(B, H), seq, x.new_empty(0), x.new_empty(0), x.new_empty(0)
    act = x.new_empty(T, B, _gates(cell) * H) if cell != 2 else x.new_empty(0)
    extra = x.new_empty(T + 1 if cell == 0 else T, B, H) if cell != 2 else x.new_empty(0)
    return x.new_empty(B, H), seq, x.new_empty(T + 1, B, H), act, extra


@torch.library.custom_op("rnnsent::recurrent_backward", mutates_args=())
def _backward_op(cell: int, grad_last: torch.Tensor, grad_seq: torch.Tensor, w_hh: torch.Tensor, lengths: torch.Tensor,
                 hs: torch.Tensor, act: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = torch.ops.rnnsent_cpu.sequence_backward(cell, grad_last, grad_seq, w_hh, lengths, hs, act, extra)
    return dx, dw, db


@_backward_op.register_fake
def _backward_fake(cell, grad_last, grad_seq, w_hh, lengths, hs, act, extra):
    T, B, H = hs.size(0) - 1, hs.size(1), hs.size(2)
    return hs.new_empty(T, B, _gates(cell) * H), w_hh.new_empty(w_hh.shape), w_hh.new_empty(w_hh.size(0))


SECOND_DERIVATIVE = ("rnnsent's fused CPU kernel has first derivatives only (once differentiable); for second "
                     "derivatives (create_graph=True, double backward, torch.func.hessian) build the model with "
                     "impl=\"torch\"")


def _setup_forward(ctx, inputs, output):
    cell, _, w_hh, _, lengths, save, _ = inputs
    _, _, hs, act, extra = output
    ctx.cell, ctx.saved = cell, save
    ctx.save_for_backward(w_hh, lengths, hs, act, extra)


def _backward(ctx, grad_last, grad_seq, *_):
    if not ctx.saved:  # forward decided no gradient would be asked for (see _run)
        raise RuntimeError("rnnsent's fused kernel ran without keeping its steps for backward; call the model with "
                           "gradients enabled, or build it with impl=\"torch\"")
    w_hh, lengths, hs, act, extra = ctx.saved_tensors
    B, H = hs.size(1), hs.size(2)
    grad_last = grad_last if grad_last is not None else hs.new_zeros(B, H)
    grad_seq = grad_seq if grad_seq is not None else hs.new_empty(0)
    dx, dw, db = _backward_op(ctx.cell, grad_last.contiguous(), grad_seq.contiguous(), w_hh, lengths, hs, act, extra)
    return None, dx, dw, db, None, None, None


def _refuse_second_derivative(ctx, *grads):
    raise RuntimeError(SECOND_DERIVATIVE)


_forward_op.register_autograd(_backward, setup_context=_setup_forward)
_backward_op.register_autograd(_refuse_second_derivative, setup_context=lambda ctx, inputs, output: None)


def run(cell: str, x_proj: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, lengths: torch.Tensor,
        full: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One direction of one recurrent layer from time-major input projections x_proj = x @ W_ih^T + b_ih,
    [T, B, G*H], and lengths [B] in [1, T]: the state after each row's last real step, [B, H], and with
    `full` every step's state, [T, B, H] (past a row's length: computed, but outside the output)."""
    # Keep every step for backward only when a gradient will be asked for.
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x_proj, w_hh, b_hh))
    last, seq, *_ = _forward_op(CELL_IDS[cell], x_proj.contiguous(), w_hh.contiguous(), b_hh.contiguous(),
                                lengths.to(device="cpu", dtype=torch.long).contiguous(), save, full)
    return last, (seq if full else None)


def last_state(cell: str, x_proj: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
               lengths: torch.Tensor) -> torch.Tensor:
    """The recurrent layer's state after each sequence's last real step, [B, H] (see run)."""
    return run(cell, x_proj, w_hh, b_hh, lengths)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnsent.fused", description=(
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
