"""Fused CPU kernels for the recurrent layer, compiled on first use (rnnsent/csrc/recurrent_cpu.cpp).

PyTorch's stock CPU GRU/LSTM/RNN run a dozen small autograd ops per time step, forward and backward;
at rnnsent's size (batch 64, 100 units) dispatching them costs more than the arithmetic. The C++
kernel runs a whole sequence per call: per step one small GEMM and one vectorised gate loop, the batch
split across threads, and dW_hh and db_hh summed per thread inside the backward loop. See the .cpp
for the maths.

The kernel is built with torch.utils.cpp_extension (a C++ compiler and ninja; ~15 s once per machine,
then cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions). Where it cannot be built the
models fall back to PyTorch's layers and `status()` says why. Nothing here changes the model's
parameters: the fused and stock paths compute the same function on the same weights.
"""
from __future__ import annotations

import hashlib
import os
import platform
import threading
import time
from pathlib import Path

import torch

# MKL's conditional numerical reproducibility, strict: its GEMMs (the input projection around the kernel and
# its backward) give the same bits for any thread count, as the kernel does. MKL reads this at its first
# call, so it is set on import; a value the user set wins, and code that ran MKL before importing rnnsent
# keeps MKL's default (results then may differ in the last bits between thread counts).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

CELL_IDS = {"lstm": 0, "gru": 1, "rnn": 2}  # the kernel's cell numbers
IMPLS = ("auto", "fused", "torch")
SOURCE = Path(__file__).resolve().parent / "csrc" / "recurrent_cpu.cpp"
STALE_LOCK_S = 600.0  # a build lock older than this belongs to a build that died

_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet
_error: str | None = None


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
    return _loaded


def status() -> str:
    """One line for logs: whether the fused CPU kernel is in use, or why not."""
    if _loaded is None:
        available()
    if _loaded:
        return "fused CPU kernel (rnnsent/csrc/recurrent_cpu.cpp)"
    return (f"PyTorch's stock layers (fused CPU kernel unavailable: {_error}; it needs a C++ compiler and "
            "ninja, `pip install ninja`)")


class _Sequence(torch.autograd.Function):
    """last_state = sequence(x_proj, W_hh, b_hh, lengths); x_proj is the input projection, [T, B, G*H]."""

    @staticmethod
    def forward(ctx, cell_id: int, x: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, lengths: torch.Tensor,
                save: bool):
        last, hs, act, extra = torch.ops.rnnsent_cpu.sequence_forward(cell_id, x, w_hh, b_hh, lengths, save)
        ctx.cell_id = cell_id
        if save:
            ctx.save_for_backward(w_hh, lengths, hs, act, extra)
        return last

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative raises instead of coming out wrong
    def backward(ctx, grad_last: torch.Tensor):
        w_hh, lengths, hs, act, extra = ctx.saved_tensors
        dx, dw, db = torch.ops.rnnsent_cpu.sequence_backward(ctx.cell_id, grad_last, w_hh, lengths, hs, act, extra)
        return None, dx, dw, db, None, None


@torch.compiler.disable  # an opaque C++ call: torch.compile runs it as it is, between compiled graphs
def last_state(cell: str, x_proj: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
               lengths: torch.Tensor) -> torch.Tensor:
    """The recurrent layer's state after each sequence's last real step, [B, H], from time-major input
    projections x_proj = x @ W_ih^T + b_ih of shape [T, B, G*H] and lengths [B] in [1, T]."""
    # Keep every step for backward only when a gradient will be asked for (grad mode is off inside forward).
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x_proj, w_hh, b_hh))
    return _Sequence.apply(CELL_IDS[cell], x_proj.contiguous(), w_hh.contiguous(), b_hh.contiguous(),
                           lengths.to(device="cpu", dtype=torch.long).contiguous(), save)
