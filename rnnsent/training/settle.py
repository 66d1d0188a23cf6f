"""A run's settings, settled once before its Trainer is built (settle): the task's settings, the checkpoint it
starts from (--init-from: rnnsent.training.handover), the machine, the data, and the settings the data decides
(settings_from_data), checked against the checkpoint being resumed.

The order is what a user sees first when something is wrong: the cheap refusals (a missing TensorBoard or a
folder it cannot write, --amp without CUDA, a model too large for the machine, a batch the processes cannot share)
come before the data is prepared, the checks that need the prepared data (its vocabulary and classes against the
checkpoint's) right after.
"""
from __future__ import annotations

import dataclasses

import torch

from rnnsent import runtime
from rnnsent.config import ModelConfig, TrainConfig, canonical_encoding
from rnnsent.data import PreparedData, prepare_data
from rnnsent.training import freeze, report
from rnnsent.training.classification import Classification, check_imbalance_settings
from rnnsent.training.distributed import Distributed
from rnnsent.training.handover import SHAPE_TAKEN, InitFrom, check_given_data, settle_head, settle_init
from rnnsent.training.resume import ResumePoint, check_resume, find_resume
from rnnsent.training.task import Task
from rnnsent.training.tensorboard import TensorBoardWriter, check_log_dir, run_log_dir


@dataclasses.dataclass(frozen=True)
class Settled:
    """A run ready for its Trainer: nothing in it changes afterwards."""

    config: TrainConfig  # final: the task's, with the data's vocab_size/max_len/encoding/num_classes, --resume's file
    data: PreparedData
    task: Task
    start: ResumePoint  # where it starts: a new run, or the checkpoint it continues (loaded and checked)
    dist: Distributed  # this process's place in a torchrun job (a no-op outside one)
    device: torch.device  # this process's device
    tensorboard: TensorBoardWriter | None  # the writer to attach (--tensorboard, rank 0), TensorBoard found
    init_from: InitFrom | None = None  # the trained model it starts from (--init-from), its head decided


def settle(config: TrainConfig, data: PreparedData | None = None, task: Task | None = None,
           start: ResumePoint | None = None) -> Settled:
    """Settle `config` for `task` (the classifier when None) on `data` (prepared as the config says when None).
    `start` is what --resume names, resolved and loaded (resume.find_resume), when the caller has done so already."""
    task = task if task is not None else Classification()
    if start is None:
        start = find_resume(config.resume, config.out, task.kind)  # --resume auto / a run folder -> a file, loaded
    config = task.settings(config)
    freeze.check(config)
    config, init = settle_init(config, start.state)  # the checkpoint's shape; its file read and checked
    device = runtime.machine(config)  # before the data: its threads, denormals and allocator are the whole run's
    dist, device = Distributed.from_env(device)
    runtime.check_fits(config.parameter_count(), device)  # the model's size from its settings, before the data
    board = None
    if config.tensorboard and dist.is_main:  # a missing TensorBoard or an unwritable folder is said before any work
        check_log_dir(config.tensorboard)
        recorded = (start.state or {}).get("config", {}).get("tensorboard")
        config = dataclasses.replace(config, tensorboard=run_log_dir(config.tensorboard, config.out, recorded))
        board = TensorBoardWriter(config.tensorboard)
    if config.batch_size % dist.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} must be a multiple of the {dist.world_size} processes, "
            "so that the global batch equals a one-process run's"
        )

    def log(message: str, always: bool = False) -> None:
        if dist.is_main and (always or not config.quiet):
            report.log(message)

    for note in start.notes:
        log(note, always=True)
    if start.path != config.resume:
        config = dataclasses.replace(config, resume=start.path)
    if init is not None:
        log(f"from --init-from {init.given}: " + ", ".join(f"{k} {getattr(config, k)}" for k in SHAPE_TAKEN))
    if data is None:  # with --init-from, its vocabulary and tokenizer encode the data
        data = (prepare_data(config, init.vocab_rows, vocab=init.vocab, extend_vocab=init.extend_vocab) if init
                else prepare_data(config, config.vocab_size))
    elif init is not None:
        check_given_data(data, init)
    config, taken = settings_from_data(config, data)
    if taken:
        log(f"from the data: {taken}")
    if isinstance(task, Classification):  # class weights, positive label and threshold against the data's classes
        for line in check_imbalance_settings(config, data):
            log(line)
    if start.state is not None:  # checked once the data has sized the head
        check_resume(start.state, config, data.vocab)
    if init is not None and init.source is not None:
        init = settle_head(init, config, data)
    return Settled(config, data, task, start, dist, device, board, init)


def settings_from_data(config: TrainConfig, data: PreparedData) -> tuple[TrainConfig, str]:
    """`config` with the settings `data` decides, and what was taken ('' for nothing): vocab_size, max_len and
    encoding as the data was prepared, taken where the config has the default and refused (one line) where it
    says otherwise, else the model and its checkpoints would record settings the data was not made with and
    predict() would read text differently from training; num_classes from your own data's classes."""
    params = data.meta.get("params") or {}
    found = {"vocab_size": params.get("vocab_size"), "max_len": params.get("max_len"),
             "encoding": canonical_encoding(params["encoding"], warn=False) if params.get("encoding") else
             {"pre": "keras", "post": "bucketed"}.get(data.train.padding)}
    taken = {}
    for name, value in found.items():
        if value is None or value == getattr(config, name):
            continue
        if getattr(config, name) != getattr(TrainConfig, name):
            raise ValueError(f"{name}={getattr(config, name)!r} but the data was prepared with {name} {value!r}; "
                             f"pass the data's {name} or leave it unset")
        taken[name] = value
    vocab_size = taken.get("vocab_size", config.vocab_size)
    if len(data.vocab) > vocab_size:
        raise ValueError(
            f"the data's vocabulary has {len(data.vocab)} ids but vocab_size is {vocab_size}; "
            "its ids would fall outside the embedding"
        )
    note = ", ".join(f"{k} {v}" for k, v in taken.items())
    classes = data.meta.get("classes")
    if classes and len(classes) != config.num_classes:  # your own data's classes size the head
        if config.num_classes != ModelConfig.num_classes:
            raise ValueError(
                f"num_classes={config.num_classes} but the data has {len(classes)} classes; leave it unset"
            )
        taken["num_classes"] = len(classes)
    return (dataclasses.replace(config, **taken) if taken else config), note
