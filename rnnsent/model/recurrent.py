"""The recurrent layer: how it runs, PyTorch's own layer or rnnsent's fused CPU kernel (rnnsent/model/fused.py).

Both compute the same function on the same weights, which live in PyTorch's nn.LSTM / nn.GRU / nn.RNN
either way. On GPUs the stock layers run (cuDNN). On the CPU, in float32, the fused kernel runs where it
can be built, because the stock CPU layers are dominated by per-step dispatch; impl="torch" forces the
stock layers and impl="fused" refuses to fall back. Either way there is no Python loop over time steps.

The layer takes token ids and the embedding, not embedded vectors: the fused path then projects the
vocabulary's embedding table once instead of every token (see last_state).
"""
from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnsent.model import fused
from rnnsent.config import CELL_TABLE, IMPLS

LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # PyTorch's layer for each cell of CELL_TABLE


def make_layer(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
               dropout: float = 0.0) -> nn.RNNBase:
    """PyTorch's layer for `cell` (batch first), with Keras' biases in every layer and direction.

    Keras and PyTorch differ in one place that changes the parameter count: PyTorch's LSTM and Elman RNN
    carry two bias vectors (input and recurrent) where Keras has one. The two are only ever added, so the
    recurrent bias becomes a zero, non-persistent buffer: the kernels see the tensors they expect and
    state_dict() holds exactly Keras' trainable weights. Keras' GRU with reset_after=True (its default
    since Keras 2.3) has both biases, laid out as PyTorch's, so the GRU keeps both as parameters.
    """
    layer = LAYERS[cell](input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                         dropout=dropout if num_layers > 1 else 0.0, batch_first=True)  # one layer: nothing between
    if cell != "gru":
        for suffix in weight_suffixes(layer):
            name = f"bias_hh{suffix}"
            delattr(layer, name)
            layer.register_buffer(name, torch.zeros(CELL_TABLE[cell].gates * hidden_size), persistent=False)
        layer._init_flat_weights()
    return layer


def weight_suffixes(rnn: nn.RNNBase) -> list[str]:
    """The name suffixes of the layer's weights, layer by layer, forward before backward: _l0, _l0_reverse, _l1..."""
    directions = ("", "_reverse") if rnn.bidirectional else ("",)
    return [f"_l{k}{d}" for k in range(rnn.num_layers) for d in directions]


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}: choose one of {', '.join(IMPLS)}")
    return impl


def uses_fused(impl: str, tokens: torch.Tensor, dtype: torch.dtype, rnn: nn.Module | None = None,
               cell: str | None = None) -> bool:
    """Whether the layer runs on the fused CPU kernel for `tokens` and weights of `dtype`: impl "auto" or
    "fused", CPU, float32, no CPU autocast, and (given `rnn` and its `cell`) a layer the kernel serves.
    impl="fused" raises where that is impossible instead of falling back."""
    if check_impl(impl) == "torch":
        return False
    reasons = []
    if tokens.device.type != "cpu":
        reasons.append(f"input is on {tokens.device.type}")
    if dtype != torch.float32:
        reasons.append(f"weights are {dtype}")
    if torch.is_autocast_enabled("cpu"):
        reasons.append("CPU autocast is on")
    if rnn is not None:
        reasons += _unserved(rnn, cell)
    if not reasons and not fused.available():
        reasons.append(fused.status())
    if reasons and impl == "fused":
        raise RuntimeError(f"impl='fused' cannot run here: {'; '.join(reasons)}. Use impl='auto' or 'torch'.")
    return not reasons


def _tracing() -> str | None:
    """The tool that is recording the model, if it needs PyTorch's own ops (the kernel is not in its format)."""
    if torch.jit.is_tracing():
        return "torch.jit.trace is recording"
    if torch.onnx.is_in_onnx_export():
        return "torch.onnx.export is running"
    if torch.compiler.is_exporting():  # torch.export, and the ONNX exporter built on it
        return "torch.export is running"
    return None


def _unserved(rnn: nn.Module, cell: str | None) -> list[str]:
    """Why the kernel cannot stand in for this module call: whatever it computes must stay what it computes."""
    tool = _tracing()
    if tool:
        return [tool]
    if cell is None or type(rnn) is not LAYERS[cell]:
        return [f"the recurrent layer is a {type(rnn).__name__}, not the model's {cell} layer"]
    if not (rnn.batch_first and rnn.bias and getattr(rnn, "proj_size", 0) == 0
            and getattr(rnn, "nonlinearity", "tanh") == "tanh"):
        return ["the recurrent layer has options the kernel does not implement (batch_first=False, bias=False, "
                "proj_size or a relu nonlinearity)"]
    if rnn._forward_hooks or rnn._forward_pre_hooks or nn.modules.module._global_forward_hooks \
            or nn.modules.module._global_forward_pre_hooks:
        return ["forward hooks are registered on the recurrent layer (they see PyTorch's layer run)"]
    return []


def describe(impl: str, device: torch.device) -> str:
    """What runs the recurrent layer on `device`, for logs and reports. impl="fused" where the kernel cannot
    run is a ValueError here (a usage error of one line), rather than a failure mid-epoch; a first-time
    build announces itself (rnnsent.model.fused)."""
    if device.type != "cpu":
        return "PyTorch's layers (cuDNN on CUDA)"
    if impl == "torch":
        return "PyTorch's stock layers (rnn_impl=torch)"
    try:
        uses_fused(impl, torch.zeros(1, 1, dtype=torch.long), torch.float32)
    except RuntimeError as e:
        raise ValueError(str(e).replace("impl='fused'", "--rnn-impl fused").replace("impl=", "--rnn-impl ")) from None
    return fused.status()


def encode(cell: str, rnn: nn.RNNBase, embedding: nn.Embedding, dropout: nn.Dropout, tokens: torch.Tensor,
           lengths: torch.Tensor | None, impl: str = "auto", sequence: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embed `tokens` (B, T), apply `dropout`, run the layer (every stacked layer and direction).

    Returns the final states the head sees, (B, H * directions): forward after each row's last real token,
    backward after the first token, which is where the backward direction ends; and with `sequence` the last
    layer's outputs, (B, T, H * directions), zeros past each row's length. Without lengths the input is
    pre-padded: both directions run over every column, as Keras' unmasked layers do. With lengths it is
    right-padded: the backward direction starts at each row's last real token (packed-sequence semantics)."""
    if uses_fused(impl, tokens, embedding.weight.dtype, rnn, cell):
        hooked = bool(embedding._forward_hooks or embedding._forward_pre_hooks)
        if (dropout.p == 0 or not dropout.training) and embedding.num_embeddings <= tokens.numel() and not hooked:
            return _run(cell, rnn, None, lengths, sequence, tokens=tokens, embedding=embedding)
        # Dropout in the (B, T, E) layout of the stock path, so that a seed gives the same masks in both.
        return _run(cell, rnn, dropout(embedding(tokens)), lengths, sequence, fused_path=True)
    return _run(cell, rnn, dropout(embedding(tokens)), lengths, sequence, fused_path=False)


def encode_embedded(cell: str, rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None, impl: str = "auto",
                    sequence: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """encode() from embedded tokens x (B, T, E), the embedding's output after dropout: the same layer on the
    same path (fused kernel or PyTorch's), for gradients with respect to the embedded words (rnnsent.explain)."""
    return _run(cell, rnn, x, lengths, sequence, fused_path=uses_fused(impl, x, x.dtype, rnn, cell))


def _run(cell, rnn, x, lengths, sequence, fused_path=True, tokens=None, embedding=None):
    """encode()'s work on embedded input x (B, T, E), or (x None) on tokens through the vocabulary table."""
    steps = (tokens if x is None else x).size(1)
    if lengths is not None:
        lengths = lengths.to(device="cpu", dtype=torch.long).clamp(1, steps)
    if fused_path:
        inputs = None if x is None else x.transpose(0, 1)  # (T, B, E)
        last, seq = _fused(cell, rnn, inputs, tokens, embedding, lengths, steps, sequence)
    else:
        last, seq = _stock(rnn, x, lengths)
    if sequence and lengths is not None:
        keep = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        seq = seq * keep.unsqueeze(-1).to(device=seq.device, dtype=seq.dtype)
    return last, (seq if sequence else None)


def last_state(cell: str, rnn: nn.RNNBase, embedding: nn.Embedding, dropout: nn.Dropout, tokens: torch.Tensor,
               lengths: torch.Tensor | None, impl: str = "auto") -> torch.Tensor:
    """The final states the head sees, (B, H * directions) (see encode)."""
    return encode(cell, rnn, embedding, dropout, tokens, lengths, impl)[0]


def embedded_last_state(cell: str, rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None,
                        impl: str = "auto") -> torch.Tensor:
    """last_state() from embedded tokens x (B, T, E) after dropout (see encode_embedded)."""
    return encode_embedded(cell, rnn, x, lengths, impl)[0]


def _stock(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's layer on embedded input x (B, T, E): (final states (B, H * dirs), outputs (B, T, H * dirs))."""
    bidirectional = getattr(rnn, "bidirectional", False)
    if lengths is not None and bidirectional:
        # The backward direction must start at each row's last real token: a packed sequence does exactly that.
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))  # (B, T, 2H), zeros past lengths
        h = state[0] if isinstance(state, tuple) else state  # (layers * 2, B, H), back in the batch's order
        return torch.cat([h[-2], h[-1]], dim=-1), out  # (B, 2H)
    out, _ = rnn(x)  # (B, T, H * dirs)
    if lengths is None:
        last = out[:, -1]  # (B, H): pre-padded input ends with real tokens
    else:
        # Right-padded input: the output at each row's last real step; later steps never feed back into it.
        idx = (lengths.to(out.device) - 1).view(-1, 1, 1).expand(-1, 1, out.size(-1))
        last = out.gather(1, idx).squeeze(1)  # (B, H)
    if bidirectional:  # without lengths the backward direction ends at the first column
        h = out.size(-1) // 2
        last = torch.cat([last[:, :h], out[:, 0, h:]], dim=-1)  # (B, 2H)
    return last, out


def _reversal(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(T, B) time indices that reverse each row's first lengths[b] steps and leave its padding after them."""
    t = torch.arange(steps).unsqueeze(1)  # (T, 1)
    n = lengths.unsqueeze(0)  # (1, B)
    return torch.where(t < n, n - 1 - t, t)  # (T, B), its own inverse


# Inference reuses the projected vocabulary table while the weights stay what they were: projecting 5,000 words costs
# more than a small batch's whole forward (a server's length buckets). Held per W_ih (by id, dropped with it) and
# checked by each tensor's identity and in-place version, so training steps, load_state_dict and edits make a new one.
_TABLES: dict[int, tuple[tuple, torch.Tensor]] = {}


def _projected_table(weight: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor) -> torch.Tensor:
    """F.linear(weight, w_ih, b_ih), (V, G*H); without gradients, the copy from the last call while valid."""
    tensors = (weight, w_ih, b_ih)
    if ((torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or torch.is_inference_mode_enabled()):
        return F.linear(weight, w_ih, b_ih)
    key = tuple((id(t), t._version, t.data_ptr()) for t in tensors)
    cached = _TABLES.get(id(w_ih))
    if cached is not None and cached[0] == key:
        return cached[1]
    if cached is None:
        weakref.finalize(w_ih, _TABLES.pop, id(w_ih), None)
    table = F.linear(weight, w_ih, b_ih)
    _TABLES[id(w_ih)] = (key, table)
    return table


def _fused(cell, rnn, inputs, tokens, embedding, lengths, steps, sequence) -> tuple[torch.Tensor, torch.Tensor | None]:
    """encode() through the fused CPU kernel: one call per layer and direction, time-major inside. The reverse
    direction is the kernel run forward over each row's real steps reversed, its outputs put back in order.
    inputs: layer 0's input (T, B, E), or None to project the vocabulary table and gather its rows."""
    batch = (tokens if inputs is None else inputs.transpose(0, 1)).size(0)
    full_lengths = lengths if lengths is not None else torch.full((batch,), steps, dtype=torch.long)
    rev = _reversal(full_lengths, steps)  # (T, B)
    suffixes = weight_suffixes(rnn)
    dirs = 2 if rnn.bidirectional else 1

    def flip(x):  # (T, B, ...) reversed per row
        return x.gather(0, rev.view(steps, -1, *([1] * (x.dim() - 2))).expand_as(x))

    for layer in range(rnn.num_layers):
        lastly = layer == rnn.num_layers - 1
        finals, outputs = [], []
        for d in range(dirs):
            sfx = suffixes[layer * dirs + d]
            w_ih, b_ih = getattr(rnn, f"weight_ih{sfx}"), getattr(rnn, f"bias_ih{sfx}")
            if inputs is None:
                # Embedding then projection is linear in the one-hot tokens, so project the vocabulary's table
                # once and gather its rows: (V x E x G*H) multiply-adds instead of (B*T x E x G*H), and the
                # backward pass sums rows per word. Dropout between the two would break this, and the
                # embedding module is not called, so hooks on it send the tokens through it instead.
                table = _projected_table(embedding.weight, w_ih, b_ih)  # (V, G*H)
                ids = tokens.t() if d == 0 else tokens.t().gather(0, rev)  # (T, B)
                x_proj = F.embedding(ids, table)  # (T, B, G*H)
            else:
                x_proj = F.linear(inputs if d == 0 else flip(inputs), w_ih, b_ih)  # all steps in one GEMM
            last, seq = fused.run(cell, x_proj, getattr(rnn, f"weight_hh{sfx}"), getattr(rnn, f"bias_hh{sfx}"),
                                  full_lengths, full=sequence or not lastly)
            finals.append(last)  # (B, H)
            if seq is not None:
                outputs.append(seq if d == 0 else flip(seq))  # (T, B, H), in time order
        if not lastly:
            inputs = torch.cat(outputs, dim=-1) if dirs == 2 else outputs[0]  # (T, B, H * dirs)
            inputs = F.dropout(inputs, rnn.dropout, rnn.training)  # between layers, as nn.LSTM's dropout
    last = torch.cat(finals, dim=-1) if dirs == 2 else finals[0]  # (B, H * dirs)
    seq = None
    if sequence:
        seq = (torch.cat(outputs, dim=-1) if dirs == 2 else outputs[0]).transpose(0, 1)  # (B, T, H * dirs)
    return last, seq
