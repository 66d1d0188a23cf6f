"""rnnsent.nn: LSTM, GRU and RNN with torch.nn's interface, on rnnsent's fused CPU kernel (docs/nn.md).

    import rnnsent.nn as rnn
    layer = rnn.GRU(300, 256, num_layers=2, batch_first=True, bidirectional=True, dropout=0.1)
    out, h_n = layer(x)            # x: (B, T, 300) or a PackedSequence, exactly as torch.nn.GRU
    rnn.replace(model)             # every torch.nn.LSTM / GRU / RNN inside a model, the same parameters

Each class takes torch.nn's arguments, holds the same parameters under the same names (state dicts load both
ways), checks its input as torch.nn does and returns the same outputs. On the CPU in float32 a call runs the
fused kernel (rnnsent/model/fused.py) once per layer and direction. Where the kernel cannot serve a call (CUDA,
another dtype, proj_size, torch.jit.trace / ONNX / torch.export recording, forward-mode or nested derivatives,
no C++ compiler), or is slower (an LSTM's padded input, which PyTorch runs on oneDNN), the layer runs PyTorch's
own implementation on the same parameters and says why once per process (logger "rnnsent.nn", INFO); under
torch.func transforms, which PyTorch's layer does not support, the same recurrence step by step in PyTorch's ops.
impl="torch" always runs PyTorch's; impl="fused" insists on the kernel. Under CPU autocast the kernel runs, and
returns, float32.

How: the reverse direction is the kernel run forward over each row's real steps reversed, its outputs put back
in order, so a PackedSequence is only unpacked to padded steps and each row's length, and packed again after.
Second derivatives (create_graph=True) run through the same function in PyTorch's ops (fused.reference).
"""
from __future__ import annotations

import logging
import os
import warnings

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnsent.config import IMPLS
from rnnsent.model import fused

__all__ = ["LSTM", "GRU", "RNN", "RNNBase", "replace"]

log = logging.getLogger(__name__)
_said: set[str] = set()  # the reasons for PyTorch's implementation this process has logged
ONEDNN = ("an LSTM's padded float32 input on the CPU, where PyTorch's LSTM runs on oneDNN, faster "
          "(impl='fused' for the kernel)")
CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn_relu"}  # torch.nn's mode -> the kernel's
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}: choose one of {', '.join(IMPLS)}")
    return impl


def _tracing() -> str | None:
    """The tool that is recording the model, if it needs PyTorch's own ops (the kernel is not in its format)."""
    if torch.jit.is_tracing():
        return "torch.jit.trace is recording"
    if torch.onnx.is_in_onnx_export():
        return "torch.onnx.export is running"
    if torch.compiler.is_exporting():  # torch.export, and the ONNX exporter built on it
        return "torch.export is running"
    return None


def _higher_order() -> bool:
    """Forward-mode derivatives (forward_ad, torch.func.jvp/jacfwd/hessian) or nested torch.func.grad: the kernel's
    autograd formula is reverse-mode and first-order (create_graph=True is served, see fused.reference)."""
    if torch.compiler.is_compiling():
        return False
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    kinds = [i.key() for i in retrieve_all_functorch_interpreters()]
    return TransformType.Jvp in kinds or kinds.count(TransformType.Grad) > 1


def transformed() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) is active. PyTorch's own layer has no batching rule
    and cannot take a PackedSequence under them, so there, where the kernel does not serve, the layer runs the
    recurrence step by step in PyTorch's ops (fused.reference) instead."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


def _say(key: str, line: str) -> None:
    """`line` in the log once per process for each `key` (not from inside compiled code)."""
    if key not in _said and not torch.compiler.is_compiling():
        _said.add(key)
        log.info(line)


def refusals(device: torch.device, dtypes: list[torch.dtype], layer: nn.RNNBase | None = None) -> list[str]:
    """Why the kernel cannot run now on tensors on `device` of `dtypes` (and, given, `layer`); [] when it can."""
    reasons = []
    weights = [] if layer is None else [getattr(layer, layer._flat_weights_names[0])]
    devices = {device.type} | {w.device.type for w in weights}
    if devices != {"cpu"}:
        reasons.append(f"the input is on {'/'.join(sorted(devices - {'cpu'}))} (the kernel is the CPU's)")
    autocast = torch.is_autocast_enabled("cpu")  # then the kernel runs in float32 whatever the input's dtype
    odd = {str(d) for d in dtypes if d != torch.float32 and not (autocast and d.is_floating_point)}
    odd |= {str(w.dtype) for w in weights if w.dtype != torch.float32}
    if odd:
        reasons.append(f"weights or input are {', '.join(sorted(odd))} (the kernel is float32)")
    if layer is not None and layer.proj_size > 0:
        reasons.append("proj_size is set (the kernel has no projection)")
    tool = _tracing()
    if tool:
        reasons.append(tool)
    if _higher_order():
        reasons.append("forward-mode or nested derivatives are being taken (the kernel's are reverse-mode)")
    if not reasons and not fused.available():
        reasons.append(fused.status())
    return reasons


class RNNBase(nn.RNNBase):
    """torch.nn.RNNBase's parameters with a forward on the fused kernel: what LSTM, GRU and RNN share.

    Deliberately not a subclass of torch.nn.LSTM / GRU / RNN: torch.compile breaks its graph at those
    (unless torch._dynamo.config.allow_rnn), and at this one only where PyTorch's implementation runs."""

    torch_layer: type[nn.RNNBase]  # PyTorch's layer of the same kind: its forward is the fallback

    def __init__(self, mode: str, *args, impl: str = "auto", **kwargs):
        super().__init__(mode, *args, **kwargs)
        self.impl = check_impl(impl)  # "auto": the kernel where it serves; "torch": PyTorch's; "fused": insist

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", impl={self.impl!r}" if self.impl != "auto" else "")

    def unserved(self, input, hx=None) -> list[str]:
        """Why the kernel cannot serve a call on `input` (a tensor or a PackedSequence) and `hx`; [] when it can.
        impl="fused" raises instead."""
        if self.impl == "torch":
            return ["impl='torch'"]
        data = input.data if isinstance(input, PackedSequence) else input
        states = [] if hx is None else list(hx) if isinstance(hx, (tuple, list)) else [hx]
        reasons = refusals(data.device, [data.dtype] + [s.dtype for s in states], self)
        if not reasons and (data.numel() == 0 or any(s.device != data.device for s in states)):
            reasons = ["an empty input or states on another device (PyTorch's layer says what it makes of it)"]
        if reasons and self.impl == "fused":
            raise RuntimeError(f"impl='fused' cannot run here: {'; '.join(reasons)}. Use impl='auto' or 'torch'.")
        return reasons

    def forward(self, input, hx=None):
        reasons = self.unserved(input, hx)
        # PyTorch's layer has no batching rule and no forward-mode derivative on oneDNN: there, step by step
        stepwise = bool(reasons) and not self.proj_size and (transformed() or _higher_order())
        if not reasons and self._onednn_is_faster(input):
            reasons = [ONEDNN]
        if reasons and not stepwise:
            return self._torch_forward(input, hx, reasons)
        x, lengths, hx, shape = self._prepare(input, hx)  # (T, B, E) time-major
        out, finals, cells = self.recur(x, lengths, hx, kernel=not reasons)
        h_n = torch.stack(finals)  # (layers * directions, B, H)
        return shape(out, (h_n, torch.stack(cells)) if self.mode == "LSTM" else h_n)

    def _onednn_is_faster(self, input) -> bool:
        """impl="auto" on an LSTM's padded input: PyTorch's LSTM runs on oneDNN there, faster than the kernel at
        nearly every measured point (docs/speed.md). Not inside torch.compile (the kernel is one graph, PyTorch's
        layer a break), under CPU autocast (the kernel runs it in float32) or torch.func transforms."""
        return (self.mode == "LSTM" and self.impl == "auto" and not isinstance(input, PackedSequence)
                and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and not transformed() and not _higher_order())

    def _torch_forward(self, input, hx, reasons: list[str]):
        """PyTorch's own implementation on these parameters; says why once per process and reason (not for
        impl="torch", which asked for it, nor the kernel's absence, which rnnsent.model.fused says itself)."""
        for why in reasons:
            if why != "impl='torch'" and not why.startswith("PyTorch's stock layers"):
                _say(why, f"rnnsent.nn.{type(self).__name__}: PyTorch's implementation runs: {why}")
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            import torch._dynamo as dynamo

            if not dynamo.config.allow_rnn:  # a graph break here, as torch.nn's own layers make one
                return torch.compiler.disable(self.torch_layer.forward)(self, input, hx)
        return self.torch_layer.forward(self, input, hx)

    def _prepare(self, input, hx):
        """torch.nn's checks, in its order and words, and its shapes: (x (T, B, E) time-major, lengths (B,) or None
        for all T, the states or None, and what puts the outputs into torch.nn's form)."""
        self._update_flat_weights()  # torch.func.functional_call swaps the weights
        if isinstance(input, PackedSequence):  # worked on in its own order, rows sorted by length, as torch.nn does
            if hx is not None:
                hx = self.permute_hidden(hx, input.sorted_indices)
                self.check_forward_args(input.data, hx, input.batch_sizes)
            # (T, B, E), longest row first: the kernel's chunks of rows stop where their longest row does
            x, lengths = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes))

            def repack(out, state):  # out (T, B, D * H) in the packed order
                data = pack_padded_sequence(out, lengths).data
                return (PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices),
                        self.permute_hidden(state, input.unsorted_indices))

            return x, lengths, hx, repack
        if input.dim() not in (2, 3):
            raise ValueError(self.input_dims_message.format(input.dim()))
        batched, batch_dim = input.dim() == 3, 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
        hx = self._check_state_dims(hx, batched)
        if hx is None:
            self.check_input(input, None)
        else:
            self.check_forward_args(input, hx, None)

        def shape(out, state):  # out (T, B, D * H)
            if self.batch_first:
                out = out.transpose(0, 1)
            if not batched:
                out = out.squeeze(batch_dim)
                state = tuple(s.squeeze(1) for s in state) if isinstance(state, tuple) else state.squeeze(1)
            return out, state

        return (input.transpose(0, 1) if self.batch_first else input), None, hx, shape

    def _check_state_dims(self, hx, batched: bool):
        """torch.nn.GRU's and RNN's check of hx's dimensions; the states of unbatched input get a batch of one."""
        if hx is None:
            return None
        want = 3 if batched else 2
        if hx.dim() != want:
            raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, hx should also be "
                               f"{want}-D but got {hx.dim()}-D tensor")
        return hx if batched else hx.unsqueeze(1)

    def recur(self, x: torch.Tensor, lengths: torch.Tensor | None = None, hx=None, project=None, outputs: bool = True,
              kernel: bool = True, linear=fused.project):
        """Every layer and direction on the kernel, for time-major x (T, B, E) whose row b has lengths[b] real steps
        (None: all T), what a PackedSequence means without packing: the reverse direction starts at each row's last
        real step. hx: torch.nn's initial states ((h0, c0) for the LSTM) or None for zeros. `linear(x, W_ih, b_ih)`
        makes every layer's input projection: fused.project, F.linear with gradients that are the same bits for any
        thread count; SentimentRNN keeps F.linear itself, which its checkpoints trained with, so that an earlier
        version's run resumes bit for bit. `project` replaces it for the first layer (SentimentRNN reads that
        projection from a table of its words).
        Returns (the last layer's outputs (T, B, D * H), past a row's length whatever the layer computes there, or
        None without `outputs`; the final states [(B, H)] per layer and direction; the LSTM's final cell states).
        Without `kernel` every step runs in PyTorch's ops instead (fused.reference: under torch.func.vmap, where
        PyTorch's own layer cannot run and the kernel does not serve)."""
        if kernel and torch.is_autocast_enabled("cpu"):  # the kernel is float32: so is everything around it
            _say("autocast", f"rnnsent.nn.{type(self).__name__}: CPU autocast is on; the fused kernel runs in float32 "
                             "and returns float32")
            with torch.autocast("cpu", enabled=False):
                hx = None if hx is None else tuple(s.float() for s in hx) if isinstance(hx, tuple) else hx.float()
                return self.recur(x.float() if x.is_floating_point() else x, lengths, hx, project, outputs, True,
                                  linear)
        steps, batch = x.size(0), x.size(1)
        self._check_workspace(steps, batch)
        lengths = torch.full((batch,), steps, dtype=torch.long) if lengths is None else lengths.to("cpu", torch.long)
        rev = _reversal(lengths, steps)  # (T, B)

        def flip(t):  # (T, B, ...) with each row's first lengths[b] steps reversed
            return t.gather(0, rev.view(steps, -1, *([1] * (t.dim() - 2))).expand_as(t))

        dirs = 2 if self.bidirectional else 1
        h0, c0 = self._initial_states(hx)
        inputs, finals, cells = x, [], []
        for layer in range(self.num_layers):
            lastly, seqs = layer == self.num_layers - 1, []
            for d in range(dirs):
                k = layer * dirs + d
                h, seq, c = self._direction(k, inputs if d == 0 else flip(inputs), lengths, h0[k], c0[k],
                                            (project if layer == 0 else None) or linear, outputs or not lastly,
                                            kernel)
                finals.append(h)  # (B, H)
                cells.append(c)
                if seq is not None:
                    seqs.append(seq if d == 0 else flip(seq))  # (T, B, H), in time order
            if not lastly:
                inputs = torch.cat(seqs, dim=-1) if dirs == 2 else seqs[0]  # (T, B, H * dirs)
                inputs = F.dropout(inputs, self.dropout, self.training)  # between layers, as torch.nn's dropout
        out = (torch.cat(seqs, dim=-1) if dirs == 2 else seqs[0]) if outputs else None
        return out, finals, cells

    def _direction(self, k: int, source, lengths, h0, c0, project, full: bool, kernel: bool):
        """One layer and direction (the k-th of _all_weights), `source` (T, B, E) already in its time order."""
        names = self._all_weights[k]
        w_ih, w_hh = getattr(self, names[0]), getattr(self, names[1])
        b_ih, b_hh = (getattr(self, names[2]), getattr(self, names[3])) if self.bias else (None, None)
        if b_hh is None:
            b_hh = w_hh.new_zeros(w_hh.size(0))
        if not kernel:  # PyTorch's ops throughout
            x_proj = (F.linear if project is fused.project else project)(source, w_ih, b_ih)
            return fused.reference(fused.CELL_IDS[CELLS[self.mode]], x_proj, w_hh, b_hh, lengths, h0, c0)
        x_proj = project(source, w_ih, b_ih)  # (T, B, G*H): every step in one product
        # how to make x_proj again with its graph, should a second derivative be asked for (not inside compiled code)
        again = None if torch.compiler.is_compiling() else (lambda: project(source, w_ih, b_ih))
        return fused.run(CELLS[self.mode], x_proj, w_hh, b_hh, lengths, h0, c0, full=full, again=again)

    def _initial_states(self, hx):
        """torch.nn's (layers * directions, B, H) initial states as one (B, H) or None per layer and direction."""
        n = self.num_layers * (2 if self.bidirectional else 1)
        h, c = hx if isinstance(hx, tuple) else (hx, None)
        return ([None] * n if h is None else list(h.unbind(0))), ([None] * n if c is None else list(c.unbind(0)))

    def _check_workspace(self, steps: int, batch: int) -> None:
        """Refuse, before allocating anything, a call whose working memory exceeds the machine's: the projections,
        states and (for training) activations the kernel keeps, 4 bytes each."""
        total = PHYSICAL_MEMORY
        dirs = 2 if self.bidirectional else 1
        gh, h = GATES[self.mode] * self.hidden_size, self.hidden_size
        per_row_step = gh + h if not torch.is_grad_enabled() else self.num_layers * dirs * (2 * gh + 3 * h)
        need = 4 * steps * batch * per_row_step
        if total and need > total:
            raise RuntimeError(f"rnnsent.nn.{type(self).__name__}: {steps:,} steps of a batch of {batch:,} at "
                               f"hidden_size {h:,} need at least {need / 2**30:,.1f} GiB of working memory, more than "
                               f"this machine's {total / 2**30:,.1f} GiB; use shorter sequences or smaller batches")


class LSTM(RNNBase):
    __doc__ = "torch.nn.LSTM on rnnsent's fused CPU kernel: the same arguments (and impl=), parameters and outputs."
    torch_layer = nn.LSTM
    input_dims_message = "LSTM: Expected input to be 2D or 3D, got {}D instead"
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def __init__(self, *args, impl: str = "auto", **kwargs):
        super().__init__("LSTM", *args, impl=impl, **kwargs)

    def _check_state_dims(self, hx, batched: bool):
        """torch.nn.LSTM's check of (h0, c0)'s dimensions; the states of unbatched input get a batch of one."""
        if hx is None:
            return None
        want = 3 if batched else 2
        if hx[0].dim() != want or hx[1].dim() != want:
            raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, hx and cx should also be "
                               f"{want}-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        return tuple(hx) if batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))


class GRU(RNNBase):
    __doc__ = "torch.nn.GRU on rnnsent's fused CPU kernel: the same arguments (and impl=), parameters and outputs."
    torch_layer = nn.GRU
    input_dims_message = "GRU: Expected input to be 2D or 3D, got {}D instead"

    def __init__(self, *args, impl: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, impl=impl, **kwargs)


class RNN(RNNBase):
    __doc__ = "torch.nn.RNN on rnnsent's fused CPU kernel (tanh or relu): the same arguments (and impl=), parameters " \
              "and outputs."
    torch_layer = nn.RNN
    input_dims_message = "RNN: Expected input to be 2D or 3D, got {}D tensor instead"

    def __init__(self, *args, impl: str = "auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:  # torch.nn.RNN's fourth positional argument
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", *args, impl=impl, **kwargs)
        self.nonlinearity = nonlinearity


LAYERS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}  # torch.nn's layer -> rnnsent.nn's


def replace(model: nn.Module) -> nn.Module:
    """Swap every torch.nn.LSTM, GRU and RNN inside `model` (those classes exactly: a subclass may have its own
    forward) for rnnsent.nn's, in place, keeping the very parameter tensors (an optimizer made before keeps
    working), the train/eval mode and the hooks. Returns `model`, or its replacement if it is such a layer itself."""
    done: dict[int, nn.Module] = {}

    def swap(module: nn.Module) -> nn.Module:
        if type(module) not in LAYERS or nn.utils.parametrize.is_parametrized(module):
            for name, child in list(module.named_children()):
                if id(child) not in done:
                    done[id(child)] = swap(child)
                if done[id(child)] is not child:
                    setattr(module, name, done[id(child)])
            return module
        return _adopt(_empty_like(module, LAYERS[type(module)]), module)

    return swap(model)


def _empty_like(layer: nn.RNNBase, cls: type[nn.RNNBase]) -> nn.RNNBase:
    """A layer of class `cls` with the settings of `layer`, its parameters on the meta device (nothing allocated)."""
    kwargs = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first, dropout=layer.dropout,
                  bidirectional=layer.bidirectional, device="meta")
    if layer.mode == "LSTM":
        kwargs["proj_size"] = layer.proj_size
    if layer.mode.startswith("RNN"):
        kwargs["nonlinearity"] = layer.nonlinearity
    with warnings.catch_warnings():  # torch.nn's dropout warning was given when `layer` was made
        warnings.simplefilter("ignore", UserWarning)
        return cls(layer.input_size, layer.hidden_size, **kwargs)


def _adopt(new: nn.RNNBase, old: nn.RNNBase) -> nn.RNNBase:
    """`new` takes `old`'s weight tensors themselves (a weight may be a buffer: SentimentRNN's zero recurrent bias),
    its mode and its hooks; returns `new`."""
    for name in old._flat_weights_names:
        value = getattr(old, name)
        delattr(new, name)
        if name in old._parameters:
            setattr(new, name, value)
        else:
            new.register_buffer(name, value, persistent=name not in old._non_persistent_buffers_set)
    new._init_flat_weights()
    new.train(old.training)
    for attr, value in vars(old).items():
        if attr.startswith("_") and "hooks" in attr and isinstance(value, dict):
            setattr(new, attr, value)
    return new


def _reversal(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(T, B) time indices that reverse each row's first lengths[b] steps and leave its padding after them."""
    t = torch.arange(steps).unsqueeze(1)  # (T, 1)
    n = lengths.unsqueeze(0)  # (1, B)
    return torch.where(t < n, n - 1 - t, t)  # (T, B), its own inverse


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return None


PHYSICAL_MEMORY = _physical_memory()  # bytes, or None where unknown
