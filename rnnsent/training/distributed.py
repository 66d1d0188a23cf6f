"""Data-parallel training across processes: `torchrun --nproc_per_node=N scripts/train.py ...`.

torchrun starts N copies of the script with RANK, LOCAL_RANK and WORLD_SIZE set. Each copy builds
the same model from the same seed, DDP averages the gradients so the weights stay equal, and each
rank trains on its own share of every epoch's batches. Outside torchrun (no WORLD_SIZE) every method
here is a no-op, so the trainer has one code path. Under torchrun a process joins the group even when
it is the only one (--nproc_per_node=1), as torchrun scripts usually do: the same collectives and DDP
then run with one rank, which is how one GPU tests the NCCL path. The choices, in one place:

- Backend: NCCL when the device is CUDA (rank r uses cuda:LOCAL_RANK), gloo on CPU.
- Batches: the global batch is --batch-size, as in a one-process run; each rank takes
  batch_size // world_size rows, so batch_size must be a multiple of the world size. The epoch's
  list of such per-rank batches is the one-process plan of that size (a function of (seed, epoch));
  rank r takes batches r, r + N, r + 2N, ... and the list is first padded by repeating its first
  batches, as DistributedSampler does, so every rank runs the same number of steps and every review
  is seen each epoch (at most N - 1 batches twice). See Batcher(rank=, world_size=).
- Metrics: loss/accuracy sums and validation/test counts are summed over ranks (all_reduce);
  validation and test are split across ranks without padding, so each review is scored once.
- Stopping: a non-finite loss on any rank, or Ctrl-C on any rank, stops every rank at the same step.
- Files: only rank 0 writes checkpoints, metrics and logs. A checkpoint holds every rank's RNG
  state and the summed running metrics; on resume every rank reads the same file and takes its own
  RNG state, so a resumed N-process run continues bit for bit. It must be resumed with the same N.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


class Distributed:
    """This process's place in the job (rank, world_size) and the few collectives the trainer needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, cpu_group=None, joined: bool = False):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self._cpu_group = cpu_group  # gloo group for host-side flags (the default group if it is gloo)
        self._joined = joined or world_size > 1

    @property
    def enabled(self) -> bool:
        """In a process group: under torchrun, whatever the number of processes."""
        return self._joined

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> tuple["Distributed", torch.device]:
        """Join the process group torchrun describes; returns (context, this rank's device)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it, even for one process
            return cls(), device
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)  # one GPU per process, whatever --device named
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))
        cpu_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        return cls(rank, world, local_rank, cpu_group, joined=True), device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to train: DDP around `model` when distributed (the plain model is what gets saved)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of `t` over ranks (a new tensor; `t` is unchanged)."""
        if not self.enabled:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        """True on every rank only if it is true on every rank (stays on the device: no host sync)."""
        if not self.enabled:
            return flag
        t = flag.to(torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.bool()

    def any(self, flag: bool) -> bool:
        """A host-side flag (Ctrl-C) raised on any rank, so every rank stops at the same step."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._cpu_group)
        return bool(t.item())

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (small objects such as RNG states)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._cpu_group)
        return out

    def sum_scores(self, r: dict, device: torch.device) -> dict:
        """evaluate()'s result for this rank's share, summed over all ranks."""
        if not self.enabled:
            return r
        from rnnsent.inference.evaluate import scores

        confusion = torch.tensor(r["confusion_matrix"], dtype=torch.float64, device=device)  # (K, K)
        summed = self.sum(torch.cat([confusion.new_tensor([r["loss"] * r["n"]]), confusion.flatten()])).tolist()
        k = len(r["confusion_matrix"])
        return scores(summed[0], [[int(v) for v in summed[1 + i * k: 1 + (i + 1) * k]] for i in range(k)])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self._cpu_group)


def shutdown(wait_for_peers: bool = False) -> None:
    """Leave the process group, if this process joined one.

    wait_for_peers: first wait until every rank is here. A rank that tears its gloo connections down
    while a peer still uses them makes that peer abort at exit ("terminate called without an active
    exception", about one run in ten on the developers' machine). Only for stops every rank agreed on
    (the end of training, an agreed Ctrl-C): after a crash on one rank the others would wait in vain."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()
