"""The machine, set up once per run: device, CPU threads, denormals, the allocator, determinism, RNG state;
and mixed precision (autocast_context), which only CUDA has."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import signal
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU. An explicit CUDA request without CUDA is an error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name} was asked for, but this PyTorch sees no CUDA device "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing large blocks back to the OS.

    PyTorch's CPU allocator has no cache: every step allocates activations and gradients of tens of MB,
    and glibc serves blocks that large with mmap and returns them with munmap, so each step touches
    fresh pages and pays a page fault per 4 KiB (measured: 25-30% of a GRU step on the developers'
    2-core machine). Raising the mmap and trim thresholds keeps those blocks in the heap. It is a
    process-wide setting; peak memory is unchanged, the process just keeps it. A no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        return libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok
    except (OSError, AttributeError):  # musl and other libcs: leave the allocator alone
        return False


def threads_spin() -> bool:
    """Whether OpenMP's waiting threads spin instead of sleeping. `import rnnsent` sets OMP_WAIT_POLICY=PASSIVE
    before torch loads OpenMP, which reads it then, once; so the variable is unset only when torch was imported
    before rnnsent and nobody chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT). Nothing changes the policy of a
    running process: torch.set_num_threads does not, and OpenMP has no call for it."""
    return "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ


@functools.cache
def _say_threads_spin() -> None:
    log.warning("rnnsent: torch was imported before rnnsent, so OpenMP's idle threads spin and 2 or more threads can "
                "run several times slower on a busy machine; import rnnsent first, or start Python with "
                "OMP_WAIT_POLICY=PASSIVE (docs/speed.md)")


def check_wait_policy(threads: int) -> None:
    """One log line per process when `threads` CPU threads (2 or more) will spin while they wait (threads_spin)."""
    if threads > 1 and threads_spin():
        _say_threads_spin()


def setup(device: torch.device, threads: int | None = None, flush_denormal: bool = True, retain_memory: bool = True,
          deterministic: bool = False, strict_blas: bool = False) -> None:
    """Threads, denormals and the allocator on CPU; deterministic kernels where asked.

    strict_blas: MKL's strict reproducible mode (MKL_CBWR=AUTO,STRICT), so that the GEMMs around the fused
    kernel give the same bits for any thread count, as the kernel does. MKL reads it at its first call, which
    in a command-line run comes after this (the first is the model's initialisation); a value the user set
    wins. Not for PyTorch's own layers: the released models were trained with MKL's default, and their
    recorded commands (--rnn-impl torch) reproduce them bit for bit only under it, on the machine that trained them
    (docs/reproducibility.md)."""
    if strict_blas:
        os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    if device.type == "cpu":
        # set_flush_denormal reaches only this thread and OpenMP workers started after it: the command
        # line gets here before any parallel op; code that ran torch work before building a Trainer
        # should call torch.set_flush_denormal(True) first thing.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        check_wait_policy(torch.get_num_threads())
        torch.set_flush_denormal(flush_denormal)
        if retain_memory:
            retain_freed_memory()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def machine(settings) -> torch.device:
    """The machine a run's settings (a TrainConfig) ask for: the device resolved, set up (threads, denormals,
    allocator, determinism; MKL's strict mode around the fused kernel) and checked for --amp."""
    try:
        device = resolve_device(settings.device)
    except ValueError as e:  # no CUDA: what to change is --amp too, where it is asked for
        if settings.amp == "none":
            raise
        raise ValueError(f"{e}, and drop --amp {settings.amp} (mixed precision is CUDA's: on the CPU it would do "
                         "nothing)") from None
    setup(device, settings.threads, settings.flush_denormal, settings.retain_memory, settings.deterministic,
          strict_blas=settings.rnn_impl != "torch")
    check_amp(settings.amp, device)
    return device


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class StopNow(KeyboardInterrupt):
    """Raised by StopFlag's handler where stopping cannot wait for the step to end (a second Ctrl-C)."""


class StopFlag:
    """While active, the first SIGINT (Ctrl-C) or SIGTERM (what schedulers send before they kill) only
    sets `requested` to the signal's number; the loop stops at the next step boundary and saves. A
    second Ctrl-C raises StopNow at once, and the trainer then saves nothing: the step in progress is
    not whole. With at_once, every signal raises StopNow at once (there is nothing to save).
    Re-entrant: the inner `with` of a nested pair changes nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, at_once: bool = False):
        self.requested = 0
        self.at_once = at_once
        self._previous: dict = {}
        self._depth = 0

    def _handler(self, signum, frame):
        first = not self.requested
        self.requested = self.requested or signum
        if self.at_once or (not first and signum == signal.SIGINT):
            raise StopNow

    def __enter__(self):
        self._depth += 1
        if self._depth == 1:
            self.requested = 0
            if threading.current_thread() is threading.main_thread():
                self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for s, previous in self._previous.items():
                signal.signal(s, previous)
            self._previous = {}
        return False


def check_amp(amp: str, device: torch.device) -> None:
    """Mixed precision is CUDA's: on the CPU autocast would silently do nothing, so say so instead."""
    if amp != "none" and device.type != "cuda":
        raise ValueError(f"--amp {amp} needs a CUDA device, but this run is on {device}, where it would silently "
                         "do nothing; drop --amp (or --amp none), or train with --device cuda")


def autocast_context(device: torch.device, amp: str | None):
    """bf16/fp16 autocast on CUDA; a no-op elsewhere so one loop serves every device."""
    if amp in (None, "none", "off") or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# Bytes per parameter: float32 weights to predict; to train, also their gradients and Adam's two moments.
PREDICTING, TRAINING = 4, 16
SMALLER = "lower --hidden-size, --layers, --embed-dim or --vocab-size"


def available_memory(device: torch.device | str = "cpu") -> int:
    """What `device` can give: on the CPU the memory the system has without swapping (Linux's MemAvailable),
    else all of it; a GPU's total memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_fits(parameters: int, device: torch.device, per_parameter: int = TRAINING, advice: str = SMALLER) -> None:
    """The one bound on a model's size, before it is built: a training run's settings (ModelConfig.parameter_count,
    before the data; then the model counted on the meta device) and a checkpoint's (rnnsent.inference.loading).
    ValueError, one line, when `parameters` at `per_parameter` bytes (PREDICTING or TRAINING) need more memory
    than `device` has (available_memory), ending with `advice`."""
    need, have = per_parameter * parameters, available_memory(device)
    if need > have:
        purpose = "for training" if per_parameter >= TRAINING else "to predict"
        raise ValueError(f"the model has {parameters:,} parameters and needs {need / 2**30:.1f} GiB {purpose}, more "
                         f"than the {have / 2**30:.1f} GiB of memory available on {device}; {advice}")


def build_in_memory(make, device: torch.device) -> torch.nn.Module:
    """make() moved to `device`, or one line when its weights, gradients and Adam's two moments cannot
    fit in memory (--hidden-size 100000 is 30 billion GRU weights): counted on the meta device first."""
    with torch.device("meta"):
        n = sum(p.numel() for p in make().parameters())
    check_fits(n, device, TRAINING)
    try:
        return make().to(device)
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "memory" not in str(e).lower():
            raise
        raise ValueError(f"the model has {n:,} parameters and does not fit in free memory; {SMALLER}") from None


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo says it (for the tables of results and benchmarks)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: str) -> str:
    """The machine a run on `device` uses, in words: the GPU's name, or the CPU's and its core count."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()}, {os.cpu_count()} cores"
