"""The CUDA path against the CPU path: forward and gradients, mixed precision, checkpoints that cross
machines, resume after a crash, and torchrun. Everything here needs a CUDA device and skips cleanly
without one (`pytest -m gpu` selects these tests; tools/gpu_check.sh runs them on a GPU machine)."""
import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnsent
from rnnsent.storage.checkpoint import load_checkpoint_state
from rnnsent.data import PreparedData, Vocab, encode_bucketed
from rnnsent.model.sentiment import SentimentRNN
from rnnsent.config import TrainConfig
from rnnsent.training.trainer import Trainer

from helpers import weights

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
TINY = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8",
        "--hidden-size", "6", "--max-len", "60", "--batch-size", "3", "--val-fraction", "0.25",
        "--embed-dropout", "0.2", "--output-dropout", "0.1", "--seed", "7", "--quiet"]
CELLS = ("gru", "lstm", "rnn")


@pytest.fixture(autouse=True)
def full_fp32():
    """fp32 on CUDA means fp32: TF32 matrix units would put the comparison near 1e-3."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(script: str, *args, env_extra=None, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], env=env,
                          capture_output=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("padded", ["pre", "post"])
def test_cuda_forward_and_every_gradient_match_the_cpu_path(cell, padded):
    torch.manual_seed(0)
    cpu = SentimentRNN(cell)  # the exercise's size; on the CPU the default path (fused kernel where it builds)
    gpu = copy.deepcopy(cpu).cuda()
    tokens = torch.randint(0, 5000, (16, 57))
    lengths = torch.randint(1, 58, (16,)) if padded == "post" else None
    weight = torch.randn(16)  # a loss that weights each row differently, so no gradient is trivially symmetric
    out_cpu = cpu(tokens, lengths)
    out_gpu = gpu(tokens.cuda(), None if lengths is None else lengths.cuda())
    (out_cpu * weight).sum().backward()
    (out_gpu * weight.cuda()).sum().backward()
    assert rel(out_gpu, out_cpu) < 1e-4
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        assert p_cpu.grad is not None and p_cpu.grad.abs().sum() > 0, name
        assert rel(p_gpu.grad, p_cpu.grad) < 1e-4, name


def _synthetic(n: int, vocab_size: int, seed: int):
    """Reviews of random words holding one cue word (10 positive, 11 negative) at a random place: learnable in
    a few hundred steps, so fp32 and mixed precision can be compared on a model that really learns."""
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for _ in range(n):
        length = int(torch.randint(8, 48, (1,), generator=g))
        row = torch.randint(12, vocab_size, (length,), generator=g).tolist()
        label = int(torch.randint(0, 2, (1,), generator=g))
        row[int(torch.randint(0, length, (1,), generator=g))] = 10 if label else 11
        ids.append([1] + row)
        labels.append(label)
    return encode_bucketed(ids, labels, max_len=64)


def _synthetic_data(vocab_size=200) -> PreparedData:
    vocab = Vocab.build([[f"w{i}" for i in range(vocab_size - 3)]], vocab_size)
    return PreparedData(train=_synthetic(1536, vocab_size, 0), val=_synthetic(256, vocab_size, 1),
                    test=_synthetic(512, vocab_size, 2), vocab=vocab, meta={"source": "synthetic"})


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_and_fp16_training_stays_finite_and_close_to_fp32(tmp_path, cell):
    data = _synthetic_data()
    reports, histories = {}, {}
    for amp in ("none", "bf16", "fp16"):
        config = TrainConfig(cell=cell, vocab_size=200, embed_dim=16, hidden_size=32, epochs=6, batch_size=32,
                             lr=5e-3, clip=1.0, device="cuda", amp=amp, quiet=True, out=str(tmp_path / amp))
        trainer = Trainer(config, data)
        reports[amp] = trainer.fit()
        histories[amp] = trainer.history
    assert reports["none"]["test_accuracy"] > 0.9, "fp32 must learn the task, or the comparison says nothing"
    for amp in ("bf16", "fp16"):
        losses = [r["train_loss"] for r in histories[amp]]
        assert all(map(torch.isfinite, torch.tensor(losses))), (amp, losses)
        # Where the loss falls fastest, a step's lag moves it a lot; at the end both must have converged alike.
        assert abs(losses[-1] - histories["none"][-1]["train_loss"]) < 0.05, (amp, losses)
        assert abs(reports[amp]["test_accuracy"] - reports["none"]["test_accuracy"]) < 0.03, (amp, reports[amp])


def test_a_checkpoint_written_on_cuda_predicts_the_same_on_a_cpu_only_machine(tmp_path):
    run("train.py", "--cell", "lstm", "--epochs", "2", "--device", "cuda", "--out", tmp_path / "run",
        "--cache-dir", tmp_path / "cache", *TINY)
    texts = ["A moving, beautifully acted film.", "Two hours I won't get back.", ""]
    on_gpu = [p.probability for p in rnnsent.predict(rnnsent.load_checkpoint(tmp_path / "run", device="cuda"), texts)]
    proc = run("predict.py", "--checkpoint", tmp_path / "run", "--json", *texts, env_extra={"CUDA_VISIBLE_DEVICES": ""})
    on_cpu = [json.loads(line)["probability"] for line in proc.stdout.decode().splitlines()]
    assert len(on_cpu) == len(texts)
    assert max(abs(a - b) for a, b in zip(on_gpu, on_cpu)) < 1e-5, (on_gpu, on_cpu)


def test_cuda_run_killed_then_resumed_ends_like_an_uninterrupted_one(tmp_path):
    common = [*TINY, "--cell", "gru", "--epochs", "3", "--device", "cuda", "--deterministic", "--ckpt-every", "2"]
    run("train.py", *common, "--out", tmp_path / "ref", "--cache-dir", tmp_path / "cache")
    killed = run("train.py", *common, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache",
                 env_extra={"RNNSENT_FAULT_KILL_AT_STEP": "5"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    run("train.py", *common, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "--resume")
    ref, resumed = weights(tmp_path / "ref" / "last.pt"), weights(tmp_path / "run" / "last.pt")
    assert ref.keys() == resumed.keys()
    for k in ref:  # deterministic cuDNN: equal up to rounding; a wrong RNG or position would differ by far more
        assert torch.allclose(resumed[k], ref[k], rtol=1e-5, atol=1e-6), k
    ref_report = json.loads((tmp_path / "ref" / "report.json").read_text())
    resumed_report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert resumed_report["test_accuracy"] == ref_report["test_accuracy"]
    assert abs(resumed_report["test_loss"] - ref_report["test_loss"]) < 1e-5


def test_one_process_nccl_torchrun_on_cuda_trains_and_writes_one_checkpoint_set(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29531",
                           str(ROOT / "scripts" / "train.py"), *TINY, "--cell", "gru", "--epochs", "1",
                           "--device", "cuda", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")],
                          env=env, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["best.pt", "last.pt"]
    state = load_checkpoint_state(tmp_path / "run" / "last.pt")
    assert state["progress"]["world_size"] == 1
    assert len(state["rng_ranks"]) == 1 and "cuda" in state["rng_ranks"][0], "joined the (NCCL) group as rank 0"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["device"].startswith("cuda")


def test_pretraining_and_fine_tuning_levers_on_cuda_match_the_cpu(tmp_path):
    """A language model and an EMA + adversarial + label-smoothing fine-tune run on CUDA; one step of each
    gives the CPU's gradients, and the CUDA checkpoints load on the CPU."""
    from rnnsent.training.pretrain import PretrainTrainer, pretrain

    def config(name, device, **kw):
        return TrainConfig(cell="gru", vocab_size=300, embed_dim=8, hidden_size=16, max_len=60, epochs=1, batch_size=4,
                           data_root=str(FIXTURE), cache_dir=str(tmp_path / "cache"),
                           out=str(tmp_path / name), quiet=True, val_fraction=0.25, device=device, seed=3, **kw)

    pretrain(config("lm", "cuda"))
    grads = {}
    for device in ("cpu", "cuda"):
        for cls, kw in (
            (PretrainTrainer, {}),
            (
                Trainer,
                dict(pretrained=str(tmp_path / "lm"), ema=0.9, adversarial=0.05, label_smoothing=0.1, rnn_impl="torch"),
            ),
        ):
            t = cls(config(f"{cls.__name__}-{device}", device, **kw))
            x, lengths, y = next(iter(t.train_batches.iterate(0)))
            t.task.forward_backward(t, t.model, x, lengths, y)
            grads[device, cls] = {n: p.grad.cpu() for n, p in t.model.named_parameters()}
    for cls in (PretrainTrainer, Trainer):
        for n, g in grads["cpu", cls].items():
            assert torch.allclose(grads["cuda", cls][n], g, rtol=1e-3, atol=1e-5), (cls.__name__, n)
    report = Trainer(config("ft", "cuda", pretrained=str(tmp_path / "lm"), ema=0.9, adversarial=0.05)).fit()
    loaded = rnnsent.load_checkpoint(tmp_path / "ft" / "best.pt")
    assert 0 <= report["test_accuracy"] <= 1 and loaded.model.embedding.weight.device.type == "cpu"
