"""The fused CPU kernel (rnnsent/model/fused.py, rnnsent/model/csrc/recurrent_cpu.cpp) against PyTorch's own layers."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rnnsent.nn
from rnnsent.model import fused, recurrent
from rnnsent.config import CELL_TABLE, CELLS
from rnnsent.model.sentiment import SentimentRNN
from rnnsent.runtime import retain_freed_memory

HAVE_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None
needs_kernel = pytest.mark.skipif(not fused.available(), reason=f"fused kernel unavailable: {fused.status()}")


def test_kernel_builds_where_a_compiler_is():
    # CI machines have gcc: a silent fallback to the slow path there is a regression, not a skip.
    if not HAVE_COMPILER:
        pytest.skip("no C++ compiler on this machine")
    assert fused.available(), fused.status()
    assert "fused CPU kernel" in fused.status()


def _model(cell: str, **kwargs) -> SentimentRNN:
    torch.manual_seed(0)
    model = SentimentRNN(cell, init="torch", **kwargs)
    with torch.no_grad():  # a non-zero recurrent bias, so that its path through the kernel is checked too
        model.rnn.bias_hh_l0.uniform_(-0.3, 0.3)
    return model


def _uses_fused(model: SentimentRNN, tokens) -> bool:
    return recurrent.uses_fused(model.impl, tokens, model.embedding.weight.dtype)


def _run(model: SentimentRNN, impl: str, tokens, lengths, seed: int = 1):
    """Logits in training mode, their gradients, and logits in eval mode under no_grad."""
    model.impl = impl
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks for both implementations
    logits = model(tokens, lengths)
    weights = torch.linspace(-1, 1, logits.numel())
    (torch.sigmoid(logits) * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.eval()
    with torch.no_grad():
        eval_logits = model(tokens, lengths)
    return logits.detach(), grads, eval_logits


def _assert_close(a, b, what, rtol=2e-5):
    scale = a.abs().max().clamp(min=1e-6)
    assert (a - b).abs().max() <= rtol * scale, f"{what}: max |diff| {(a - b).abs().max():.3g} vs scale {scale:.3g}"


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(8, 30), (64, 120)])  # below and above the vocabulary-table threshold
@pytest.mark.parametrize("with_lengths", [False, True])
def test_fused_matches_pytorch_layers(cell, shape, with_lengths):
    model = _model(cell)
    batch, steps = shape
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, model.vocab_size, shape, generator=g)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g) if with_lengths else None
    ref_logits, ref_grads, ref_eval = _run(model, "torch", tokens, lengths)
    logits, grads, eval_logits = _run(model, "fused", tokens, lengths)
    _assert_close(ref_logits, logits, "training logits")
    _assert_close(ref_eval, eval_logits, "eval logits")
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        _assert_close(ref_grads[name], grads[name], f"gradient of {name}", rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
def test_fused_with_dropout_matches(cell):
    # Embedding dropout rules out the vocabulary-table shortcut: the per-token projection path runs.
    model = _model(cell, embed_dropout=0.3, output_dropout=0.2, word_dropout=0.1)
    tokens = torch.randint(0, model.vocab_size, (64, 100), generator=torch.Generator().manual_seed(3))
    lengths = torch.randint(1, 101, (64,), generator=torch.Generator().manual_seed(4))
    ref_logits, ref_grads, _ = _run(model, "torch", tokens, lengths)
    logits, grads, _ = _run(model, "fused", tokens, lengths)
    _assert_close(ref_logits, logits, "training logits")
    for name in ref_grads:
        _assert_close(ref_grads[name], grads[name], f"gradient of {name}", rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
def test_saturated_gates_stay_finite_and_exact(cell):
    # Pre-activations far outside exp's range: the kernel's clamped exp must saturate, not overflow.
    gates = CELL_TABLE[cell].gates
    torch.manual_seed(5)
    # PyTorch's layer with W_ih = I, so that its input projection is the input itself
    ref = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](gates * 8, 8)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.eye(gates * 8))
        ref.bias_ih_l0.zero_()
        ref.weight_hh_l0.mul_(30)
    x = torch.randn(40, 6, gates * 8) * 200
    lengths = torch.tensor([40, 1, 17, 40, 2, 39])
    x_f = x.clone().requires_grad_()
    last = fused.last_state(cell, x_f, ref.weight_hh_l0, ref.bias_hh_l0, lengths)
    last.sum().backward()
    w_grad = ref.weight_hh_l0.grad.clone()
    assert torch.isfinite(last).all() and torch.isfinite(x_f.grad).all() and torch.isfinite(w_grad).all()
    ref.zero_grad()
    x_r = x.clone().requires_grad_()
    out, _ = ref(x_r)
    expected = out[lengths - 1, torch.arange(6)]
    expected.sum().backward()
    assert (last.detach() - expected.detach()).abs().max() < 1e-5
    assert (x_f.grad - x_r.grad).abs().max() < 1e-4
    assert (w_grad - ref.weight_hh_l0.grad).abs().max() < 1e-3 * max(1.0, ref.weight_hh_l0.grad.abs().max().item())


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
def test_results_are_bit_identical_for_any_thread_count(cell):
    # The kernel cuts the batch into fixed chunks whatever the thread count and adds the chunks' dW_hh in
    # chunk order; MKL runs with MKL_CBWR (set by a Trainer, and by conftest here). So 1, 2, 3 or 4 threads give the
    # same
    # bits: forward, every gradient, eval. Shapes: several chunks (100 rows: four 32-row chunks, so that 3
    # and 4 threads share them; 37 rows with embedding dropout, i.e. the per-token projection) and a batch
    # below one chunk (5 rows, MKL then runs inside the caller's thread).
    cases = [(100, 60, {}), (37, 50, {"embed_dropout": 0.3}), (5, 9, {})]
    threads = torch.get_num_threads()
    try:
        for batch, steps, kwargs in cases:
            model = _model(cell, **kwargs)
            g = torch.Generator().manual_seed(6)
            tokens = torch.randint(0, 5000, (batch, steps), generator=g)
            lengths = torch.randint(1, steps + 1, (batch,), generator=g)
            results = {}
            for n in (1, 2, 3, 4):
                torch.set_num_threads(n)
                results[n] = _run(model, "fused", tokens, lengths)
            for n in (2, 3, 4):
                what = f"{cell}, batch {batch}, {n} threads vs 1"
                assert torch.equal(results[1][0], results[n][0]), f"training logits differ: {what}"
                assert torch.equal(results[1][2], results[n][2]), f"eval logits differ: {what}"
                for name in results[1][1]:
                    assert torch.equal(results[1][1][name], results[n][1][name]), f"gradient of {name} differs: {what}"
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_single_step_and_single_sequence():
    model = _model("lstm")
    for shape in [(1, 1), (1, 7), (5, 1)]:
        tokens = torch.randint(3, 5000, shape, generator=torch.Generator().manual_seed(7))
        ref = _run(model, "torch", tokens, None)
        got = _run(model, "fused", tokens, None)
        _assert_close(ref[0], got[0], f"logits {shape}")
        _assert_close(ref[1]["rnn.weight_hh_l0"], got[1]["rnn.weight_hh_l0"], f"dW_hh {shape}", rtol=1e-4)


@needs_kernel
def test_bad_lengths_are_refused_with_a_message():
    x = torch.zeros(5, 2, 3 * 4)
    w, b = torch.zeros(12, 4), torch.zeros(12)
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, T\]"):
        fused.last_state("gru", x, w, b, torch.tensor([0, 5]))
    with pytest.raises(RuntimeError, match="weight shapes do not match"):
        fused.last_state("gru", x, torch.zeros(8, 4), b, torch.tensor([1, 5]))


def test_impl_is_validated_and_not_part_of_the_config():
    with pytest.raises(ValueError, match="unknown impl 'cuda'.*auto, fused, torch"):
        SentimentRNN("gru", impl="cuda")
    model = SentimentRNN("gru", impl="torch")
    assert "impl" not in model.config()
    assert not _uses_fused(model, torch.zeros(2, 3, dtype=torch.long))


def test_unavailable_kernel_falls_back_or_says_why(monkeypatch):
    monkeypatch.setattr(fused, "_loaded", False)
    monkeypatch.setattr(fused, "_error", "RuntimeError: no compiler here")
    tokens = torch.randint(0, 5000, (4, 9), generator=torch.Generator().manual_seed(8))
    model = _model("gru")
    assert not _uses_fused(model, tokens)  # auto: PyTorch's layers
    model.eval()
    with torch.no_grad():
        model(tokens)
    model.impl = "fused"
    with pytest.raises(RuntimeError, match="impl='fused' cannot run here: .*no compiler here.*pip install ninja"):
        model(tokens)
    assert "no compiler here" in fused.status()


def test_fused_is_cpu_float32_only():
    model = _model("rnn").double()
    tokens = torch.zeros(2, 3, dtype=torch.long)
    assert not _uses_fused(model, tokens)
    model.impl = "fused"
    with pytest.raises(RuntimeError, match="weights or input are torch.float64"):
        _uses_fused(model, tokens)


@needs_kernel
def test_cpu_autocast_runs_the_kernel_in_float32():
    # Under CPU autocast the recurrent layer runs the kernel in float32, every projection included: the features
    # are those of a float32 call, bit for bit.
    model = _model("gru").eval()
    tokens = torch.randint(1, 5000, (8, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = model.features(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _uses_fused(model, tokens)
            autocast = model.features(tokens)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(fused, "_loaded", None)
    monkeypatch.setenv("RNNSENT_FUSED", "0")
    assert not fused.available()
    assert "RNNSENT_FUSED=0" in fused.status()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retain_freed_memory_on_glibc():
    assert retain_freed_memory() is True


@needs_kernel
def test_hooks_on_the_embedding_still_fire():
    # The vocabulary-table shortcut skips the embedding module; a hook on it must turn the shortcut off.
    model = _model("gru")
    tokens = torch.randint(0, 5000, (64, 100), generator=torch.Generator().manual_seed(9))
    ref = _run(model, "torch", tokens, None)
    seen = []
    model.embedding.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    got = _run(model, "fused", tokens, None)
    assert seen == [(64, 100, 32), (64, 100, 32)]  # training and eval forward
    _assert_close(ref[0], got[0], "logits")


def test_a_dead_builds_lock_is_cleared_but_a_live_one_is_kept(tmp_path):
    # PyTorch's builder waits forever for another build's lock file: one left by a killed build must go.
    lock = tmp_path / "lock"
    lock.write_text("")
    assert not fused.clear_stale_lock(tmp_path) and lock.exists()  # fresh: a build may be running
    old = time.time() - fused.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    assert fused.clear_stale_lock(tmp_path) and not lock.exists()
    assert not fused.clear_stale_lock(tmp_path)  # nothing there: nothing to do


def test_build_directory_follows_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    d = fused.build_directory("rnnsent_cpu_x")
    assert d.parent.parent == tmp_path and d.name == "rnnsent_cpu_x" and torch.__version__ in d.parent.name


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")
def test_first_build_after_a_killed_build_does_not_hang(tmp_path):
    # A fresh extensions folder holding only the lock of a build that died long ago: the next run builds.
    code = ("import os, sys, time; from rnnsent.model import fused\n"
            "d = fused.build_directory(fused._build_name()); d.mkdir(parents=True)\n"
            "(d / 'lock').write_text(''); old = time.time() - 3600; os.utime(d / 'lock', (old, old))\n"
            "sys.exit(0 if fused.available() else fused.status())")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A first build says so, once, with where it goes (a 15-20 s silence looks like a hang).
    assert proc.stderr.count("rnnsent: compiling the fused CPU kernel (once per machine") == 1, proc.stderr
    assert str(tmp_path) in proc.stderr


def test_needs_build_says_whether_a_compile_is_coming(monkeypatch, tmp_path):
    monkeypatch.setattr(fused, "_loaded", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert fused.needs_build()  # an empty extensions folder: the first run compiles
    name = fused._build_name()
    fused.build_directory(name).mkdir(parents=True)
    (fused.build_directory(name) / f"{name}.so").write_bytes(b"")
    assert not fused.needs_build()
    monkeypatch.setattr(fused, "_loaded", True)  # already loaded in this process: nothing to say
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "elsewhere"))
    assert not fused.needs_build()


@needs_kernel
def test_torch_compile_runs_the_kernel_between_graphs():
    # The kernel is an operator with fake implementations: Dynamo keeps it in the graph as one node.
    model = _model("gru")
    tokens = torch.randint(0, 5000, (64, 80), generator=torch.Generator().manual_seed(10))
    ref = _run(model, "torch", tokens, None)
    model.impl = "fused"
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    logits = torch.compile(model, backend="eager")(tokens, None)
    (torch.sigmoid(logits) * torch.linspace(-1, 1, logits.numel())).sum().backward()
    _assert_close(ref[0], logits.detach(), "compiled logits")
    _assert_close(ref[1]["rnn.weight_hh_l0"], model.rnn.weight_hh_l0.grad, "compiled dW_hh", rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
def test_second_derivatives_match_pytorchs_layers(cell):
    # create_graph=True (a gradient penalty, Hessian-vector products): the kernel's backward is first-order, so
    # it runs through the same recurrence in PyTorch's ops, with the graph to the input projection.
    model = _stack(cell, 2, True, embed_dropout=0.2)  # the per-token projection, every layer and direction
    tokens = torch.randint(0, 300, (6, 12), generator=torch.Generator().manual_seed(11))
    lengths = torch.tensor([12, 3, 7, 1, 12, 5])
    results = {}
    for impl in ("torch", "fused"):
        model.impl = impl
        torch.manual_seed(2)
        (g,) = torch.autograd.grad(model(tokens, lengths).sum(), model.rnn.weight_hh_l0, create_graph=True)
        results[impl] = torch.autograd.grad(g.pow(2).sum(), list(model.parameters()), allow_unused=True)
    for (name, _), ref, got in zip(model.named_parameters(), results["torch"], results["fused"]):
        assert (ref is None) == (got is None), name
        if ref is not None:
            _assert_close(ref, got, f"second derivative for {name}", rtol=1e-4)


# ----------------------------------------------------------------------------- stacked and bidirectional layers

STACKS = [(1, True), (2, False), (2, True), (3, True)]  # (num_layers, bidirectional)


def _stack(cell, layers, bidirectional, **kwargs) -> SentimentRNN:
    torch.manual_seed(0)
    model = SentimentRNN(cell, vocab_size=300, embed_dim=16, hidden_size=12, num_layers=layers,
                         bidirectional=bidirectional, init="torch", **kwargs)
    with torch.no_grad():  # non-zero recurrent biases in every layer and direction
        for name, b in model.rnn.named_buffers():
            b.uniform_(-0.3, 0.3)
        for name, p in model.rnn.named_parameters():
            if name.startswith("bias_hh"):
                p.uniform_(-0.3, 0.3)
    return model


def _grads_of(model, impl, tokens, lengths, sequence):
    model.impl = impl
    model.zero_grad(set_to_none=True)
    out = model.sequence(tokens, lengths) if sequence else model(tokens, lengths)
    (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, bidirectional", STACKS)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("sequence", [False, True])
def test_stacked_and_bidirectional_match_pytorch_layers(cell, layers, bidirectional, with_lengths, sequence):
    model = _stack(cell, layers, bidirectional)
    assert _uses_fused(model, torch.zeros(1, 1, dtype=torch.long))
    for shape in [(8, 30), (40, 50)]:  # below and above the vocabulary-table threshold
        g = torch.Generator().manual_seed(2)
        tokens = torch.randint(0, 300, shape, generator=g)
        lengths = torch.randint(1, shape[1] + 1, (shape[0],), generator=g) if with_lengths else None
        ref, ref_grads = _grads_of(model, "torch", tokens, lengths, sequence)
        got, grads = _grads_of(model, "fused", tokens, lengths, sequence)
        _assert_close(ref, got, f"outputs {shape}")
        assert grads.keys() == ref_grads.keys()
        assert len(grads) == len(list(model.parameters())) - (2 if sequence else 0)  # sequence(): no head
        for name in ref_grads:
            _assert_close(ref_grads[name], grads[name], f"gradient of {name} {shape}", rtol=1e-4)


@needs_kernel
def test_stacked_bidirectional_with_every_dropout_matches_in_eval_and_trains():
    model = _stack("lstm", 2, True, embed_dropout=0.3, layer_dropout=0.5)
    tokens = torch.randint(0, 300, (32, 40), generator=torch.Generator().manual_seed(3))
    lengths = torch.randint(1, 41, (32,), generator=torch.Generator().manual_seed(4))
    model.eval()
    with torch.no_grad():
        _assert_close(model(tokens, lengths), SentimentRNN(**model.config(), impl="torch").eval().requires_grad_(False)
                      .load_state_dict(model.state_dict()) and model(tokens, lengths), "eval logits")
        model.impl = "torch"
        stock = model(tokens, lengths)
        model.impl = "fused"
        _assert_close(stock, model(tokens, lengths), "eval logits, fused against stock")
    model.train()
    torch.manual_seed(1)
    a = model(tokens, lengths)
    a.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.dim() == 2)
    torch.manual_seed(1)
    assert torch.equal(a, model(tokens, lengths))  # the same masks for the same seed
    torch.manual_seed(2)
    assert not torch.equal(a, model(tokens, lengths))  # dropout between the layers acts in training


@needs_kernel
def test_stacked_bidirectional_is_bit_identical_for_any_thread_count():
    model = _stack("gru", 2, True)
    tokens = torch.randint(0, 300, (96, 40), generator=torch.Generator().manual_seed(5))
    lengths = torch.randint(1, 41, (96,), generator=torch.Generator().manual_seed(6))
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_grads_of(model, "fused", tokens, lengths, sequence=True))
    finally:
        torch.set_num_threads(previous)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(grads[k], results[0][1][k]) for k in grads)


# ----------------------------------------------------------------------------- PyTorch's tools on every model


def _tool_model(**kwargs):
    return _stack("gru", 2, True, **kwargs)


@needs_kernel
@pytest.mark.parametrize("allow_rnn", [False, True])
def test_torch_compile_makes_one_graph_around_the_operator(allow_rnn):
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = _tool_model()
    tokens = torch.randint(0, 300, (40, 30), generator=torch.Generator().manual_seed(7))
    lengths = torch.randint(1, 31, (40,), generator=torch.Generator().manual_seed(8))
    ref, ref_grads = _grads_of(model, "torch", tokens, lengths, sequence=False)
    model.impl = "fused"
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    counters.clear()
    # The recurrent layer is rnnsent.nn's, not a torch.nn.GRU (where Dynamo breaks its graph unless allow_rnn):
    # the operator sits inside one graph either way.
    with torch._dynamo.config.patch(allow_rnn=allow_rnn):
        out = torch.compile(model, backend="aot_eager")(tokens, lengths)
    (out * torch.linspace(-1, 1, out.numel())).sum().backward()
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    _assert_close(ref, out.detach(), "compiled logits")
    for name, p in model.named_parameters():
        _assert_close(ref_grads[name], p.grad, f"compiled gradient of {name}", rtol=1e-4)


@needs_kernel
def test_torch_compile_makes_the_one_graph_models_md_says():
    import torch._dynamo

    model = _tool_model()
    model.impl = "fused"
    tokens = torch.randint(0, 300, (40, 30), generator=torch.Generator().manual_seed(7))
    lengths = torch.randint(1, 31, (40,), generator=torch.Generator().manual_seed(8))
    torch._dynamo.reset()
    found = torch._dynamo.explain(model)(tokens, lengths)
    page = (Path(__file__).resolve().parent.parent / "docs" / "models.md").read_text(encoding="utf-8")
    assert "**one graph**" in page, "docs/models.md no longer says how many graphs torch.compile makes"
    assert (found.graph_count, found.graph_break_count) == (1, 0)


@needs_kernel
def test_torch_func_grad_differentiates_the_operator():
    from torch.func import functional_call, grad

    model = _tool_model()
    model.impl = "fused"
    tokens = torch.randint(0, 300, (16, 20), generator=torch.Generator().manual_seed(9))
    lengths = torch.randint(1, 21, (16,), generator=torch.Generator().manual_seed(10))
    params = {k: v.detach() for k, v in model.named_parameters()}
    weights = torch.linspace(-1, 1, 16)
    got = grad(lambda p: (functional_call(model, p, (tokens, lengths)) * weights).sum())(params)
    _, ref = _grads_of(model, "torch", tokens, lengths, sequence=False)  # the same weighted sum
    for name in ref:
        _assert_close(ref[name], got[name], f"torch.func.grad of {name}", rtol=1e-4)


@needs_kernel
def test_forward_hooks_on_the_recurrent_layer_fire_and_captum_reads_them():
    captum = pytest.importorskip("captum.attr")
    model = _tool_model().eval()
    tokens = torch.randint(1, 300, (4, 12), generator=torch.Generator().manual_seed(11))
    seen = []
    handle = model.rnn.register_forward_hook(lambda module, args, out: seen.append(out[0].shape))
    with torch.no_grad():
        hooked = model(tokens)
    handle.remove()
    assert seen == [(4, 12, 24)]  # the layer was called as a module, so its hook saw its outputs
    with torch.no_grad():
        torch.testing.assert_close(hooked, model(tokens))  # the table shortcut, without hooks: the same result
    activation = captum.LayerActivation(model, model.rnn).attribute(tokens)
    seq = activation[0] if isinstance(activation, tuple) else activation
    torch.testing.assert_close(seq.detach(), model.sequence(tokens).detach(), rtol=0, atol=1e-5)
    handle = model.rnn.register_forward_hook(lambda module, args, out: seen.append(out[0].shape))
    try:  # impl="fused" with a hook: the layer, called as a module, runs the kernel itself
        model.impl = "fused"
        with torch.no_grad():
            torch.testing.assert_close(model(tokens), hooked)
    finally:
        handle.remove()
    assert seen == [(4, 12, 24)] * 2


@needs_kernel
def test_jit_trace_records_pytorchs_layers_and_saves(tmp_path):
    model = _tool_model().eval()
    tokens = torch.randint(1, 300, (4, 12), generator=torch.Generator().manual_seed(12))
    traced = torch.jit.trace(model, (tokens,))
    torch.jit.save(traced, tmp_path / "traced.pt")
    loaded = torch.jit.load(tmp_path / "traced.pt")
    other = torch.randint(1, 300, (3, 9), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        torch.testing.assert_close(loaded(other), model(other), rtol=0, atol=1e-5)


def test_jit_script_stops_with_a_message_naming_the_alternatives():
    with pytest.raises(RuntimeError, match="torch.jit.trace.*impl=\"torch\""):
        torch.jit.script(_tool_model())


@needs_kernel
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dynamo):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    model = _tool_model().eval()
    tokens = torch.randint(1, 300, (4, 12), generator=torch.Generator().manual_seed(14))
    torch.onnx.export(model, (tokens,), tmp_path / "m.onnx", dynamo=dynamo, input_names=["tokens"])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (got,) = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})
    with torch.no_grad():
        np_ref = model(tokens).numpy()
    assert abs(got - np_ref).max() <= 1e-5


@needs_kernel
def test_torch_export_records_pytorchs_layers():
    model = _tool_model().eval()
    tokens = torch.randint(1, 300, (4, 12), generator=torch.Generator().manual_seed(15))
    program = torch.export.export(model, (tokens,))
    assert "rnnsent_cpu" not in str(program.graph)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(tokens), model(tokens), rtol=0, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("swapped", [
    lambda: torch.nn.GRU(16, 12, num_layers=2, bidirectional=True, batch_first=True),
    lambda: torch.nn.GRU(16, 12, batch_first=False),
    lambda: torch.nn.LSTM(16, 12, batch_first=True),
    lambda: rnnsent.nn.GRU(16, 12, num_layers=2, bidirectional=True, batch_first=True),
    lambda: rnnsent.nn.GRU(16, 12, batch_first=False),
])
def test_a_user_swapped_recurrent_layer_is_never_run_wrong(swapped):
    torch.manual_seed(0)
    model = SentimentRNN("gru", vocab_size=300, embed_dim=16, hidden_size=12).eval()
    model.rnn = swapped()
    tokens = torch.randint(1, 300, (5, 9), generator=torch.Generator().manual_seed(16))
    x = model.embedding(tokens)
    with torch.no_grad():
        if model.rnn.batch_first:
            out, _ = model.rnn(x)  # (B, T, H * dirs)
        else:
            out = model.rnn(x.transpose(0, 1))[0].transpose(0, 1)  # what this module computes on this input
        h = 12
        want = out[:, -1, :h]
        if model.rnn.bidirectional:
            want = torch.cat([want, out[:, 0, h:]], dim=-1)
        if not model.rnn.batch_first:  # a time-major layer fed batch-major input: whatever PyTorch's layer does
            want = model.rnn(x)[0][:, -1]
        torch.testing.assert_close(model.features(tokens), want, rtol=0, atol=1e-6)
    # torch.nn's layers are called as modules; rnnsent.nn's run the kernel, called as modules when not batch_first
    assert recurrent.uses_fused("auto", tokens, torch.float32, model.rnn) == isinstance(model.rnn, rnnsent.nn.RNNBase)


def test_load_checkpoint_takes_impl(tmp_path):
    import rnnsent

    assert rnnsent.load_checkpoint("gru", impl="torch").model.impl == "torch"
    assert rnnsent.load_checkpoint("gru").model.impl == "auto"
    with pytest.raises(ValueError, match="unknown impl 'cuda'"):
        rnnsent.load_checkpoint("gru", impl="cuda")


@needs_kernel
def test_inference_reuses_the_projected_vocabulary_only_while_the_weights_are_unchanged():
    model = _model("gru", vocab_size=50).eval()
    tokens = torch.randint(1, 50, (8, 12))  # 96 tokens >= 50 words: the projected-table path
    lengths = torch.tensor([12, 3, 7, 12, 1, 5, 9, 2])
    assert _uses_fused(model, tokens)

    def reference():  # with gradients the table is projected anew every call
        with torch.enable_grad():
            return model(tokens, lengths).detach()

    with torch.no_grad():
        first = model(tokens, lengths)
        assert torch.equal(model(tokens, lengths), first) and torch.equal(first, reference())
        model.rnn.weight_ih_l0.mul_(0.5)  # in place: the cached table is stale now
        model.embedding.weight[7].add_(1.0)
        changed = model(tokens, lengths)
    assert not torch.equal(changed, first)
    assert torch.equal(changed, reference())
    model.load_state_dict(_model("gru", vocab_size=50).state_dict())  # new tensors' values, the same objects
    with torch.no_grad():
        assert torch.equal(model(tokens, lengths), first)
