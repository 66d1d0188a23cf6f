"""Batcher: order fixed by (seed, epoch), resumable, every sample once per epoch, tight buckets."""
from __future__ import annotations

import random

import pytest
import torch

from rnnsent.data.batches import BUCKET_BATCHES, Batcher
from rnnsent.data.text import encode_bucketed, encode_keras


def make_split(n=1000, max_len=60, padding="post", seed=0):
    rng = random.Random(seed)
    ids = [[rng.randrange(3, 100) for _ in range(rng.randrange(0, 90))] for _ in range(n)]
    labels = [rng.randrange(2) for _ in range(n)]
    return (encode_bucketed if padding == "post" else encode_keras)(ids, labels, max_len)


def as_lists(batches):
    return [b.tolist() for b in batches]


@pytest.mark.parametrize("bucket", [False, True])
def test_order_depends_only_on_seed_and_epoch(bucket):
    split = make_split()
    a, b = Batcher(split, 32, seed=7, bucket=bucket), Batcher(split, 32, seed=7, bucket=bucket)
    torch.manual_seed(123)
    first = as_lists(a.batches(3))
    torch.manual_seed(999)  # the global RNG must play no part
    assert as_lists(b.batches(3)) == first
    assert as_lists(a.batches(4)) != first
    assert as_lists(Batcher(split, 32, seed=8, bucket=bucket).batches(3)) != first


def test_batching_leaves_the_global_rng_alone():
    split = make_split()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    list(Batcher(split, 32, seed=1, bucket=True).iterate(0))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("padding,bucket", [("pre", False), ("post", False), ("post", True)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch_and_exact_batch_sizes(padding, bucket, drop_last):
    n, bs = 1000, 32  # 1000 = 31 * 32 + 8: one short batch
    batcher = Batcher(make_split(n, padding=padding), bs, seed=3, bucket=bucket, drop_last=drop_last)
    batches = batcher.batches(0)
    seen = torch.cat(batches)
    sizes = [len(b) for b in batches]
    assert len(batches) == len(batcher) == (31 if drop_last else 32)
    assert len(seen) == batcher.num_samples == (992 if drop_last else 1000)
    assert len(set(seen.tolist())) == len(seen)  # nothing twice
    assert sizes.count(bs) == 31 and sum(1 for s in sizes if s != bs) == (0 if drop_last else 1)


def test_unshuffled_order_is_the_split_order():
    batcher = Batcher(make_split(100), 30, shuffle=False)
    assert torch.cat(batcher.batches(0)).tolist() == list(range(100))
    assert as_lists(batcher.batches(0)) == as_lists(batcher.batches(5))


def test_bucketing_cuts_each_batch_to_its_longest_row():
    split = make_split(2000, max_len=80)
    batcher = Batcher(split, 16, seed=0, bucket=True)
    plain = Batcher(split, 16, seed=0, bucket=False)
    widths, plain_widths = [], [t.shape[1] for t, _, _ in plain.iterate(0)]
    for (tokens, lengths, labels), idx in zip(batcher.iterate(0), batcher.batches(0)):
        assert tokens.shape == (len(idx), int(lengths.max()))
        assert torch.equal(tokens, split.tokens[idx, : tokens.shape[1]])
        assert torch.equal(lengths, split.lengths[idx]) and torch.equal(labels, split.labels[idx])
        assert torch.equal((tokens != 0).sum(1), lengths)  # no real token cut off
        widths.append(tokens.shape[1])
    # sorting inside chunks of BUCKET_BATCHES batches must shrink the padded area a lot
    assert sum(widths) < 0.75 * sum(plain_widths)
    assert 2000 // 16 // BUCKET_BATCHES >= 2  # more than one chunk was exercised


def test_bucketing_sorts_within_chunks_only():
    split = make_split(3200)
    batcher = Batcher(split, 32, seed=1, bucket=True, shuffle=False)  # no batch shuffle: chunks in order
    order = torch.cat(batcher.batches(0))
    chunk = 32 * BUCKET_BATCHES
    for c in range(0, 3200, chunk):
        lengths = split.lengths[order[c : c + chunk]]
        assert torch.all(lengths[1:] >= lengths[:-1])
        assert sorted(order[c : c + chunk].tolist()) == list(range(c, min(c + chunk, 3200)))


def test_pre_padding_yields_full_rows_and_refuses_buckets():
    split = make_split(100, max_len=40, padding="pre")
    for tokens, lengths, _ in Batcher(split, 16, seed=0).iterate(0):
        assert tokens.shape[1] == 40 and lengths.max() <= 40
    with pytest.raises(ValueError, match="bucket"):
        Batcher(split, 16, bucket=True)


@pytest.mark.parametrize("bucket", [False, True])
def test_resume_mid_epoch_sees_the_same_batches(bucket):
    split = make_split(500)
    full = list(Batcher(split, 20, seed=11, bucket=bucket).iterate(2))
    resumed = list(Batcher(split, 20, seed=11, bucket=bucket).iterate(2, start=7))
    assert len(resumed) == len(full) - 7
    for a, b in zip(full[7:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="start"):
        next(Batcher(split, 20).iterate(0, start=26))


def test_data_lives_on_the_requested_device():
    split = make_split(50)
    batcher = Batcher(split, 8, device="cpu")
    assert batcher.tokens.device.type == "cpu"
    tokens, lengths, labels = next(batcher.iterate(0))
    assert tokens.dtype == torch.long and lengths.dtype == torch.long and labels.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_views_of_device_data():
    batcher = Batcher(make_split(200), 32, device="cuda", bucket=True)
    tokens, lengths, labels = next(batcher.iterate(0))
    assert tokens.is_cuda and lengths.is_cuda and labels.is_cuda


def test_bad_arguments():
    split = make_split(10)
    with pytest.raises(ValueError, match="batch_size"):
        Batcher(split, 0)
    with pytest.raises(ValueError, match="no reviews"):
        Batcher(split.select(torch.zeros(0, dtype=torch.long)), 4)
