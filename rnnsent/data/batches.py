"""Device-resident batching with reproducible order and optional length bucketing.

The whole encoded split is moved to the device once; a batch is an index tensor and the tensors it
selects, so each step costs one gather on the device and nothing on the host. The order of an
epoch is a pure function of (seed, epoch) through a private torch.Generator: a run resumed at step
k of epoch e calls iterate(e, start=k) and sees exactly the batches it would have seen.

Bucketing (right-padded splits only): shuffle all indices, cut them into chunks of
batch_size * BUCKET_BATCHES, sort each chunk by length, cut it into batches and shuffle the batch
order. Each batch is then cut to its own longest row, so short reviews are not run through hundreds
of padding steps. Chunks are whole multiples of batch_size, so, exactly as without bucketing, every
batch has batch_size rows except at most one (the last of the last chunk, dropped by drop_last).

Balanced (balanced=True, training only): an epoch still has as many rows and batches, but every batch holds the
classes of the split in equal shares (within one row where the batch does not divide), so a rare class is seen
as often as a common one. Each class's rows come from its own stream, the class's rows in a random order, again
and again: a rare class's rows repeat (each about equally often), a common class's are a different sample each
epoch. With bucketing, each class's share of a chunk is sorted by length and batch j takes the j-th slice of
every class, so batches stay balanced and their rows of similar length. All of it is drawn from the same
(seed, epoch) generator, so resume sees the same batches.

Sharding (distributed training, see rnnsent.training.distributed): with rank and world_size, the epoch's
batch list is planned as above and rank r keeps batches r, r + world_size, ... With even_shards
(training) the list is first padded by repeating its first batches, so every rank gets the same
number of batches (ranks step together); without it (evaluation) nothing is repeated and the
ranks' shares together hold every batch exactly once.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import torch

from rnnsent.data.text import EncodedSplit

BUCKET_BATCHES = 50  # batches per sorting chunk: wide enough to group lengths, small enough to stay random


@dataclass(frozen=True)
class _Batch:
    index: torch.Tensor  # (B,) int64 row ids, on the batcher's device
    width: int  # columns to keep: max_len for pre-padding, the batch's longest row for post-padding


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded from (seed, epoch) alone. Hashing keeps nearby pairs such as (0, 1) and
    (1, 0) from sharing a stream, which seed + epoch would not."""
    digest = hashlib.sha256(f"rnnsent:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class Batcher:
    """Batches of an EncodedSplit: `for tokens, lengths, labels in batcher.iterate(epoch)`.

    tokens is (B, T): T = max_len for padding="pre" (Keras parity keeps every column, because the
    recurrent layer runs through the leading zeros there), and the batch's longest row for "post".
    lengths (B,) and labels (B,) come with every batch.
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket: bool = False,
        device: torch.device | str | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        even_shards: bool = True,
        balanced: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if bucket and split.padding != "post":
            raise ValueError(
                "bucket=True needs right-padded data (encoding='bucketed', padding='post'): Keras-parity "
                "pre-padded rows must keep all max_len columns, so there is nothing to cut"
            )
        if len(split) == 0:
            raise ValueError("the split has no reviews; there is nothing to batch")
        if balanced and not shuffle:
            raise ValueError("balanced batches are drawn at random: balanced=True needs shuffle=True")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket = bucket
        self.drop_last = drop_last
        self.balanced = balanced
        self.rank, self.world_size, self.even_shards = rank, world_size, even_shards
        self.padding = split.padding
        self.device = torch.device(device) if device is not None else split.tokens.device
        self.tokens = split.tokens.to(self.device)  # (N, L)
        self.lengths = split.lengths.to(self.device)  # (N,)
        self.labels = split.labels.to(self.device)  # (N,)
        self._host_lengths = split.lengths.cpu()  # planning happens on the host, without device syncs
        labels = split.labels.cpu().long()
        # each class's rows (the classes the split holds), for balanced batches
        self._class_rows = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]

    @property
    def num_samples(self) -> int:
        """Reviews seen per epoch by all ranks together (all of them unless drop_last drops the one short batch)."""
        n = len(self._host_lengths)
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        """Batches per epoch (this rank's share when sharded)."""
        n = len(self._host_lengths)
        total = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.even_shards:
            return -(-total // self.world_size)
        return len(range(self.rank, total, self.world_size))

    def _shuffled(self, g: torch.Generator) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(row order, batch spans into it): every row once, shuffled (bucketed: by length within chunks)."""
        n, b = len(self._host_lengths), self.batch_size
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        spans = [(i, min(i + b, n)) for i in range(0, n, b)]
        if self.bucket:
            chunk = b * BUCKET_BATCHES
            pieces = []
            for c in range(0, n, chunk):
                part = order[c : c + chunk]
                # Stable sort keeps equal lengths in their shuffled order, so ties stay random.
                pieces.append(part[torch.sort(self._host_lengths[part], stable=True).indices])
            order = torch.cat(pieces)  # chunks are multiples of b: batches never straddle two
            if self.shuffle:
                spans = [spans[i] for i in torch.randperm(len(spans), generator=g).tolist()]
        return order, spans

    def _balanced(self, g: torch.Generator) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(row order, batch spans into it) with every class in equal shares per batch (see the module's notes)."""
        n, b, k = len(self._host_lengths), self.batch_size, len(self._class_rows)
        sizes = [min(b, n - i) for i in range(0, n, b)]
        # batch j's rows of class c: an equal share, the remainder going to classes in turn from j
        shares = torch.tensor([[s // k + ((c - j) % k < s % k) for c in range(k)] for j, s in enumerate(sizes)])
        streams = []
        for c, rows in enumerate(self._class_rows):
            need = int(shares[:, c].sum())
            laps = -(-need // len(rows))
            streams.append(torch.cat([rows[torch.randperm(len(rows), generator=g)] for _ in range(laps)])[:need])
        batches: list[list[torch.Tensor]] = [[] for _ in sizes]
        starts = torch.cumsum(shares, 0) - shares  # (batches, classes): where batch j's share starts in each stream
        chunk = BUCKET_BATCHES if self.bucket else 1
        for j0 in range(0, len(sizes), chunk):
            j1 = min(j0 + chunk, len(sizes))
            for c, stream in enumerate(streams):
                part = stream[int(starts[j0, c]): int(starts[j1 - 1, c] + shares[j1 - 1, c])]
                if self.bucket:  # by length within the chunk: batch j gets the j-th slice of every class
                    part = part[torch.sort(self._host_lengths[part], stable=True).indices]
                offsets = torch.cumsum(shares[j0:j1, c], 0).tolist()
                for j, (s, e) in enumerate(zip([0, *offsets[:-1]], offsets)):
                    batches[j0 + j].append(part[s:e])
        if self.bucket:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        order = torch.cat([torch.cat(parts) for parts in batches])
        bounds = torch.cumsum(torch.tensor([sum(len(p) for p in parts) for parts in batches]), 0).tolist()
        return order, list(zip([0, *bounds[:-1]], bounds))

    def _plan(self, epoch: int) -> list[_Batch]:
        g = epoch_generator(self.seed, epoch)
        order, spans = self._balanced(g) if self.balanced else self._shuffled(g)
        full_width = self.tokens.shape[1]
        widths = [full_width if self.padding == "pre" else int(self._host_lengths[order[s:e]].max()) for s, e in spans]
        if self.drop_last:
            keep = [k for k, (s, e) in enumerate(spans) if e - s == self.batch_size]
            spans, widths = [spans[k] for k in keep], [widths[k] for k in keep]
        if self.world_size > 1:
            keep = list(range(len(spans)))
            if self.even_shards:
                keep = [k % len(spans) for k in range(len(self) * self.world_size)]  # pad by wrapping around
            keep = keep[self.rank :: self.world_size]
            spans, widths = [spans[k] for k in keep], [widths[k] for k in keep]
        device_order = order.to(self.device)  # one transfer per epoch; batches are views of it
        return [_Batch(device_order[s:e], w) for (s, e), w in zip(spans, widths)]

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """The index tensor of every batch of `epoch`, in order; depends only on (seed, epoch)."""
        return [batch.index for batch in self._plan(epoch)]

    def iterate(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (tokens (B, T), lengths (B,), labels (B,)) for batches start, start+1, ... of `epoch`."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start={start} is outside 0..{len(self)} (batches per epoch)")
        for batch in self._plan(epoch)[start:]:
            idx = batch.index
            if self.padding == "pre":
                tokens = self.tokens[idx]  # (B, max_len)
            else:
                tokens = self.tokens[idx, : batch.width]  # (B, T)
            yield tokens, self.lengths[idx], self.labels[idx]
