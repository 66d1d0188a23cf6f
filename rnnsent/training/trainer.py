"""The Trainer: one readable training loop for CPU and CUDA (see Trainer.train_epoch).

The loop resolves the device once, keeps the whole encoded data set on it, and keeps running sums on
the device so a step never waits for the host. Checkpoints (`last.pt`, `best.pt`) hold everything
needed to continue bit for bit (Trainer.state_dict): model, optimizer, RNG state, the position inside the
epoch and the running sums. The data order of an epoch is a function of (seed, epoch) alone (see Batcher), so a
resumed run skips the batches it has done and sees the rest in the same order. Under torchrun the
same loop trains data-parallel; rnnsent.training.distributed holds the choices that makes. The settings are
rnnsent.config's, settled once before the Trainer is built (rnnsent.training.settle); what is trained is the
task's (rnnsent.training.task); the files a run writes are rnnsent.training.report's.

Callbacks (minGPT style): `trainer.add_callback("on_step_end", fn)` calls fn(trainer) after every
optimizer step (counters updated, any periodic checkpoint written), "on_backward_end" after each step's
backward pass (the gradients are in the parameters, unscaled, not yet clipped), "on_epoch_end" after
validation and the epoch's checkpoints. In the first two, trainer.last_step (a StepInfo) holds the step's
loss, gradient norm before clipping, learning rate and samples. A callback may raise KeyboardInterrupt to
stop as Ctrl-C does. rnnsent.training.tensorboard's writer (TrainConfig.tensorboard) is one such callback.

Fault injection for tests: rnnsent.training.faults (environment variables, through the same callbacks).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections import defaultdict
from pathlib import Path

import torch

from rnnsent import __version__
from rnnsent.config import TrainConfig
from rnnsent.data import Batcher, PreparedData
from rnnsent.runtime import StopFlag, StopNow, build_in_memory, rng_state, set_rng_state
from rnnsent.storage.checkpoint import CheckpointError, CheckpointWriteError, save_checkpoint
from rnnsent.training import faults, freeze, report, stopping
from rnnsent.training.classification import Classification
from rnnsent.training.distributed import shutdown
from rnnsent.training.handover import load_into, start_from
from rnnsent.training.regularise import WeightAverage
from rnnsent.training.resume import find_resume
from rnnsent.training.runfolder import RunLock, check_new_run
from rnnsent.training.settle import Settled, settle
from rnnsent.training.stopping import TrainingInterrupted
from rnnsent.training.task import Task

EVENTS = ("on_step_end", "on_epoch_end", "on_backward_end")


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """One training step, for callbacks (trainer.last_step). Tensors stay on the device: reading one (.item())
    waits for the step, so a callback that logs every N steps should sum them there and read them then."""

    loss: torch.Tensor  # () the batch's mean training loss
    correct: torch.Tensor  # () right predictions in the batch
    grad_norm: torch.Tensor  # () L2 norm of all gradients before clipping (unscaled under fp16)
    lr: float  # the learning rate of this step
    samples: int  # reviews in this step on this process


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning rate for a global step (see OptimConfig.lr_at): resuming needs no scheduler state."""
    return config.lr_at(step, total_steps)


class Trainer:
    """Holds a run's state; `fit()` trains, validates, checkpoints, and returns the final metrics.

    Research code can subclass it, add callbacks, or call the pieces (`train_epoch`, `end_epoch`, `save`, and
    the task's `trainer.task.finish(trainer)`) directly.
    """

    def __init__(self, config: TrainConfig | Settled, data: PreparedData | None = None, task: Task | None = None):
        """A TrainConfig is settled here (rnnsent.training.settle) with `data` (prepared as it says when None) and
        `task` (the classifier when None); run_task settles first and passes the Settled run alone."""
        run = config if isinstance(config, Settled) else settle(config, data, task)
        self.config, self.data, self.task = run.config, run.data, run.task  # final: nothing rebinds them
        self.dist, self.device = run.dist, run.device
        self.is_main = self.dist.is_main
        self.out = Path(self.config.out)
        self.resumed_from = run.start.loaded_from  # the file resumed: last.pt, or its last.prev.pt after a fallback
        self.callbacks: dict[str, list] = defaultdict(list)
        self.last_step: StepInfo | None = None
        if run.tensorboard is not None:
            run.tensorboard.attach(self)
        self.init_from = run.init_from  # the trained model it starts from (--init-from), or None
        self._build_model(fresh=run.start.state is None)
        self._make_batchers()
        # Position and history: everything a resumed run needs besides weights and optimizer.
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss * samples, correct
        self.seen = 0  # samples this epoch (known on the host: batch shapes need no sync)
        self.best_val, self.epochs_since_best = -1.0, 0
        self.history: list[dict] = []
        self.epoch_seconds = 0.0
        self.saved_step: int | None = None  # global step of the newest last.pt, named when training stops
        self._interrupt = StopFlag()
        if run.start.state is not None:
            self.load_state_dict(run.start.state)
        faults.install(self)

    def add_callback(self, event: str, callback) -> None:
        """Call callback(trainer) on `event`: "on_step_end", "on_backward_end" or "on_epoch_end"."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: choose one of {', '.join(EVENTS)}")
        self.callbacks[event].append(callback)

    def _trigger(self, event: str) -> None:
        for callback in self.callbacks[event]:
            callback(self)

    # -- set-up ---------------------------------------------------------------------------------
    def _build_model(self, fresh: bool) -> None:
        """The model from the seed (a new run may start from --pretrained), its weight average (--ema), the
        module to train (DDP around it when distributed), the optimizer and the grad scaler."""
        c = self.config
        torch.manual_seed(c.seed)
        self.model = build_in_memory(functools.partial(self.task.build_model, c), self.device)
        if c.pretrained and fresh:  # a resumed run has its own weights already
            self.log(load_into(self.model, c.pretrained, self.data.vocab))
        if self.init_from is not None and fresh:
            self.log(start_from(self.model, self.init_from))
        note = freeze.set_trainable(self.model, c, 0)  # --freeze: before DDP, which registers what trains
        if note and fresh:
            self.log(note)
        self.ema = WeightAverage(self.model, c.ema) if c.ema else None
        self.train_model = self.dist.wrap(self.model, self.device)  # DDP when distributed; self.model is saved
        if self.dist.rank:
            torch.manual_seed(c.seed + self.dist.rank)  # same initial weights, different dropout masks per rank
        fused = {"fused": True} if self.device.type == "cuda" else {}
        if c.weight_decay > 0:
            self.optimizer = torch.optim.AdamW(freeze.param_groups(self.model, c), lr=c.lr,
                                               weight_decay=c.weight_decay, **fused)
        else:
            self.optimizer = torch.optim.Adam(freeze.param_groups(self.model, c), lr=c.lr, **fused)
        self.scaler = torch.amp.GradScaler("cuda", enabled=c.amp == "fp16" and self.device.type == "cuda")

    def _make_batchers(self) -> None:
        """This rank's batches: the training split's (shuffled per epoch, the global batch shared out across
        ranks), and the validation and test splits' (in order, split across ranks)."""
        c, shard = self.config, dict(rank=self.dist.rank, world_size=self.dist.world_size)
        self.train_batches = Batcher(self.data.train, batch_size=c.batch_size // self.dist.world_size,
                                     shuffle=True, seed=c.seed, bucket=c.encoding == "bucketed",
                                     device=self.device, balanced=c.sampler == "balanced", **shard)
        self.val_batches, self.test_batches = (
            Batcher(split, batch_size=c.eval_batch_size, shuffle=False, seed=0, bucket=split.padding == "post",
                    device=self.device, even_shards=False, **shard)
            for split in (self.data.val, self.data.test))
        self.total_steps = c.epochs * len(self.train_batches)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self, full: bool = True) -> dict:
        """Everything a checkpoint holds: weights, vocabulary, config and history; with `full` (last.pt) also
        optimizer, scaler, RNG states and the position in the epoch. Every rank must call it when distributed
        (it gathers from all)."""
        c, meta = self.config, self.data.meta
        state = {
            "model_config": self.model.config(),
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "vocab": self.data.vocab.to_dict(),
            "data": {"max_len": c.max_len, "encoding": c.encoding, "vocab_size": c.vocab_size,
                     "source": str(meta.get("source", "")),
                     **({"classes": list(meta["classes"])} if meta.get("classes") else {}),
                     **({"split": meta["split"]} if meta.get("split") else {})},  # how your own data was split
            "config": c.to_dict(),
            "metrics": self.history[-1] if self.history else {},
            "history": self.history,
            "rnnsent_version": __version__,
        }
        if full:
            *sums, seen = self.global_sums()
            rngs = self.dist.gather(rng_state(self.device))
            state.update(
                optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
                rng=rngs[0],
                progress={"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                          "global_step": self.global_step, "sums": torch.tensor(sums, dtype=torch.float64),
                          "seen": seen, "best_val": self.best_val, "epochs_since_best": self.epochs_since_best,
                          "epoch_seconds": self.epoch_seconds, "world_size": self.dist.world_size},
            )
            if self.dist.enabled:
                state["rng_ranks"] = rngs
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
        if self.task.kind is not None:
            state["kind"] = self.task.kind
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue where the checkpoint `state` (a state_dict(full=True)) left off: weights, optimizer, RNG,
        position, history."""
        p = state["progress"]
        if p.get("world_size", 1) != self.dist.world_size:
            raise CheckpointError(
                f"{self.config.resume} was written by a run of {p.get('world_size', 1)} process(es); resume it with "
                f"the same number (torchrun --nproc_per_node={p.get('world_size', 1)}), not {self.dist.world_size}")
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and "ema" in state:  # else the average starts from the resumed weights
            self.ema.load_state_dict(state["ema"])
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
        self.log(f"resumed from {self.resumed_from or self.config.resume}: epoch {self.epoch + 1}, step "
                 f"{self.step_in_epoch} of {len(self.train_batches)} (global step {self.global_step})")

    def global_sums(self) -> tuple[float, float, int]:
        """This epoch's running training sums over all ranks: (loss * samples, correct, samples)."""
        loss_sum, correct, seen = self.dist.sum(torch.cat([self.sums, self.sums.new_tensor([self.seen])])).tolist()
        return loss_sum, correct, int(seen)

    def save(self, name: str, full: bool = True) -> Path | None:
        """Write a checkpoint (rank 0 only; every rank calls this). last.pt keeps its predecessor as last.prev.pt."""
        state = self.state_dict(full)
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
            report.log(message)

    def fit(self) -> dict:
        """Train to the configured number of epochs (or early stop), then report test metrics."""
        c = self.config
        with RunLock(self.out) if self.is_main else contextlib.nullcontext(), self._interrupt:  # one run per --out
            self.log(self.model.summary(time_steps=c.max_len if c.encoding == "keras" else None))
            self.log(f"recurrent layer: {self.task.rnn_implementation(self)}")  # may refuse: before anything is written
            if self.is_main:
                for old in check_new_run(self.out, self.resumed_from, c.overwrite):  # checked again under the lock
                    old.unlink(missing_ok=True)  # --overwrite: nothing of the earlier run mixes into this one
                report.start_run_folder(self.out, c.to_dict())
                if self.resumed_from is not None:
                    # The checkpoint's history is the truth: an epoch whose row was appended before a kill
                    # stopped the run ahead of its checkpoint is trained again, and must be listed once.
                    report.write_metrics(self.out, self.history)
            for note in self.data.meta.get("notes", []):
                self.log(note)
            if self.data.meta.get("classes"):
                self.log(
                    f"classes: {', '.join(map(str, self.data.meta['classes']))}; best.pt by validation {c.monitored()}"
                )
            self.log(
                f"device {self.device}; train {self.data.train.tokens.size(0)}, val {self.data.val.tokens.size(0)}, "
                f"test {self.data.test.tokens.size(0)} reviews; {len(self.train_batches)} batches of {c.batch_size}"
            )
            stopped_early = False
            try:
                while self.epoch < c.epochs and not stopped_early:
                    stopped_early = self.end_epoch(self.train_epoch())
                    if self.dist.any(self._interrupt.requested):  # a signal during validation: last.pt is saved
                        raise stopping.interrupted(self, self.out / "last.pt")
            except StopNow:  # a second Ctrl-C: the step in progress is not whole, so nothing is saved
                raise stopping.mid_step(self) from None
            with StopFlag(at_once=True) as flag:  # the final test: nothing to save, so any signal stops it now
                try:
                    return self.task.finish(self)
                except StopNow:
                    raise stopping.during_test(self, flag.requested) from None

    def train_epoch(self) -> dict:
        """Run (the rest of) the current epoch; return its training loss, accuracy and throughput."""
        note = freeze.set_trainable(self.model, self.config, self.epoch)  # --unfreeze-after: a function of the epoch
        if note:
            self.log(note)
            self.train_model = self.dist.wrap(self.model, self.device)  # DDP again, over what trains now
        c, model = self.config, self.train_model
        self.model.train()
        n_batches = len(self.train_batches)
        lengths_needed = self.data.train.padding == "post"
        # First non-finite step seen, kept on the device so the check costs no sync per step.
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        bar = report.progress(n_batches, self.step_in_epoch, f"epoch {self.epoch + 1}/{c.epochs}",
                              disable=not self.is_main or c.quiet)
        t0, samples_done = time.perf_counter(), 0
        with self._interrupt:
            try:
                for x, lengths, y in self.train_batches.iterate(self.epoch, start=self.step_in_epoch):
                    lr = lr_at(self.global_step, self.total_steps, c)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)  # --body-lr-scale's group has its own
                    loss, correct = self.task.forward_backward(self, model, x, lengths if lengths_needed else None, y)
                    if correct is None:  # a task without right answers to count (a language model)
                        correct = torch.zeros((), device=loss.device)
                    finite = self.dist.all_true(torch.isfinite(loss))  # every rank agrees, so every rank stops
                    if c.clip is not None:
                        self.scaler.unscale_(self.optimizer)
                    norm = self.grad_norm(model)  # before clipping
                    self.last_step = StepInfo(loss.detach(), correct, norm, lr, y.numel())
                    self._trigger("on_backward_end")
                    if c.clip is not None:
                        _clip_with_norm(model.parameters(), c.clip, norm)
                        if not self.scaler.is_enabled():  # with fp16 the scaler skips inf steps by design
                            finite = finite & torch.isfinite(norm)
                    bad_step = torch.where((bad_step < 0) & ~finite, self.global_step, bad_step)
                    if c.amp == "fp16" or self.device.type == "cuda":
                        self.scaler.step(self.optimizer)
                    elif bool(finite):  # on CPU a non-finite step must not touch the weights: checking is free
                        self.optimizer.step()
                    else:
                        raise stopping.non_finite(self, self.global_step)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.ema is not None:
                        self.ema.update(self.model)
                    with torch.no_grad():
                        self.sums += torch.stack([loss.detach().double() * y.numel(), correct.double()])
                    self.step_in_epoch, self.global_step = self.step_in_epoch + 1, self.global_step + 1
                    self.seen, samples_done = self.seen + y.numel(), samples_done + y.numel()
                    if self.step_in_epoch % c.log_every == 0 or self.step_in_epoch == n_batches:
                        self._check_finite(bad_step)  # a host sync, so only every log_every steps
                        loss_sum, correct = self.sums.tolist()
                        accuracy = {"acc": f"{correct / self.seen:.4f}"} if self.task.reports_accuracy else {}
                        bar.set_postfix(loss=f"{loss_sum / self.seen:.4f}", **accuracy,
                                        sps=f"{samples_done / (time.perf_counter() - t0):.0f}", refresh=False)
                    bar.update(1)
                    if self.dist.any(self._interrupt.requested):
                        raise KeyboardInterrupt
                    if c.ckpt_every and self.global_step % c.ckpt_every == 0 and self.step_in_epoch < n_batches:
                        self._check_finite(bad_step)
                        self.epoch_seconds, t0 = self.epoch_seconds + time.perf_counter() - t0, time.perf_counter()
                        self.save("last.pt")
                    self._trigger("on_step_end")
            except StopNow:
                raise  # a second Ctrl-C in the middle of a step: nothing of it may be saved (see fit)
            except KeyboardInterrupt:  # the first Ctrl-C or SIGTERM, or a callback, between two steps
                self._save_and_stop(bar, t0)
            bar.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.epoch_seconds += time.perf_counter() - t0
        loss_sum, correct, seen = self.global_sums()
        return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                "epoch_seconds": self.epoch_seconds,
                "samples_per_second": seen / self.epoch_seconds if self.epoch_seconds > 0 else float("nan")}

    def grad_norm(self, model) -> torch.Tensor:
        """The L2 norm of all gradients, as clip_grad_norm_ computes it; divided by the grad scaler's scale
        where the gradients are still scaled (fp16 without --clip). No host sync."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            norm = torch.zeros((), device=self.device)
        elif hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: clip_grad_norm_'s own two halves
            norm = torch.nn.utils.get_total_norm(grads)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if self.scaler.is_enabled() and self.config.clip is None:
            norm = norm / self.scaler._get_scale_async()
        return norm

    def _save_and_stop(self, bar, t0: float) -> None:
        bar.close()
        self.epoch_seconds += time.perf_counter() - t0
        # The first Ctrl-C or SIGTERM only sets a flag that is read between steps (see runtime.StopFlag), so the
        # weights, optimizer, RNG and counters saved here all describe the same finished step.
        path = self.save("last.pt")
        raise stopping.interrupted(self, path or self.out / "last.pt") from None

    def _check_finite(self, bad_step: torch.Tensor) -> None:
        if int(bad_step) >= 0:
            raise stopping.non_finite(self, int(bad_step))

    def end_epoch(self, train_metrics: dict) -> bool:
        """Validate, record metrics, write checkpoints; return True when early stopping says stop."""
        c = self.config
        row, score = self.task.validate(self, train_metrics)
        self.history.append(row)
        improved = not self.history[:-1] or score > self.best_val  # the first epoch is the best so far
        if improved:
            self.best_val, self.epochs_since_best = score, 0
        else:
            self.epochs_since_best += 1
        self.epoch, self.step_in_epoch, self.seen, self.epoch_seconds = self.epoch + 1, 0, 0, 0.0
        self.sums.zero_()
        if self.is_main:
            report.append_metrics(self.out, row)
        if improved:
            with self.averaged():  # best.pt holds the weights that were validated
                self.save("best.pt", full=False)
        self.save("last.pt")
        self.log(self.task.epoch_line(row, improved))
        self._trigger("on_epoch_end")
        if c.patience is not None and self.epochs_since_best >= c.patience:
            self.log(
                f"early stop: validation {c.monitored().replace('_', '-')} has not improved for {c.patience} epoch(s)"
            )
            return True
        return False

    def averaged(self):
        """A block in which the model holds the averaged weights (--ema), or its own without --ema."""
        return self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()


def _clip_with_norm(parameters, max_norm: float, norm: torch.Tensor) -> None:
    """clip_grad_norm_ with the norm already computed (the same scaling, so the same bits)."""
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    else:  # torch < 2.6 computes the norm again
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def run_task(config: TrainConfig, data: PreparedData | None, task: Task) -> dict:
    """Train `task` as `config` says; returns its final report. What --resume names is resolved and loaded first,
    and a run folder that fit() would refuse under its lock is refused before the data is prepared. Under
    torchrun, the process group is left last, after waiting for the peers when every rank stopped together."""
    start = find_resume(config.resume, config.out, task.kind)
    check_new_run(config.out, start.loaded_from, config.overwrite)
    agreed = False  # did every rank stop here together?
    try:
        result = Trainer(settle(config, data, task, start)).fit()
        agreed = True
        return result
    except TrainingInterrupted:
        agreed = True  # Ctrl-C is shared across ranks: all of them stop at the same step
        raise
    finally:
        shutdown(wait_for_peers=agreed)  # leave the process group torchrun set up, if any


def train(config: TrainConfig, data=None) -> dict:
    """Train a model as `config` says; returns the final report (test accuracy, confusion, timings)."""
    return run_task(config, data, Classification())
