"""rnnsent.nn's LSTM, GRU and RNN against torch.nn's own layers: the same interface, outputs and gradients, PyTorch's
tools on them, what falls back to PyTorch's implementation, replace()."""
from __future__ import annotations

import copy
import logging
import random

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnsent.nn as rnn
from rnnsent.model import fused
from rnnsent.model.sentiment import SentimentRNN

needs_kernel = pytest.mark.skipif(not fused.available(), reason=f"fused kernel unavailable: {fused.status()}")
KINDS = {  # name -> (torch.nn's layer, rnnsent.nn's, extra arguments)
    "lstm": (torch.nn.LSTM, rnn.LSTM, {}),
    "gru": (torch.nn.GRU, rnn.GRU, {}),
    "rnn": (torch.nn.RNN, rnn.RNN, {}),
    "relu": (torch.nn.RNN, rnn.RNN, {"nonlinearity": "relu"}),
}


def _pair(kind: str, *args, seed: int = 0, impl: str = "fused", **kwargs):
    """torch.nn's layer and rnnsent.nn's with the same weights; by default the kernel, whatever impl="auto" picks."""
    torch_cls, cls, extra = KINDS[kind]
    torch.manual_seed(seed)
    ref = torch_cls(*args, **extra, **kwargs)
    layer = cls(*args, **extra, **kwargs, impl=impl)
    layer.load_state_dict(ref.state_dict())
    return ref, layer


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """|a - b| within rtol of a's largest magnitude (float32)."""
    scale = a.abs().max().clamp(min=1e-6) if a.numel() else torch.tensor(1.0)
    diff = (a - b).abs().max() if a.numel() else torch.tensor(0.0)
    assert a.shape == b.shape and diff <= rtol * scale, f"{what}: max |diff| {diff:.3g} vs scale {scale:.3g}"


def _states(st):
    return st if isinstance(st, tuple) else (st,)


def _run(layer, x, hx=None, lengths=None, batch_first=False):
    """Outputs, final states and the gradients of a random weighting of both, with respect to the input, every
    parameter and the initial states."""
    x = x.clone().requires_grad_()
    hx = None if hx is None else tuple(t.clone().requires_grad_() for t in _states(hx))
    given = None if hx is None else (hx if len(hx) == 2 else hx[0])
    inp = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, state = layer(inp, given)
    o = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=g)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=g)).sum() for s in _states(state))
    wrt = [x, *layer.parameters(), *(hx or ())]
    return [o.detach(), *(s.detach() for s in _states(state)), *torch.autograd.grad(loss, wrt)], out


def _case(seed: int):
    """A random layer and input: cell, layers, directions, batch_first, sizes, packed or padded, initial states."""
    r = random.Random(seed)
    kind = list(KINDS)[seed % 4]
    layers, bidirectional, batch_first = r.choice([1, 2, 3]), r.random() < 0.5, r.random() < 0.5
    batch, steps, inputs, hidden = r.randint(1, 70), r.randint(1, 40), r.randint(1, 20), r.randint(1, 33)
    ref, layer = _pair(kind, inputs, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                       seed=seed)
    torch.manual_seed(seed)
    x = torch.randn((batch, steps, inputs) if batch_first else (steps, batch, inputs))
    lengths = torch.randint(1, steps + 1, (batch,)) if r.random() < 0.5 else None
    n = layers * (2 if bidirectional else 1)
    hx = None
    if r.random() < 0.5:
        hx = (torch.randn(n, batch, hidden), torch.randn(n, batch, hidden)) if kind == "lstm" else torch.randn(
            n, batch, hidden)
    return ref, layer, x, hx, lengths, batch_first


@needs_kernel
@pytest.mark.parametrize("seed", range(24))
def test_outputs_and_every_gradient_match_torch_nn(seed):
    ref, layer, x, hx, lengths, batch_first = _case(seed)
    want, ref_out = _run(ref, x, hx, lengths, batch_first)
    got, out = _run(layer, x, hx, lengths, batch_first)
    assert type(out) is type(ref_out)
    if lengths is not None:  # the same packed layout
        assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
        assert torch.equal(out.sorted_indices, ref_out.sorted_indices)
    names = ["output", "h_n", *(["c_n"] if isinstance(ref, torch.nn.LSTM) else []), "dx",
             *(f"d{n}" for n, _ in ref.named_parameters()), *(["dh0", "dc0"] if hx is not None else [])]
    assert len(want) == len(got)
    for name, a, b in zip(names, want, got):
        _close(a, b, f"case {seed}: {name}")


@needs_kernel
@pytest.mark.parametrize("kind", list(KINDS))
def test_unbatched_input_and_states(kind):
    ref, layer = _pair(kind, 5, 7, num_layers=2, bidirectional=True)
    x = torch.randn(9, 5)
    h = torch.randn(4, 7)
    hx = (h, torch.randn(4, 7)) if kind == "lstm" else h
    for states in (None, hx):
        want, _ = _run(ref, x, states)
        got, _ = _run(layer, x, states)
        for a, b in zip(want, got):
            _close(a, b, f"{kind} unbatched")


@needs_kernel
def test_bias_false_and_a_packed_sequence_sorted_by_its_maker():
    ref, layer = _pair("gru", 4, 6, num_layers=2, bias=False, bidirectional=True)
    assert not [n for n, _ in layer.named_parameters() if "bias" in n]
    x = torch.randn(10, 5, 4)
    packed = pack_padded_sequence(x, torch.tensor([10, 8, 8, 3, 1]))  # enforce_sorted: no sorted_indices
    out_ref, h_ref = ref(packed)
    out, h = layer(packed)
    assert out.sorted_indices is None and torch.equal(out.batch_sizes, out_ref.batch_sizes)
    _close(out_ref.data, out.data, "packed output")
    _close(h_ref, h, "h_n")


@needs_kernel
@pytest.mark.parametrize("kind", list(KINDS))
def test_results_are_bit_identical_for_1_2_3_threads(kind):
    # 100 rows: four of the kernel's 32-row chunks, shared differently by 1, 2 and 3 threads.
    _, layer = _pair(kind, 6, 10, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(100, 30, 6)
    lengths = torch.randint(1, 31, (100,), generator=torch.Generator().manual_seed(0))
    hx = torch.randn(4, 100, 10)
    hx = (hx, torch.randn(4, 100, 10)) if kind == "lstm" else hx
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_run(layer, x, hx, lengths, batch_first=True)[0])
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dicts_load_both_ways(kind):
    torch_cls, cls, extra = KINDS[kind]
    ref = torch_cls(3, 4, num_layers=2, bidirectional=True, **extra)
    layer = cls(3, 4, num_layers=2, bidirectional=True, **extra)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == [(n, p.shape) for n, p in layer.named_parameters()]
    layer.load_state_dict(ref.state_dict())
    other = torch_cls(3, 4, num_layers=2, bidirectional=True, **extra)
    other.load_state_dict(layer.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), other.state_dict().values()))
    assert repr(layer).replace(cls.__name__, "X") == repr(ref).replace(torch_cls.__name__, "X")


def test_the_constructor_takes_torch_nns_arguments_and_refuses_as_it_does():
    assert rnn.RNN(3, 4, 2, "relu").nonlinearity == "relu"  # torch.nn.RNN's fourth positional argument
    assert rnn.LSTM(3, 4, proj_size=2).proj_size == 2
    for make, args, kwargs in [("GRU", (3, 4), {"proj_size": 2}), ("RNN", (3, 4), {"nonlinearity": "gelu"}),
                               ("LSTM", (3, 4), {"dropout": 1.5}), ("GRU", (3, 0), {}),
                               ("LSTM", (3, 4), {"proj_size": 4}), ("GRU", (3, 4), {"bias": 1})]:
        with pytest.raises(Exception) as theirs:
            getattr(torch.nn, make)(*args, **kwargs)
        with pytest.raises(type(theirs.value)) as ours:
            getattr(rnn, make)(*args, **kwargs)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="unknown impl 'gpu': choose one of auto, fused, torch"):
        rnn.GRU(3, 4, impl="gpu")


def _bad_calls():
    """(kind, batch_first, input, hx) that torch.nn refuses."""
    x = torch.randn(5, 2, 3)
    return [
        ("gru", False, torch.randn(2, 5, 2, 3), None),  # 4-D input
        ("gru", False, torch.randn(5, 2, 4), None),  # input size 4, not 3
        ("gru", False, x, torch.randn(2, 2, 6)),  # hidden size
        ("gru", False, x, torch.randn(2, 6)),  # 2-D states for batched input
        ("rnn", False, torch.randn(5, 3), torch.randn(1, 2, 6)),  # 3-D states for unbatched input
        ("rnn", False, torch.randn(5, 3), torch.randn(2, 3)),  # unbatched states of the wrong size
        ("lstm", False, x, (torch.randn(1, 2, 6), torch.randn(2, 6))),  # c0 2-D
        ("lstm", False, x, (torch.randn(1, 2, 6), torch.randn(1, 2, 5))),  # c0 of another size
        ("lstm", True, x, (torch.randn(1, 3, 6), torch.randn(1, 3, 6))),  # states for 2 rows, batch_first 5
        ("gru", False, x.double(), None),  # float64 input, float32 weights
        ("gru", False, pack_padded_sequence(x, torch.tensor([5, 2])), torch.randn(1, 3, 6)),  # packed, 3 rows
    ]


@needs_kernel
@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_what_torch_nn_refuses_is_refused_the_same_way(case):
    kind, batch_first, x, hx = _bad_calls()[case]
    ref, layer = _pair(kind, 3, 6, batch_first=batch_first, impl="auto")
    with pytest.raises(Exception) as theirs:
        ref(x, hx)
    with pytest.raises(type(theirs.value)) as ours:
        layer(x, hx)
    assert str(ours.value) == str(theirs.value)


@needs_kernel
def test_a_workspace_beyond_the_machines_memory_is_refused_before_allocating():
    layer = rnn.GRU(1, 512, batch_first=True)
    x = torch.zeros(1, 1, 1).expand(100_000, 1_000_000, 1)  # a view: no memory behind it
    with pytest.raises(RuntimeError, match=r"rnnsent.nn.GRU: 1,000,000 steps of a batch of 100,000 at hidden_size "
                                           r"512 need at least .* GiB of working memory, more than this machine's"):
        layer(x)


# ----------------------------------------------------------------------------- where PyTorch's implementation runs


@pytest.fixture
def fallback_log(monkeypatch, caplog):
    monkeypatch.setattr(rnn, "_said", set())
    caplog.set_level(logging.INFO, logger="rnnsent.nn")
    return caplog


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rnnsent.nn"]


@pytest.mark.parametrize("setup, why", [
    (lambda: _pair("gru", 3, 5, batch_first=True, dtype=torch.float64, impl="auto"),
     "weights or input are torch.float64"),
    (lambda: _pair("lstm", 3, 5, batch_first=True, proj_size=2, impl="auto"), "proj_size is set"),
])
def test_what_the_kernel_does_not_serve_runs_pytorchs_layer_and_says_so_once(setup, why, fallback_log):
    ref, layer = setup()
    x = torch.randn(4, 6, 3, dtype=ref.weight_ih_l0.dtype)
    for _ in range(2):
        want, _ = _run(ref, x, batch_first=True)
        got, _ = _run(layer, x, batch_first=True)
        assert all(torch.equal(a, b) for a, b in zip(want, got))  # PyTorch's implementation itself
    (line,) = _said(fallback_log)
    assert line.startswith(f"rnnsent.nn.{type(layer).__name__}: PyTorch's implementation runs: {why}")
    layer.impl = "fused"
    with pytest.raises(RuntimeError, match=f"impl='fused' cannot run here: {why}.*Use impl='auto' or 'torch'"):
        layer(x)


def test_another_device_runs_pytorchs_layer_and_says_so(fallback_log):
    # The meta device stands in for CUDA here: any device but the CPU takes the same way.
    ref = torch.nn.GRU(3, 5, num_layers=2, bidirectional=True, device="meta")
    layer = rnn.GRU(3, 5, num_layers=2, bidirectional=True, device="meta")
    x = torch.randn(7, 4, 3, device="meta")
    out, h = layer(x)
    want_out, want_h = ref(x)
    assert (out.shape, h.shape, out.device.type) == (want_out.shape, want_h.shape, "meta")
    (line,) = _said(fallback_log)
    assert line == "rnnsent.nn.GRU: PyTorch's implementation runs: the input is on meta (the kernel is the CPU's)"


@needs_kernel
@pytest.mark.parametrize("allow_rnn", [False, True])
def test_inside_torch_compile_pytorchs_implementation_breaks_the_graph_as_torch_nn_does(allow_rnn):
    import torch._dynamo
    from torch._dynamo.utils import counters

    ref, layer = _pair("gru", 3, 4, batch_first=True, dtype=torch.float64, impl="auto")  # not the kernel's dtype
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    counts = []
    for m in (ref, layer):
        torch._dynamo.reset()
        counters.clear()
        with torch._dynamo.config.patch(allow_rnn=allow_rnn):
            out = torch.compile(torch.nn.Sequential(torch.nn.Identity(), m), backend="aot_eager")(x)[0]
        assert torch.equal(out, ref(x)[0])
        counts.append((counters["stats"]["unique_graphs"], bool(counters["graph_break"])))
    assert counts[0] == counts[1] and counts[0][1] == (not allow_rnn)


def test_impl_torch_and_an_unbuildable_kernel_run_pytorchs_layer(monkeypatch, fallback_log):
    ref, layer = _pair("lstm", 3, 5, num_layers=2, bidirectional=True)
    layer.impl = "torch"
    x = torch.randn(7, 4, 3)
    assert all(torch.equal(a, b) for a, b in zip(_run(ref, x)[0], _run(layer, x)[0]))
    monkeypatch.setattr(fused, "_loaded", False)
    monkeypatch.setattr(fused, "_error", "RuntimeError: no compiler here")
    layer.impl = "auto"
    assert all(torch.equal(a, b) for a, b in zip(_run(ref, x)[0], _run(layer, x)[0]))
    assert _said(fallback_log) == []  # asked for, or said by rnnsent.model.fused already


@needs_kernel
def test_cpu_autocast_runs_the_kernel_in_float32_and_says_so(fallback_log):
    ref, layer = _pair("lstm", 3, 5, batch_first=True)
    x = torch.randn(4, 6, 3)
    with torch.no_grad():
        plain = layer(x)
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, (h, c) = layer(x)
    assert out.dtype == h.dtype == c.dtype == torch.float32
    assert torch.equal(out, plain[0]) and torch.equal(h, plain[1][0])
    (line,) = _said(fallback_log)
    assert "CPU autocast" in line and "float32" in line


@needs_kernel
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch without oneDNN")
def test_auto_runs_pytorchs_onednn_lstm_on_padded_input_and_the_kernel_elsewhere(monkeypatch, fallback_log):
    calls = []
    run = fused.run
    monkeypatch.setattr(fused, "run", lambda *a, **k: calls.append(1) or run(*a, **k))
    ref, layer = _pair("lstm", 3, 5, num_layers=2, batch_first=True, impl="auto")
    x = torch.randn(4, 6, 3)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(_run(ref, x, batch_first=True)[0],
                                                     _run(layer, x, batch_first=True)[0]))
    assert calls == []  # padded input: PyTorch's oneDNN LSTM
    (line,) = _said(fallback_log)
    assert "runs on oneDNN, faster" in line
    want, _ = _run(ref, x, lengths=torch.tensor([6, 2, 5, 1]), batch_first=True)
    got, _ = _run(layer, x, lengths=torch.tensor([6, 2, 5, 1]), batch_first=True)
    assert len(calls) == 2  # packed input (no oneDNN in PyTorch): the kernel, one call per layer
    for a, b in zip(want, got):
        _close(a, b, "packed LSTM")
    layer.impl, calls[:] = "fused", []
    _run(layer, x, batch_first=True)
    assert len(calls) == 2  # impl="fused": the kernel on padded input too


# ----------------------------------------------------------------------------- PyTorch's tools


@needs_kernel
@pytest.mark.parametrize("kind", list(KINDS))
def test_second_derivatives_match_torch_nn(kind):
    ref, layer = _pair(kind, 4, 5, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 6, 4)
    lengths = torch.tensor([6, 2, 4])
    results = []
    for m in (ref, layer):
        xi = x.clone().requires_grad_()
        out, _ = m(pack_padded_sequence(xi, lengths, batch_first=True, enforce_sorted=False))
        (g,) = torch.autograd.grad(out.data.pow(2).sum(), xi, create_graph=True)  # a gradient penalty
        results.append(torch.autograd.grad(g.pow(2).sum(), [xi, *m.parameters()]))
    for a, b in zip(*results):
        _close(a, b, f"{kind} second derivative", rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_hessian_and_jacfwd_match_torch_nn(kind):
    ref, layer = _pair(kind, 3, 4, bidirectional=True, impl="auto")
    x = torch.randn(4, 2, 3)

    def f(m):
        return lambda x: m(x)[0].pow(2).sum()

    with torch.backends.mkldnn.flags(enabled=False):  # PyTorch's oneDNN LSTM has no forward-mode derivative
        want = torch.func.hessian(f(ref))(x), torch.func.jacfwd(f(ref))(x)
    got = torch.func.hessian(f(layer))(x), torch.func.jacfwd(f(layer))(x)
    _close(want[0], got[0], "hessian", rtol=1e-4)
    _close(want[1], got[1], "jacfwd")


def _per_sample_check(model_loss, params, inputs, loop_loss):
    """torch.func.vmap(grad(...)) per-sample gradients against plain autograd, one sample at a time (within 1e-4:
    under torch.func the input projection's gradient is PyTorch's product, in the loop the kernel's own)."""
    from torch.func import grad, vmap

    batched = vmap(grad(model_loss), in_dims=(None, *[0] * len(inputs)))(params, *inputs)
    for i in range(inputs[0].size(0)):
        want = loop_loss(*[t[i] for t in inputs])
        for name, w in want.items():
            _close(w, batched[name][i], f"sample {i}, {name}", rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_vmap_of_grad_gives_per_sample_gradients(kind, impl):
    from torch.func import functional_call

    _, layer = _pair(kind, 3, 5, num_layers=2, bidirectional=True, batch_first=True)
    layer.impl = impl
    params = {k: v.detach() for k, v in layer.named_parameters()}
    xs, h0s = torch.randn(6, 7, 3), torch.randn(6, 4, 5)  # per sample: (T, E) unbatched input, (4, H) states
    hx = (lambda h: (h, torch.tanh(h))) if kind == "lstm" else (lambda h: h)

    def model_loss(p, x, h):
        out, state = functional_call(layer, p, (x, hx(h)))
        return out.pow(2).sum() + _states(state)[0].sum()

    def loop_loss(x, h):
        layer.zero_grad()
        out, state = layer(x, hx(h))
        (out.pow(2).sum() + _states(state)[0].sum()).backward()
        return {k: v.grad for k, v in layer.named_parameters()}

    _per_sample_check(model_loss, params, (xs, h0s), loop_loss)


@needs_kernel
@pytest.mark.parametrize("impl", ["auto", "torch"])
@pytest.mark.parametrize("cell, layers, bidirectional", [("gru", 1, False), ("lstm", 2, True), ("rnn", 1, True)])
def test_vmap_of_grad_gives_sentiment_rnns_per_sample_gradients_with_lengths(impl, cell, layers, bidirectional):
    from torch.func import functional_call

    torch.manual_seed(0)
    model = SentimentRNN(cell, vocab_size=60, embed_dim=6, hidden_size=5, num_layers=layers,
                         bidirectional=bidirectional, impl=impl)
    params = {k: v.detach() for k, v in model.named_parameters()}
    tokens = torch.randint(1, 60, (5, 9), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([9, 1, 4, 7, 2])
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])

    def model_loss(p, t, n, y):
        logit = functional_call(model, p, (t.unsqueeze(0), n.unsqueeze(0)))
        return torch.nn.functional.binary_cross_entropy_with_logits(logit, y.unsqueeze(0))

    def loop_loss(t, n, y):
        model.zero_grad()
        model_loss(dict(model.named_parameters()), t, n, y).backward()
        return {k: v.grad for k, v in model.named_parameters()}

    _per_sample_check(model_loss, params, (tokens, lengths, labels), loop_loss)


@needs_kernel
def test_torch_func_grad_and_functional_call_match_autograd():
    from torch.func import functional_call, grad

    ref, layer = _pair("gru", 3, 4, num_layers=2, batch_first=True)
    x = torch.randn(5, 6, 3)
    other = {k: v.detach() + 0.1 for k, v in layer.named_parameters()}  # weights swapped in for the call
    got = grad(lambda p: functional_call(layer, p, (x,))[0].pow(2).sum())(other)
    ref.load_state_dict(other)
    ref(x)[0].pow(2).sum().backward()
    for name, p in ref.named_parameters():
        _close(p.grad, got[name], f"torch.func.grad of {name}")


@needs_kernel
def test_torch_compile_makes_one_graph_with_and_without_allow_rnn():
    import torch._dynamo
    from torch._dynamo.utils import counters

    ref, layer = _pair("lstm", 4, 6, num_layers=2, bidirectional=True, batch_first=True, impl="auto")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), layer)  # inside torch.compile, auto runs the kernel
    x = torch.randn(8, 5, 4)
    want = model(x)[0]
    for allow_rnn in (False, True):
        torch._dynamo.reset()
        counters.clear()
        with torch._dynamo.config.patch(allow_rnn=allow_rnn):
            out = torch.compile(model, backend="aot_eager")(x)[0]
            out.sum().backward()
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], allow_rnn
        _close(want.detach(), out.detach(), "compiled output")
    torch._dynamo.reset()
    counters.clear()
    torch.compile(torch.nn.Sequential(torch.nn.Linear(4, 4), ref), backend="aot_eager")(x)
    assert counters["graph_break"]  # torch.nn's own layer: a break without allow_rnn


@needs_kernel
def test_jit_trace_records_pytorchs_layer(tmp_path):
    ref, layer = _pair("gru", 3, 4, num_layers=2, bidirectional=True, batch_first=True, impl="auto")
    x, other = torch.randn(2, 5, 3), torch.randn(3, 7, 3)
    traced = torch.jit.trace(layer, (x,))
    assert "aten::gru" in str(traced.graph) and "rnnsent_cpu" not in str(traced.graph)
    torch.jit.save(traced, tmp_path / "traced.pt")
    with torch.no_grad():
        assert torch.equal(torch.jit.load(tmp_path / "traced.pt")(other)[0], ref(other)[0])


@needs_kernel
def test_onnx_export_through_pytorchs_layer_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _, layer = _pair("lstm", 3, 4, batch_first=True, impl="auto")
    x = torch.randn(1, 5, 3)
    torch.onnx.export(layer, (x,), tmp_path / "m.onnx", dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - layer(x)[0].numpy()).max() <= 1e-5


@needs_kernel
def test_hooks_fire_on_the_kernel():
    _, layer = _pair("gru", 3, 4, batch_first=True)
    seen = []
    layer.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    layer.register_forward_hook(lambda m, args, out: seen.append(("forward", out[0].shape)))
    layer.register_full_backward_hook(lambda m, gin, gout: seen.append(("backward", gout[0].shape)))
    x = torch.randn(2, 5, 3, requires_grad=True)
    out, _ = layer(x)
    out.sum().backward()
    assert seen == [("forward", (2, 5, 4)), ("backward", (2, 5, 4))]
    layer._forward_pre_hooks.clear()
    _close(layer(2 * x)[0].detach(), out.detach(), "pre-hook doubled the input")


def test_deepcopy_keeps_the_layer_and_its_impl():
    layer = rnn.LSTM(3, 4, impl="torch")
    twin = copy.deepcopy(layer)
    assert type(twin) is rnn.LSTM and twin.impl == "torch"
    assert all(torch.equal(a, b) for a, b in zip(layer.parameters(), twin.parameters()))


# ----------------------------------------------------------------------------- replace()


class _Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(3, 4))
        self.blocks = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(4, 5, batch_first=True, bidirectional=True),
                                           "rnn": torch.nn.RNN(10, 5, nonlinearity="relu", num_layers=2)})
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x):
        seq, _ = self.blocks["lstm"](self.encoder(x))  # (B, T, 10)
        out, _ = self.blocks["rnn"](seq.transpose(0, 1))  # (T, B, 5)
        return self.head(out)


class _OwnGRU(torch.nn.GRU):  # a subclass may have its own forward: left alone
    pass


@needs_kernel
def test_replace_swaps_every_torch_layer_keeping_its_parameters():
    torch.manual_seed(0)
    model = _Tagger()
    model.own = _OwnGRU(2, 2)
    x = torch.randn(4, 6, 3)
    want = model(x)
    before = dict(model.named_parameters())
    seen = []
    model.blocks["lstm"].register_forward_hook(lambda *a: seen.append(1))
    model.eval()
    assert rnn.replace(model) is model
    assert type(model.blocks["lstm"]) is rnn.LSTM and type(model.blocks["rnn"]) is rnn.RNN
    assert model.blocks["rnn"].nonlinearity == "relu" and type(model.own) is _OwnGRU
    assert not model.blocks["lstm"].training
    assert all(p is before[n] for n, p in model.named_parameters())  # the same tensors: the optimizer still holds them
    got = model(x)
    _close(want.detach(), got.detach(), "replaced model's output")
    assert seen == [1]  # the hook came along
    single = torch.nn.GRU(3, 4)
    assert type(rnn.replace(single)) is rnn.GRU


def test_replace_after_a_step_trains_the_same_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.GRU(3, 4, batch_first=True))
    weight = model[0].weight_hh_l0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    rnn.replace(model)
    start = weight.detach().clone()
    model(torch.randn(2, 5, 3))[0].sum().backward()
    optimizer.step()
    assert model[0].weight_hh_l0 is weight and not torch.equal(weight.detach(), start)


@needs_kernel
@pytest.mark.parametrize("packed", [False, True])
def test_bench_layers_reports_a_ratio_per_point(tmp_path, packed):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "tools" / "bench_layers.py"
    out = tmp_path / "bench.json"
    args = ["--cells", "gru", "lstm", "--batch", "3", "--hidden", "8", "--lengths", "5", "--threads", "1",
            "--iters", "1", "--warmup", "0", "--json", str(out)] + (["--packed"] if packed else [])
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["cell"], r["packed"]) for r in rows] == [("gru", packed), ("lstm", packed)]  # in the order asked
    assert all(r[f"{k}_ratio"] > 0 and r[f"{k}_torch_seq_s"] > 0 for r in rows for k in ("fwd", "fwd_bwd"))
    assert "| lstm | 1 | 5 | 3 | " in proc.stdout and "| gru | 1 | 5 | 3 | " in proc.stdout
