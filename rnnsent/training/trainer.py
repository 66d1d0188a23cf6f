"""The Trainer: one readable training loop for CPU and CUDA (see Trainer.train_epoch).

The loop resolves the device once, keeps the whole encoded data set on it, and keeps running sums on
the device so a step never waits for the host. Checkpoints (`last.pt`, `best.pt`) hold everything
needed to continue bit for bit: model, optimizer, RNG state, the position inside the epoch and the
running sums. The data order of an epoch is a function of (seed, epoch) alone (see Batcher), so a
resumed run skips the batches it has done and sees the rest in the same order. Under torchrun the
same loop trains data-parallel; rnnsent.training.distributed holds the choices that makes. The settings are
rnnsent.config's, the machine set-up rnnsent.runtime's, the files a run writes rnnsent.training.report's.

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
import time
from collections import defaultdict
from pathlib import Path

import torch

from rnnsent import runtime
from rnnsent.model import objective, recurrent
from rnnsent.training import faults, report, stopping
from rnnsent.storage.checkpoint import CheckpointWriteError, load_checkpoint_state, save_checkpoint
from rnnsent.config import ModelConfig, TrainConfig, canonical_encoding
from rnnsent.data import Batcher, prepare_data
from rnnsent.training.distributed import Distributed, shutdown
from rnnsent.inference.evaluate import evaluate
from rnnsent.training.handover import load_into
from rnnsent.model.sentiment import SentimentRNN, count_parameters
from rnnsent.training.regularise import EmbeddingPerturbation, WeightAverage
from rnnsent.training.resume import check_resume, find_resume, restore_training_state, training_state
from rnnsent.training.runfolder import RunLock, check_new_run, check_run_folder
from rnnsent.runtime import StopFlag, StopNow, autocast_context, resolve_device
from rnnsent.training.stopping import TrainingInterrupted

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


class Classification:
    """What the Trainer trains: the task object, here the classifier's (rnnsent.training.pretrain.LanguageModelling is
    the language model's). The loop, checkpoints and resume are the Trainer's; a task says what differs:

        kind, reports_accuracy   the "kind" its checkpoints carry (None here); whether batches have right answers
        settings(config)         the config it trains with, checked before anything is read
        build_model(config)      the model
        rnn_implementation(t)    what runs the recurrent layer, for logs and reports
        forward_backward(t, model, x, lengths, y)   a batch's loss, backward done, and its right predictions
                                                    (a () tensor, or None without any)
        evaluate(t, split, batcher)                 the scores of a split, summed over ranks
        validate(t, train_metrics)                  the epoch's metrics row and the score best.pt keeps the highest of
        epoch_line(row, improved)                   the line logged after each epoch
        finish(t)                                   the end of the run (here: test best.pt, write the report)

    Its methods take the Trainer `t` for the run's device, scaler, data and model.
    """

    kind = None
    reports_accuracy = True

    def settings(self, config: TrainConfig) -> TrainConfig:
        return config

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        return SentimentRNN(**config.model_args(), impl=config.rnn_impl)

    def rnn_implementation(self, t) -> str:
        return recurrent.describe(t.config.rnn_impl, t.device)

    def forward_backward(self, t, model, x, lengths, y) -> tuple[torch.Tensor, torch.Tensor]:
        """With adversarial training, a second pass on perturbed embeddings adds its gradients
        (rnnsent.training.regularise.EmbeddingPerturbation)."""
        c = t.config
        with EmbeddingPerturbation(t.model.embedding) if c.adversarial else contextlib.nullcontext() as perturb:
            # DDP must not average the first of two backward passes on its own: the second one sums both
            with model.no_sync() if c.adversarial and hasattr(model, "no_sync") else contextlib.nullcontext():
                with autocast_context(t.device, c.amp):
                    logits = model(x, lengths)  # (B,) or (B, K)
                    loss = objective.loss(logits, y, smoothing=c.label_smoothing)
                t.scaler.scale(loss).backward()
            if c.adversarial:
                perturb.aim(c.adversarial)
                with autocast_context(t.device, c.amp):
                    adversarial_loss = objective.loss(model(x, lengths), y, smoothing=c.label_smoothing)
                t.scaler.scale(adversarial_loss).backward()
        return loss, (objective.predicted(logits.detach()) == y.long()).sum()

    def evaluate(self, t, split, batcher: Batcher) -> dict:
        """evaluate() on this rank's share of `split` (its batcher), summed over ranks."""
        if len(batcher) == 0:  # more ranks than batches (evaluate() would take an empty batcher for none)
            k = t.model.num_classes
            r = {"loss": 0.0, "n": 0, "confusion_matrix": [[0] * k for _ in range(k)]}
        else:
            r = evaluate(t.model, split, device=t.device, amp=t.config.amp, batcher=batcher)
        return t.dist.sum_scores(r, t.device)

    def validate(self, t, train_metrics: dict) -> tuple[dict, float]:
        c = t.config
        with t.averaged():
            val = t._evaluate(t.data.val, t.val_batches)
        row = {"epoch": t.epoch + 1, "global_step": t.global_step, **train_metrics, "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "lr": lr_at(t.global_step - 1, t.total_steps, c)}
        if c.num_classes > 2 or c.monitor:
            row["val_macro_f1"] = val["macro_f1"]
        monitored = c.monitored()
        return row, -val["loss"] if monitored == "loss" else val[monitored]

    def epoch_line(self, row: dict, improved: bool) -> str:
        return report.epoch_line(row, improved)

    def finish(self, t) -> dict:
        """Test the best checkpoint, write report.json, the plot and the summary; return the report."""
        best_path = t.out / "best.pt"
        t.dist.barrier()  # rank 0 has finished writing best.pt
        if best_path.exists():
            t.model.load_state_dict(load_checkpoint_state(best_path)["model_state"])
        test = t._evaluate(t.data.test, t.test_batches)
        result = report.final_report(t.config.cell, test, t.best_val, t.history, t.device,
                                     t.rnn_implementation(), count_parameters(t.model),
                                     t.config.monitored(), t.data.meta.get("classes"))
        if t.is_main:
            keras_steps = t.config.max_len if t.config.encoding == "keras" else None
            t.log(report.write_report(t.out, result, test, t.history, t.model.summary(time_steps=keras_steps)))
        return result


class Trainer:
    """Holds a run's state; `fit()` trains, validates, checkpoints, and returns the final metrics.

    Research code can subclass it, add callbacks, or call the pieces (`train_epoch`, `end_epoch`,
    `finish`, `save`) directly.
    """

    def __init__(self, config: TrainConfig, data=None, task=None):
        self.task = task if task is not None else Classification()  # what is trained: the loss, metrics, epoch row
        self.kind = self.task.kind  # the "kind" its checkpoints carry (a classifier's none)
        self.reports_accuracy = self.task.reports_accuracy  # the progress bar shows training accuracy
        self.config = config = self.task.settings(config)
        self.dist, self.device = Distributed.from_env(resolve_device(config.device))
        self.is_main = self.dist.is_main
        self.out = Path(config.out)
        self.callbacks: dict[str, list] = defaultdict(list)
        self.last_step: StepInfo | None = None
        if config.tensorboard and self.is_main:  # first: a missing TensorBoard is said before anything is done
            from rnnsent.training.tensorboard import TensorBoardWriter

            TensorBoardWriter(config.tensorboard).attach(self)
        runtime.setup(self.device, config.threads, config.flush_denormal, config.retain_memory, config.deterministic,
                      strict_blas=config.rnn_impl != "torch")
        runtime.check_amp(config.amp, self.device)
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} must be a multiple of the {self.dist.world_size} processes, "
                "so that the global batch equals a one-process run's"
            )

        point = find_resume(config.resume, self.out, self.kind)  # --resume auto / a run folder -> a file, loaded
        for note in point.notes:
            self.log(note, always=True)
        if point.path != config.resume:
            config = self.config = dataclasses.replace(config, resume=point.path)
        resume_state, self.resumed_from = point.state, point.loaded_from

        torch.manual_seed(config.seed)
        self.data = data if data is not None else prepare_data(config, config.vocab_size)
        self.config = config = self._settings_of_data(config)
        classes = self.data.meta.get("classes")
        if classes and len(classes) != config.num_classes:  # your own data's classes size the head
            if config.num_classes != ModelConfig.num_classes:
                raise ValueError(
                    f"num_classes={config.num_classes} but the data has {len(classes)} classes; leave it unset"
                )
            self.config = config = dataclasses.replace(config, num_classes=len(classes))
        if resume_state is not None:  # checked once the data has sized the head
            check_resume(resume_state, config, self.data.vocab)
        self.model = runtime.build_in_memory(self.build_model, self.device)
        if config.pretrained and resume_state is None:  # a resumed run has its own weights already
            self.log(load_into(self.model, config.pretrained, self.data.vocab))
        self.ema = WeightAverage(self.model, config.ema) if config.ema else None
        self.train_model = self.dist.wrap(self.model, self.device)  # DDP when distributed; self.model is saved
        if self.dist.rank:
            torch.manual_seed(config.seed + self.dist.rank)  # same initial weights, different dropout masks per rank
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and self.device.type == "cuda")
        shard = dict(rank=self.dist.rank, world_size=self.dist.world_size)
        self.train_batches = Batcher(self.data.train, batch_size=config.batch_size // self.dist.world_size,
                                     shuffle=True, seed=config.seed, bucket=config.encoding == "bucketed",
                                     device=self.device, **shard)
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
        self._interrupt = StopFlag()
        if resume_state is not None:
            restore_training_state(self, resume_state)
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
    def build_model(self) -> torch.nn.Module:
        return self.task.build_model(self.config)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        fused = {"fused": True} if self.device.type == "cuda" else {}
        if c.weight_decay > 0:
            return torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay, **fused)
        return torch.optim.Adam(self.model.parameters(), lr=c.lr, **fused)

    def _settings_of_data(self, config: TrainConfig) -> TrainConfig:
        """vocab_size, max_len and encoding as the data was prepared: taken from the data where the config has
        the default, refused (one line) where it says otherwise. Else the model and its checkpoints would record
        settings the data was not made with, and predict() would read text differently from training."""
        params = self.data.meta.get("params") or {}
        padding = self.data.train.padding
        found = {"vocab_size": params.get("vocab_size"), "max_len": params.get("max_len"),
                 "encoding": canonical_encoding(params["encoding"], warn=False) if params.get("encoding") else
                 {"pre": "keras", "post": "bucketed"}.get(padding)}
        taken = {}
        for name, value in found.items():
            if value is None or value == getattr(config, name):
                continue
            if getattr(config, name) != getattr(TrainConfig, name):
                raise ValueError(f"{name}={getattr(config, name)!r} but the data was prepared with {name} {value!r}; "
                                 f"pass the data's {name} or leave it unset")
            taken[name] = value
        if taken:
            config = dataclasses.replace(config, **taken)
            self.log(f"from the data: {', '.join(f'{k} {v}' for k, v in taken.items())}")
        if len(self.data.vocab) > config.vocab_size:
            raise ValueError(
                f"the data's vocabulary has {len(self.data.vocab)} ids but vocab_size is {config.vocab_size}; "
                "its ids would fall outside the embedding"
            )
        return config

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self, full: bool = True) -> dict:
        """Everything a checkpoint holds (see resume.training_state). Distributed: every rank must call it."""
        state = training_state(self, full)
        if self.kind is not None:
            state["kind"] = self.kind
        return state

    def global_sums(self) -> tuple[float, float, int]:
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
            report.log(message)

    def rnn_implementation(self) -> str:
        """What runs the recurrent layer in this run, for logs and reports."""
        return self.task.rnn_implementation(self)

    def fit(self) -> dict:
        """Train to the configured number of epochs (or early stop), then report test metrics."""
        c = self.config
        with RunLock(self.out) if self.is_main else contextlib.nullcontext(), self._interrupt:  # one run per --out
            self.log(self.model.summary(time_steps=c.max_len if c.encoding == "keras" else None))
            self.log(f"recurrent layer: {self.rnn_implementation()}")  # may refuse: before anything is written
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
                    return self.finish()
                except StopNow:
                    raise stopping.during_test(self, flag.requested) from None

    def train_epoch(self) -> dict:
        """Run (the rest of) the current epoch; return its training loss, accuracy and throughput."""
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
                        group["lr"] = lr
                    loss, correct = self.forward_backward(model, x, lengths if lengths_needed else None, y)
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
                        accuracy = {"acc": f"{correct / self.seen:.4f}"} if self.reports_accuracy else {}
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

    def forward_backward(self, model, x, lengths, y) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch's forward and backward passes (gradients accumulate in the parameters); returns the
        loss and the number of right predictions (None where the task has none)."""
        return self.task.forward_backward(self, model, x, lengths, y)

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

    def _evaluate(self, split, batcher: Batcher) -> dict:
        """The task's scores of `split` (this rank's batcher), summed over ranks."""
        return self.task.evaluate(self, split, batcher)

    def validate(self, train_metrics: dict) -> tuple[dict, float]:
        """Score the validation split: the epoch's metrics row, and the monitored score (higher is better)."""
        return self.task.validate(self, train_metrics)

    def epoch_line(self, row: dict, improved: bool) -> str:
        return self.task.epoch_line(row, improved)

    def end_epoch(self, train_metrics: dict) -> bool:
        """Validate, record metrics, write checkpoints; return True when early stopping says stop."""
        c = self.config
        row, score = self.validate(train_metrics)
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
        self.log(self.epoch_line(row, improved))
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

    def finish(self) -> dict:
        """The task's end of the run (the classifier tests best.pt); returns its report."""
        return self.task.finish(self)


def _clip_with_norm(parameters, max_norm: float, norm: torch.Tensor) -> None:
    """clip_grad_norm_ with the norm already computed (the same scaling, so the same bits)."""
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    else:  # torch < 2.6 computes the norm again
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def run_task(config: TrainConfig, data=None, task=None) -> dict:
    """Train `task` (the classifier when None) as `config` says; returns its final report. Under torchrun,
    the process group is left last, after waiting for the peers when every rank stopped together."""
    agreed = False  # did every rank stop here together?
    check_run_folder(config)  # before the data is prepared; fit() checks again under the folder's lock
    try:
        result = Trainer(config, data, task).fit()
        agreed = True
        return result
    except TrainingInterrupted:
        agreed = True  # Ctrl-C is shared across ranks: all of them stop at the same step
        raise
    finally:
        shutdown(wait_for_peers=agreed)  # leave the process group torchrun set up, if any


def train(config: TrainConfig, data=None) -> dict:
    """Train a model as `config` says; returns the final report (test accuracy, confusion, timings)."""
    return run_task(config, data)
