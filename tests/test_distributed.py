"""Data-parallel training under torchrun: sharded batches, and a real 2-process gloo run that is killed,
resumed, and ends with the weights of an uninterrupted 2-process run."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from rnnsent.training import distributed, faults
from rnnsent.storage.checkpoint import CheckpointError, load_checkpoint_state
from rnnsent.data import Batcher, encode_bucketed
from rnnsent.training.pretrain import pretrain
from rnnsent.config import TrainConfig
from rnnsent.training.stopping import TrainingInterrupted
from rnnsent.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
# 8 training reviews; global batch 6 = 3 per rank: batches of 3, 3, 2 padded to 4, so 2 steps per rank per epoch.
ARGS = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8",
        "--hidden-size", "6", "--max-len", "60", "--batch-size", "6", "--val-fraction", "0.25", "--epochs", "3",
        "--embed-dropout", "0.2", "--output-dropout", "0.1", "--seed", "3", "--ckpt-every", "1", "--threads", "1",
        "--quiet"]

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo backend")


def _split(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, 50, (int(k),), generator=g).tolist() for k in torch.randint(0, 30, (n,), generator=g)]
    return encode_bucketed(ids, [i % 2 for i in range(n)], max_len=20)


@pytest.mark.parametrize("n, batch, world", [(37, 4, 2), (37, 3, 4), (5, 2, 4), (100, 8, 3)])
@pytest.mark.parametrize("bucket", [False, True])
def test_shards_are_equal_in_count_and_cover_every_review(n, batch, world, bucket):
    split = _split(n)
    whole = Batcher(split, batch, seed=5, bucket=bucket)
    shards = [Batcher(split, batch, seed=5, bucket=bucket, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-len(whole) // world)
    for epoch in (0, 1):
        full = whole.batches(epoch)
        per_rank = [s.batches(epoch) for s in shards]
        # Rank r holds batches r, r + world, ... of the one-process plan, padded by wrapping around.
        for r, mine in enumerate(per_rank):
            assert [b.tolist() for b in mine] == [
                full[k % len(full)].tolist() for k in range(r, len(mine) * world, world)
            ]
        seen = torch.cat([b for mine in per_rank for b in mine])
        assert set(seen.tolist()) == set(range(n))
        assert len(seen) - n < world * batch, "padding repeats fewer than world_size batches"


def test_evaluation_shards_partition_the_split():
    split = _split(23)
    shards = [Batcher(split, 4, shuffle=False, rank=r, world_size=3, even_shards=False) for r in range(3)]
    rows = sorted(i for s in shards for b in s.batches(0) for i in b.tolist())
    assert rows == list(range(23)), "each review is scored exactly once"
    assert [len(s) for s in shards] == [2, 2, 2]
    assert len(Batcher(split, 30, shuffle=False, rank=1, world_size=2, even_shards=False)) == 0


def _torchrun(base: Path, *extra, kill_at: int | None = None, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("RNNSENT_FAULT_KILL_AT_STEP", None)
    if kill_at is not None:
        env["RNNSENT_FAULT_KILL_AT_STEP"] = str(kill_at)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "scripts" / "train.py"), *ARGS, "--out", str(base / "run"), "--cache-dir", str(base / "cache"),
           *extra]
    # A session of its own, so that a hung run is killed with all its workers.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung:\n{err.decode()[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@needs_gloo
def test_two_process_run_is_killed_resumed_and_matches_an_uninterrupted_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    proc = _torchrun(a)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    reports = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert len(reports) == 1, "only rank 0 reports"
    assert sum(reports[0]["confusion"].values()) == 12, "the 12 test reviews are split over the ranks, each scored once"
    rows = [json.loads(r) for r in (a / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3], "only rank 0 writes metrics"
    assert [r["global_step"] for r in rows] == [2, 4, 6]
    reference = load_checkpoint_state(a / "run" / "last.pt")
    assert reference["progress"]["world_size"] == 2 and len(reference["rng_ranks"]) == 2
    assert not torch.equal(reference["rng_ranks"][0]["torch"], reference["rng_ranks"][1]["torch"])

    proc = _torchrun(b, kill_at=3)  # epoch 2, step 1, right after its checkpoint
    assert proc.returncode != 0
    last = b / "run" / "last.pt"
    assert load_checkpoint_state(last)["progress"]["global_step"] == 3
    proc = _torchrun(b, "--resume")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    resumed = load_checkpoint_state(last)
    for k, v in reference["model_state"].items():
        assert torch.equal(resumed["model_state"][k], v), f"{k} differs"
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
    assert strip(json.loads(r) for r in (b / "run" / "metrics.jsonl").read_text().splitlines()) == strip(rows)

    # A checkpoint of a 2-process run cannot continue in one process: its batches were planned for two.
    config = TrainConfig(**{**json.loads((a / "run" / "config.json").read_text()), "resume": str(a / "run" / "last.pt"),
                            "epochs": 4})
    with pytest.raises(CheckpointError, match=r"2 process\(es\); resume it with the same number"):
        Trainer(config)


@needs_gloo
def test_one_process_torchrun_joins_the_group_and_trains_exactly_like_a_plain_run(tmp_path):
    proc = _torchrun(tmp_path / "torchrun", nproc=1)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    joined = load_checkpoint_state(tmp_path / "torchrun" / "run" / "last.pt")
    assert len(joined["rng_ranks"]) == 1, "under torchrun the process joins a group (DDP of one rank)"
    from rnnsent.cli import train_main

    assert train_main([*ARGS, "--out", str(tmp_path / "plain" / "run"), "--cache-dir", str(tmp_path / "cache")]) == 0
    plain = load_checkpoint_state(tmp_path / "plain" / "run" / "last.pt")
    assert "rng_ranks" not in plain
    for k, v in plain["model_state"].items():
        assert torch.equal(joined["model_state"][k], v), f"{k} differs"


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.device_count() >= 2 and dist.is_nccl_available()),
                    reason="needs 2 CUDA devices and NCCL")
def test_two_process_nccl_run(tmp_path):
    proc = _torchrun(tmp_path, "--device", "cuda", "--epochs", "1")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    state = load_checkpoint_state(tmp_path / "run" / "last.pt")
    assert state["progress"]["world_size"] == 2 and "cuda" in state["rng_ranks"][1]


def _ctrl_c_at_step_2(trainer) -> None:
    def stop(t):
        if t.global_step == 2:
            raise KeyboardInterrupt  # as the first Ctrl-C does, agreed by every rank between two steps

    trainer.add_callback("on_step_end", stop)


@pytest.mark.parametrize("run", [train, pretrain])
def test_an_agreed_ctrl_c_waits_for_the_peers_before_leaving_the_group(tmp_path, monkeypatch, run):
    """Under torchrun, a Ctrl-C every rank stopped at together ends with a barrier before the process group is
    left (distributed.shutdown says why: a rank leaving early makes its peers abort at exit), in train() and
    pretrain() alike. The process group is a recording stand-in, so one process shows what every rank does."""
    calls = []
    group = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                            barrier=lambda: calls.append("barrier"),
                            destroy_process_group=lambda: calls.append("leave"))
    monkeypatch.setattr(distributed, "dist", group)
    monkeypatch.setattr(faults, "install", _ctrl_c_at_step_2)
    config = TrainConfig(cell="gru", vocab_size=300, embed_dim=8, hidden_size=6, max_len=60, epochs=2, batch_size=4,
                         data_root=str(FIXTURE), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"),
                         quiet=True, val_fraction=0.25, threads=1)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run(config)
    assert calls == ["barrier", "leave"]
