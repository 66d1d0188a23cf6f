"""TrainConfig and the training loop: one readable loop for CPU and CUDA.

The loop resolves the device once, keeps the whole encoded data set on it, and keeps running sums on
the device so a step never waits for the host. Checkpoints (`last.pt`, `best.pt`) hold everything
needed to continue bit for bit: model, optimizer, RNG state, the position inside the epoch and the
running sums. The data order of an epoch is a function of (seed, epoch) alone (see Batcher), so a
resumed run skips the batches it has done and sees the rest in the same order. Under torchrun the
same loop trains data-parallel; rnnsent.distributed holds the choices that makes.

Fault injection, for tests only (read once per Trainer; unset in normal runs):
    RNNSENT_FAULT_KILL_AT_STEP=k  the process kills itself with SIGKILL once global step k is done
                                  (after any checkpoint that step writes): a crash at a known point.
    RNNSENT_FAULT_NAN_AT_STEP=k   the loss of global step k (counted from 0, as NonFiniteLoss names
                                  steps) is made NaN.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnsent.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint_state, save_checkpoint
from rnnsent.data import Batcher, prepare_imdb
from rnnsent.distributed import Distributed, shutdown
from rnnsent.evaluate import autocast_context, evaluate
from rnnsent.fused import IMPLS
from rnnsent.models import SentimentRNN, canonical_cell
from rnnsent.runfolder import RunLock, load_resume, resume_path

ENCODINGS = ("keras", "fast")
AMPS = ("none", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")

# Named, documented sets of training settings (scripts/train.py --recipe NAME). Explicit flags win.
RECIPES: dict[str, dict] = {
    "keras": {
        "doc": "the Keras exercise as it was: 500-token pre-padded input, Keras initialisation, Adam 1e-3, "
               "batch 64, constant learning rate, no clipping or dropout, 1 epoch",
        "encoding": "keras", "init": "keras", "epochs": 1, "batch_size": 64, "lr": 1e-3, "schedule": "constant",
        "warmup_steps": 0, "clip": None, "embed_dropout": 0.0, "output_dropout": 0.0, "weight_decay": 0.0,
        "word_dropout": 0.0,
    },
    # Found by controlled runs on the full data (GRU, seed 0, test accuracy of the best-validation epoch):
    # no regularisation, 3 epochs 0.874; + dropout 0.3/0.3, cosine, clip, 1000 tokens 0.880;
    # dropout 0.5/0.5 0.879 (stopped early by patience); + word dropout 0.2, 8 epochs 0.887.
    "best": {
        "doc": "the same model trained better: length-bucketed input of up to 1000 tokens, dropout 0.5 on embeddings "
               "and on the last state, word dropout 0.2, cosine learning-rate decay from 1e-3, gradient clipping at 1, "
               "10 epochs, the best validation epoch kept",
        "encoding": "fast", "init": "keras", "epochs": 10, "batch_size": 64, "lr": 1e-3, "schedule": "cosine",
        "warmup_steps": 0, "clip": 1.0, "embed_dropout": 0.5, "output_dropout": 0.5, "word_dropout": 0.2,
        "weight_decay": 0.0, "max_len": 1000,
    },
}


@dataclass(frozen=True)
class TrainConfig:
    # model: the Keras exercise's architecture
    cell: str = "gru"  # lstm | gru | rnn (Keras names LSTM, GRU, SimpleRNN accepted)
    vocab_size: int = 5000  # ids 0..vocab_size-1, counting pad, start and out-of-vocabulary
    embed_dim: int = 32
    hidden_size: int = 100
    init: str = "keras"  # keras: Keras' initializers; torch: PyTorch's defaults
    embed_dropout: float = 0.0  # dropout on embeddings (no parameters, counts unchanged)
    output_dropout: float = 0.0  # dropout on the last hidden state
    word_dropout: float = 0.0  # training only: a word becomes out-of-vocabulary with this probability
    # data
    max_len: int = 500  # reviews keep their last max_len ids, as Keras' pad_sequences does
    encoding: str = "fast"  # keras: pre-padded to max_len; fast: true lengths, length-bucketed batches
    limit: int | None = None  # use only this many reviews per split (smoke runs)
    val_fraction: float = 0.1  # carved from train; test is never used for model selection
    split_seed: int = 0  # fixed, so every training seed sees the same validation split
    data_root: str | None = None  # a path holding the data (see rnnsent.data.fetch)
    expected_per_block: int | None = 12500  # reviews per split and label; a smaller copy (fixtures) says its size
    cache_dir: str | None = None
    # optimisation
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled (AdamW) when > 0
    schedule: str = "constant"  # constant | cosine (per step, with warmup_steps of linear warm-up)
    warmup_steps: int = 0
    clip: float | None = None  # max gradient norm; RNN gradients can explode on long reviews
    patience: int | None = None  # stop after this many epochs without a better validation accuracy
    seed: int = 0
    # machinery
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (CUDA only; fp16 uses a grad scaler)
    deterministic: bool = False
    flush_denormal: bool = True  # CPU: vanishing gradients produce denormals that are 10-100x slower
    threads: int | None = None  # CPU threads; default: all cores
    rnn_impl: str = "auto"  # auto: rnnsent's fused CPU kernel where it builds, else PyTorch's layers; fused; torch
    retain_memory: bool = True  # CPU: glibc keeps freed blocks for reuse instead of unmapping them (page faults)
    eval_batch_size: int = 512
    ckpt_every: int | None = None  # also save last.pt every N steps inside an epoch
    log_every: int = 20  # steps between progress updates (and NaN checks on CUDA)
    out: str = "runs/gru"
    resume: str | None = None  # a checkpoint file or run folder to continue from
    quiet: bool = False

    def __post_init__(self):
        object.__setattr__(self, "cell", canonical_cell(self.cell))
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.vocab_size >= 4, f"vocab_size must be at least 4 (pad, start, unknown and one word), got {self.vocab_size}"),
            (self.max_len >= 1, f"max_len must be at least 1, got {self.max_len}"),
            (self.embed_dim >= 1 and self.hidden_size >= 1, "embed_dim and hidden_size must be at least 1"),
            (self.encoding in ENCODINGS, f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}"),
            (self.amp in AMPS, f"amp must be one of {', '.join(AMPS)}, got {self.amp!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.limit is None or self.limit >= 2, f"limit must be at least 2 (one review per label), got {self.limit}"),
            (0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.clip is None or self.clip > 0, f"clip must be positive, got {self.clip}"),
            (self.patience is None or self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.ckpt_every is None or self.ckpt_every >= 1, f"ckpt_every must be at least 1, got {self.ckpt_every}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be at least 1, got {self.eval_batch_size}"),
            (self.log_every >= 1, f"log_every must be at least 1, got {self.log_every}"),
            (self.rnn_impl in IMPLS, f"rnn_impl must be one of {', '.join(IMPLS)}, got {self.rnn_impl!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def model_args(self) -> dict:
        return dict(cell=self.cell, vocab_size=self.vocab_size, embed_dim=self.embed_dim,
                    hidden_size=self.hidden_size, embed_dropout=self.embed_dropout,
                    output_dropout=self.output_dropout, init=self.init, word_dropout=self.word_dropout)

    def data_args(self) -> dict:
        return dict(vocab_size=self.vocab_size, max_len=self.max_len, encoding=self.encoding,
                    val_fraction=self.val_fraction, seed=self.split_seed, limit=self.limit,
                    expected_per_block=self.expected_per_block)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings that must agree between a checkpoint and the run that resumes it: changing any of them
# would silently train a different model or on different data. epochs, patience, device, amp and
# the machinery may change.
RESUME_MUST_MATCH = (
    "cell", "vocab_size", "embed_dim", "hidden_size", "init", "embed_dropout", "output_dropout", "word_dropout",
    "max_len", "encoding", "limit", "expected_per_block", "val_fraction", "split_seed", "batch_size", "lr", "weight_decay",
    "schedule", "warmup_steps", "clip", "seed",
)


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


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C or SIGTERM; exit_code is what a shell reports for that signal (130, 143)."""

    def __init__(self, message: str, exit_code: int = 128 + signal.SIGINT):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteLoss(RuntimeError):
    """A NaN or Inf loss or gradient; the last good checkpoint is kept."""


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


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning rate for a global step: a pure function of the step, so resuming needs no scheduler state."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.lr


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Holds a run's state; `fit()` trains, validates, checkpoints, and returns the final metrics.

    Research code can subclass it or call the pieces (`train_epoch`, `validate`, `save`) directly.
    """

    def __init__(self, config: TrainConfig, data=None):
        self.config = config
        self.dist, self.device = Distributed.from_env(resolve_device(config.device))
        self.is_main = self.dist.is_main
        self.out = Path(config.out)
        self._setup_backend()
        self._kill_at, self._nan_at = _env_step("RNNSENT_FAULT_KILL_AT_STEP"), _env_step("RNNSENT_FAULT_NAN_AT_STEP")
        if config.amp != "none" and self.device.type != "cuda":  # autocast is a no-op there: do not pretend
            raise ValueError(f"--amp {config.amp} needs a CUDA device, but this run is on {self.device}, where it would "
                             "silently do nothing; drop --amp (or --amp none), or train with --device cuda")
        if config.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {self.dist.world_size} processes, "
                             "so that the global batch equals a one-process run's")

        resume, note = resume_path(config.resume, self.out)  # --resume auto / a run folder -> a file or None
        if note:
            self.log(note, always=True)
        if resume != config.resume:
            config = self.config = dataclasses.replace(config, resume=resume)
        resume_state, self.resumed_from = None, None
        if config.resume:
            resume_state, self.resumed_from, note = load_resume(config.resume)
            if note:
                self.log(note, always=True)
            self._check_resume(resume_state)
            if "optimizer" not in resume_state:
                raise CheckpointError(
                    f"{config.resume} holds weights only (a best or released checkpoint), not a resumable run; "
                    "resume from the run's last.pt"
                )

        torch.manual_seed(config.seed)
        self.data = data if data is not None else prepare_imdb(
            **config.data_args(), root=config.data_root, cache_dir=config.cache_dir)
        if resume_state is not None and resume_state.get("vocab") != self.data.vocab.to_dict():
            raise CheckpointError(
                f"{config.resume} was trained with another vocabulary than the data prepared now; "
                "resume with the same data source and --vocab-size"
            )
        self.model = _build_model(config, self.device)
        self.train_model = self.dist.wrap(self.model, self.device)  # DDP when distributed; self.model is saved
        if self.dist.rank:
            torch.manual_seed(config.seed + self.dist.rank)  # same initial weights, different dropout masks per rank
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and self.device.type == "cuda")
        shard = dict(rank=self.dist.rank, world_size=self.dist.world_size)
        self.train_batches = Batcher(self.data.train, batch_size=config.batch_size // self.dist.world_size, shuffle=True,
                                     seed=config.seed, bucket=config.encoding == "fast", device=self.device, **shard)
        self.val_batches, self.test_batches = (
            Batcher(split, batch_size=config.eval_batch_size, shuffle=False, seed=0, bucket=split.padding == "post",
                    device=self.device, even_shards=False, **shard)
            for split in (self.data.val, self.data.test))
        self.total_steps = config.epochs * len(self.train_batches)
        # Position and history: everything a resumed run needs besides weights and optimizer.
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss * samples, correct
        self.seen = 0  # samples this epoch (known on the host: batch shapes need no sync)
        self.best_val, self.epochs_since_best = -1.0, 0
        self.history: list[dict] = []
        self.epoch_seconds = 0.0
        self.saved_step: int | None = None  # global step of the newest last.pt, named when training stops
        self._interrupt = _StopFlag()
        if resume_state is not None:
            self._restore(resume_state)

    # -- set-up ---------------------------------------------------------------------------------
    def _setup_backend(self) -> None:
        c = self.config
        if self.device.type == "cpu":
            # set_flush_denormal reaches only this thread and OpenMP workers started after it: the command
            # line gets here before any parallel op; code that ran torch work before building a Trainer
            # should call torch.set_flush_denormal(True) first thing.
            torch.set_num_threads(c.threads or os.cpu_count() or 1)
            torch.set_flush_denormal(c.flush_denormal)
            if c.retain_memory:
                retain_freed_memory()
        if c.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        fused = {"fused": True} if self.device.type == "cuda" else {}
        if c.weight_decay > 0:
            return torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay, **fused)
        return torch.optim.Adam(self.model.parameters(), lr=c.lr, **fused)

    def _check_resume(self, state: dict) -> None:
        saved = state.get("config", {})
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(self.config, k)!r}"
                 for k in RESUME_MUST_MATCH if k in saved and saved[k] != getattr(self.config, k)]
        if diffs:
            raise CheckpointError(
                f"cannot resume from {self.config.resume}: it was trained with other settings ({'; '.join(diffs)}). "
                "Resume with the original command line, or start a new run with another --out"
            )

    def _restore(self, state: dict) -> None:
        p = state["progress"]
        if p.get("world_size", 1) != self.dist.world_size:
            raise CheckpointError(
                f"{self.config.resume} was written by a run of {p.get('world_size', 1)} process(es); resume it with "
                f"the same number (torchrun --nproc_per_node={p.get('world_size', 1)}), not {self.dist.world_size}")
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = p["epoch"], p["step_in_epoch"], p["global_step"]
        self.saved_step = self.global_step
        if self.is_main:  # the saved sums are over all ranks: one rank carries them on
            self.sums, self.seen = p["sums"].to(self.device, torch.float64), p["seen"]
        self.best_val, self.epochs_since_best = p["best_val"], p["epochs_since_best"]
        self.epoch_seconds = p.get("epoch_seconds", 0.0)
        self.history = list(state.get("history", []))
        set_rng_state(state.get("rng_ranks", [state["rng"]])[self.dist.rank], self.device)
        self.log(f"resumed from {self.resumed_from}: epoch {self.epoch + 1}, step {self.step_in_epoch} "
                 f"of {len(self.train_batches)} (global step {self.global_step})")

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self, full: bool = True) -> dict:
        """Everything a checkpoint holds. Distributed: every rank must call it (it gathers from all)."""
        state = {
            "model_config": self.model.config(),
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "vocab": self.data.vocab.to_dict(),
            "data": {"max_len": self.config.max_len, "encoding": self.config.encoding,
                     "vocab_size": self.config.vocab_size, "source": str(self.data.meta.get("source", ""))},
            "config": self.config.to_dict(),
            "metrics": self.history[-1] if self.history else {},
            "history": self.history,
            "rnnsent_version": _version(),
        }
        if full:
            *sums, seen = self._global_sums()
            rngs = self.dist.gather(rng_state(self.device))
            state.update(
                optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
                rng=rngs[0],
                progress={"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                          "global_step": self.global_step, "sums": torch.tensor(sums, dtype=torch.float64), "seen": seen,
                          "best_val": self.best_val, "epochs_since_best": self.epochs_since_best,
                          "epoch_seconds": self.epoch_seconds, "world_size": self.dist.world_size},
            )
            if self.dist.enabled:
                state["rng_ranks"] = rngs
        return state

    def _global_sums(self) -> tuple[float, float, int]:
        """This epoch's running training sums over all ranks: (loss * samples, correct, samples)."""
        loss_sum, correct, seen = self.dist.sum(torch.cat([self.sums, self.sums.new_tensor([self.seen])])).tolist()
        return loss_sum, correct, int(seen)

    def save(self, name: str, full: bool = True) -> Path | None:
        """Write a checkpoint (rank 0 only; every rank calls this). last.pt keeps its predecessor as last.prev.pt."""
        state = self.state(full)
        path = self.out / name
        if full:
            self.saved_step = self.global_step
        if not self.is_main:
            return None
        try:
            return save_checkpoint(path, state, keep_previous=full)
        except CheckpointWriteError as e:
            raise CheckpointWriteError(
                f"{e}; training stopped at global step {self.global_step}. Fix that, then continue with the same "
                f"command and --resume {path}") from None

    # -- the loop -------------------------------------------------------------------------------
    def log(self, message: str, always: bool = False) -> None:
        if self.is_main and (always or not self.config.quiet):
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def rnn_implementation(self) -> str:
        """What runs the recurrent layer in this run, for logs and reports."""
        if self.device.type != "cpu":
            return "PyTorch's layers (cuDNN on CUDA)"
        if self.config.rnn_impl == "torch":
            return "PyTorch's stock layers (rnn_impl=torch)"
        from rnnsent import fused

        if fused.needs_build():
            self.log("compiling rnnsent's fused CPU kernel (once per machine, about 15 s)")
        try:
            self.model.uses_fused(torch.zeros(1, 1, dtype=torch.long))  # impl=fused: raise now, not mid-epoch
        except RuntimeError as e:  # the kernel cannot run here: a usage error of one line, not a traceback
            raise ValueError(str(e).replace("impl='fused'", "--rnn-impl fused")) from None
        return fused.status()

    def fit(self) -> dict:
        """Train to the configured number of epochs (or early stop), then report test metrics."""
        c = self.config
        with RunLock(self.out) if self.is_main else contextlib.nullcontext():  # one run at a time in --out
            with self._interrupt:
                try:
                    self.log(self.model.summary(time_steps=c.max_len if c.encoding == "keras" else None))
                    self.log(f"recurrent layer: {self.rnn_implementation()}")  # may refuse: before anything is written
                    if self.is_main:
                        (self.out / "config.json").write_text(json.dumps(c.to_dict(), indent=2) + "\n")
                        (self.out / "command.txt").write_text(" ".join(sys.argv) + "\n")
                    self.log(f"device {self.device}; train {self.data.train.tokens.size(0)}, val {self.data.val.tokens.size(0)}, "
                             f"test {self.data.test.tokens.size(0)} reviews; {len(self.train_batches)} batches of {c.batch_size}")
                    stopped_early = False
                    while self.epoch < c.epochs and not stopped_early:
                        epoch_metrics = self.train_epoch()
                        stopped_early = self.end_epoch(epoch_metrics)
                        if self.dist.any(self._interrupt.requested):  # a signal during validation: last.pt is saved
                            raise self._interrupted(self.out / "last.pt")
                except KeyboardInterrupt:  # a second Ctrl-C: the step in progress is not whole, so nothing is saved
                    raise TrainingInterrupted(
                        f"stopped at once by a second Ctrl-C, in the middle of a step, without saving it; "
                        f"{self._kept()}. Continue with the same command and --resume auto") from None
            with _StopFlag(at_once=True) as flag:  # the final test: nothing to save, so any signal stops it now
                try:
                    return self.finish()
                except KeyboardInterrupt:
                    raise TrainingInterrupted(
                        f"interrupted during the final test evaluation; training had finished and {self.out / 'best.pt'} "
                        f"is saved: score it with scripts/evaluate.py --checkpoint {self.out / 'best.pt'}",
                        128 + (flag.requested or signal.SIGINT)) from None

    def _kept(self) -> str:
        return (f"{self.out / 'last.pt'} keeps global step {self.saved_step}" if self.saved_step is not None
                else "no checkpoint had been written yet")

    def _interrupted(self, path) -> TrainingInterrupted:
        signum = int(self._interrupt.requested) if self._interrupt.requested is not True else signal.SIGINT
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        return TrainingInterrupted(
            f"stopped by {name}: interrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}; saved {path}. "
            f"Continue with the same command and --resume {path} (or --resume auto)", 128 + signum)

    def train_epoch(self) -> dict:
        """Run (the rest of) the current epoch; return its training loss, accuracy and throughput."""
        c, model = self.config, self.model
        model.train()
        n_batches = len(self.train_batches)
        start_step = self.step_in_epoch
        lengths_needed = self.data.train.padding == "post"
        # First non-finite step seen, kept on the device so the check costs no sync per step.
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        bar = _progress(n_batches, start_step, f"epoch {self.epoch + 1}/{c.epochs}", disable=not self.is_main or c.quiet)
        t0, samples_done = time.perf_counter(), 0
        with self._interrupt:
            return self._train_steps(bar, bad_step, t0, samples_done, n_batches, start_step, lengths_needed)

    def _train_steps(self, bar, bad_step, t0, samples_done, n_batches, start_step, lengths_needed) -> dict:
        c, model = self.config, self.train_model
        try:
            for x, lengths, y in self.train_batches.iterate(self.epoch, start=start_step):
                lr = lr_at(self.global_step, self.total_steps, c)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with autocast_context(self.device, c.amp):
                    logits = model(x, lengths if lengths_needed else None)  # (B,)
                    loss = F.binary_cross_entropy_with_logits(logits.float(), y)
                if self._nan_at == self.global_step:
                    loss = loss * float("nan")  # fault injection (see the module docstring)
                self.scaler.scale(loss).backward()
                finite = self.dist.all_true(torch.isfinite(loss))  # every rank agrees, so every rank stops
                if c.clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip)
                    if not self.scaler.is_enabled():  # with fp16 the scaler skips inf steps by design
                        finite = finite & torch.isfinite(norm)
                bad_step = torch.where((bad_step < 0) & ~finite, self.global_step, bad_step)
                if c.amp == "fp16" or self.device.type == "cuda":
                    self.scaler.step(self.optimizer)
                else:
                    # On CPU, a non-finite step must not touch the weights: checking costs nothing here.
                    if not bool(finite):
                        self._raise_non_finite(self.global_step)
                    self.optimizer.step()
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    self.sums += torch.stack([loss.detach().double() * y.numel(),
                                              ((logits.detach() > 0) == (y > 0.5)).sum().double()])
                self.step_in_epoch += 1
                self.global_step += 1
                self.seen += y.numel()
                samples_done += y.numel()
                if self.step_in_epoch % c.log_every == 0 or self.step_in_epoch == n_batches:
                    if int(bad_step) >= 0:
                        self._raise_non_finite(int(bad_step))
                    loss_sum, correct = self.sums.tolist()
                    bar.set_postfix(loss=f"{loss_sum / self.seen:.4f}", acc=f"{correct / self.seen:.4f}",
                                    sps=f"{samples_done / (time.perf_counter() - t0):.0f}", refresh=False)
                bar.update(1)
                if self.dist.any(self._interrupt.requested):
                    raise _StopRequested
                if c.ckpt_every and self.global_step % c.ckpt_every == 0 and self.step_in_epoch < n_batches:
                    if int(bad_step) >= 0:
                        self._raise_non_finite(int(bad_step))
                    self.epoch_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save("last.pt")
                if self._kill_at == self.global_step:  # fault injection (see the module docstring)
                    self.dist.barrier()
                    os.kill(os.getpid(), signal.SIGKILL)
        except _StopRequested:
            bar.close()
            self.epoch_seconds += time.perf_counter() - t0
            # The first Ctrl-C or SIGTERM only sets a flag that is read between steps (see _StopFlag), so the
            # weights, optimizer, RNG and counters saved here all describe the same finished step.
            path = self.save("last.pt")
            raise self._interrupted(path or self.out / "last.pt") from None
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.epoch_seconds += time.perf_counter() - t0
        loss_sum, correct, seen = self._global_sums()
        return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                "epoch_seconds": self.epoch_seconds,
                "samples_per_second": seen / self.epoch_seconds if self.epoch_seconds > 0 else float("nan")}

    def _raise_non_finite(self, step: int) -> None:
        kept = (f"{self.out / 'last.pt'} keeps the last good state (global step {self.saved_step})"
                if self.saved_step is not None else "no checkpoint had been written yet")
        raise NonFiniteLoss(
            f"non-finite loss or gradient at global step {step} (epoch {self.epoch + 1}); training stopped and "
            f"{kept}. Lower --lr, set --clip 1.0, or with --amp fp16 keep the grad scaler (bf16 needs none), "
            "then resume"
        )

    def _evaluate(self, split, batcher: Batcher) -> dict:
        """evaluate() on this rank's share of `split` (its batcher), summed over ranks."""
        if len(batcher) == 0:  # more ranks than batches (evaluate() would take an empty batcher for none)
            r = {"loss": 0.0, "tp": 0, "fp": 0, "tn": 0, "fn": 0, "n": 0}
        else:
            r = evaluate(self.model, split, device=self.device, amp=self.config.amp, batcher=batcher)
        if not self.dist.enabled:
            return r
        loss_sum, tp, fp, tn, fn = self.dist.sum(torch.tensor(
            [r["loss"] * r["n"], r["tp"], r["fp"], r["tn"], r["fn"]], dtype=torch.float64, device=self.device)).tolist()
        n = tp + fp + tn + fn
        return {"loss": loss_sum / max(n, 1), "accuracy": (tp + tn) / max(n, 1),
                "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn), "n": int(n)}

    def end_epoch(self, train_metrics: dict) -> bool:
        """Validate, record metrics, write checkpoints; return True when early stopping says stop."""
        c = self.config
        val = self._evaluate(self.data.val, self.val_batches)
        row = {"epoch": self.epoch + 1, "global_step": self.global_step, **train_metrics,
               "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": lr_at(self.global_step - 1, self.total_steps, c)}
        self.history.append(row)
        improved = val["accuracy"] > self.best_val
        if improved:
            self.best_val, self.epochs_since_best = val["accuracy"], 0
        else:
            self.epochs_since_best += 1
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums.zero_()
        self.seen = 0
        self.epoch_seconds = 0.0
        if self.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if improved:
            self.save("best.pt", full=False)
        self.save("last.pt")
        self.log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                 f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} | {row['epoch_seconds']:.1f} s, "
                 f"{row['samples_per_second']:.0f} samples/s" + (" (best)" if improved else ""))
        if c.patience is not None and self.epochs_since_best >= c.patience:
            self.log(f"early stop: validation accuracy has not improved for {c.patience} epoch(s)")
            return True
        return False

    def finish(self) -> dict:
        """Test the best checkpoint, write the plot and summary; return the final report."""
        c = self.config
        best_path = self.out / "best.pt"
        self.dist.barrier()  # rank 0 has finished writing best.pt
        if best_path.exists():
            self.model.load_state_dict(load_checkpoint_state(best_path)["model_state"])
        test = self._evaluate(self.data.test, self.test_batches)
        epoch_times = [r["epoch_seconds"] for r in self.history]
        report = {
            "cell": c.cell, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "confusion": {k: test[k] for k in ("tp", "fp", "tn", "fn")},
            "best_val_accuracy": self.best_val, "epochs_run": len(self.history),
            "mean_epoch_seconds": sum(epoch_times) / len(epoch_times) if epoch_times else 0.0,
            "device": str(self.device), "rnn_implementation": self.rnn_implementation(), "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        }
        if self.is_main:
            (self.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            plot = plot_curves(self.history, self.out / "curves.png")
            summary = "\n".join([
                self.model.summary(time_steps=c.max_len if c.encoding == "keras" else None), "",
                f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}  "
                f"(tp {test['tp']}, fp {test['fp']}, tn {test['tn']}, fn {test['fn']})",
                f"best validation accuracy {self.best_val:.4f}; {len(self.history)} epoch(s), "
                f"{report['mean_epoch_seconds']:.1f} s per epoch on {self.device}",
                f"checkpoints: {best_path} (best), {self.out / 'last.pt'} (resumable); metrics: {self.out / 'metrics.jsonl'}"
                + (f"; curves: {plot}" if plot else ""),
            ])
            (self.out / "summary.txt").write_text(summary + "\n")
            self.log(summary)
        return report


class _StopRequested(Exception):
    """Raised between steps once _StopFlag has seen a signal: the loop saves and stops."""


class _StopFlag:
    """While active, the first SIGINT (Ctrl-C) or SIGTERM (what schedulers send before they kill) only
    sets `requested` to the signal's number; the loop stops at the next step boundary and saves. A
    second Ctrl-C raises KeyboardInterrupt at once, and the trainer then saves nothing: the step in
    progress is not whole. With at_once, every signal raises KeyboardInterrupt at once (nothing to
    save). Re-entrant: the inner `with` of a nested pair changes nothing."""

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
            raise KeyboardInterrupt

    def __enter__(self):
        import threading

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


def _build_model(config: TrainConfig, device: torch.device) -> SentimentRNN:
    """The model, or one line when its weights, gradients and Adam's two moments cannot fit in memory
    (--hidden-size 100000 is 30 billion GRU weights): checked on the meta device before allocating."""
    with torch.device("meta"):
        n = sum(p.numel() for p in SentimentRNN(**config.model_args(), impl="torch").parameters())
    need = 16 * n  # float32 weights, gradients and two Adam moments
    if device.type == "cpu":
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        have = torch.cuda.get_device_properties(device).total_memory
    too_big = f"the model has {n:,} parameters and needs {need / 2**30:.1f} GiB for training"
    if need > have:
        raise ValueError(f"{too_big}, more than the {have / 2**30:.1f} GiB of {device}; lower --hidden-size, "
                         "--embed-dim or --vocab-size")
    try:
        return SentimentRNN(**config.model_args(), impl=config.rnn_impl).to(device)
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "memory" not in str(e).lower():
            raise
        raise ValueError(f"{too_big} and does not fit in free memory; lower --hidden-size, --embed-dim or "
                         "--vocab-size") from None


def train(config: TrainConfig, data=None) -> dict:
    """Train a model as `config` says; returns the final report (test accuracy, confusion, timings)."""
    agreed = False  # did every rank stop here together?
    try:
        report = Trainer(config, data).fit()
        agreed = True
        return report
    except TrainingInterrupted:
        agreed = True  # Ctrl-C is shared across ranks: all of them stop at the same step
        raise
    finally:
        shutdown(wait_for_peers=agreed)  # leave the process group torchrun set up, if any


def plot_curves(history: list[dict], path: Path) -> Path | None:
    """Training and validation loss/accuracy per epoch as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _progress(total: int, initial: int, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=disable, leave=False,
                file=sys.stderr, dynamic_ncols=True)


def _env_step(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be a global step number") from None


def _version() -> str:
    from rnnsent import __version__

    return __version__
