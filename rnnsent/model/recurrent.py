"""How SentimentRNN runs its recurrent layer: rnnsent.nn's LSTM / GRU / RNN (the fused CPU kernel where it serves,
PyTorch's implementation elsewhere) with Keras' biases, fed token ids rather than embedded vectors.

The layer is the model's; what this module adds is the model's side of it. Keras' biases (make_layer). The model's
lengths: right-padded rows read up to their length, as a PackedSequence, without packing (rnnsent.nn's `recur`).
And the vocabulary-table shortcut: without embedding dropout, the first layer's input projection is read from the
vocabulary's embedding table projected once, instead of projecting every token (see encode). Where the kernel
cannot run (CUDA, another dtype, impl="torch", a layer that is not rnnsent.nn's) or hooks on the layer must see
it called, the layer is called as a module, as before: PyTorch's layer on a PackedSequence or padded steps.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnsent import nn as layers
from rnnsent.config import CELL_TABLE
from rnnsent.model import fused

CELL_LAYERS = {"lstm": layers.LSTM, "gru": layers.GRU, "rnn": layers.RNN}  # rnnsent.nn's layer for each cell


def make_layer(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
               dropout: float = 0.0, impl: str = "auto") -> layers.RNNBase:
    """rnnsent.nn's layer for `cell` (batch first), with Keras' biases in every layer and direction.

    Keras and PyTorch differ in one place that changes the parameter count: PyTorch's LSTM and Elman RNN
    carry two bias vectors (input and recurrent) where Keras has one. The two are only ever added, so the
    recurrent bias becomes a zero, non-persistent buffer: the kernels see the tensors they expect and
    state_dict() holds exactly Keras' trainable weights. Keras' GRU with reset_after=True (its default
    since Keras 2.3) has both biases, laid out as PyTorch's, so the GRU keeps both as parameters.
    """
    layer = CELL_LAYERS[cell](input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                              dropout=dropout if num_layers > 1 else 0.0,  # one layer: nothing between
                              batch_first=True, impl=impl)
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


def uses_fused(impl: str, tokens: torch.Tensor, dtype: torch.dtype, rnn: nn.Module | None = None) -> bool:
    """Whether the fused CPU kernel runs the layer for `tokens` and weights of `dtype`: impl "auto" or "fused", CPU,
    float32, and (given `rnn`) a layer of rnnsent.nn that it serves now. impl="fused" raises where that is impossible
    instead of falling back."""
    if layers.check_impl(impl) == "torch":
        return False
    reasons = []
    if rnn is not None and not isinstance(rnn, layers.RNNBase):
        reasons.append(f"the recurrent layer is a {type(rnn).__module__}.{type(rnn).__name__}, not rnnsent.nn's")
    reasons = reasons or layers.refusals(tokens.device, [dtype], rnn)
    if reasons and impl == "fused":
        raise RuntimeError(f"impl='fused' cannot run here: {'; '.join(reasons)}. Use impl='auto' or 'torch'.")
    return not reasons


def _hooked(module: nn.Module) -> bool:
    """Forward hooks that must see `module` called (then it is, rather than read for the table shortcut)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


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


def encode(rnn: nn.RNNBase, embedding: nn.Embedding, dropout: nn.Dropout, tokens: torch.Tensor,
           lengths: torch.Tensor | None, impl: str = "auto", sequence: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embed `tokens` (B, T), apply `dropout`, run the layer (every stacked layer and direction).

    Returns the final states the head sees, (B, H * directions): forward after each row's last real token,
    backward after the first token, which is where the backward direction ends; and with `sequence` the last
    layer's outputs, (B, T, H * directions), zeros past each row's length. Without lengths the input is
    pre-padded: both directions run over every column, as Keras' unmasked layers do. With lengths it is
    right-padded: the backward direction starts at each row's last real token (packed-sequence semantics)."""
    kernel = uses_fused(impl, tokens, embedding.weight.dtype, rnn)
    if _direct(rnn, kernel):
        if (dropout.p == 0 or not dropout.training) and embedding.num_embeddings <= tokens.numel() \
                and not _hooked(embedding):
            # Embedding then projection is linear in the one-hot tokens, so project the vocabulary's table once
            # and gather its rows: (V x E x G*H) multiply-adds instead of (B*T x E x G*H), and the backward pass
            # sums rows per word. Dropout between the two would break this, and the embedding module is not
            # called, so hooks on it send the tokens through it instead.
            def project(ids, w_ih, b_ih):  # (T, B) token ids -> (T, B, G*H)
                return F.embedding(ids, _projected_table(embedding.weight, w_ih, b_ih))

            return _recur(rnn, tokens.t(), lengths, sequence, kernel, project)
        # Dropout in the (B, T, E) layout of the stock path, so that a seed gives the same masks in both.
        return _recur(rnn, dropout(embedding(tokens)).transpose(0, 1), lengths, sequence, kernel)
    return _stock(rnn, dropout(embedding(tokens)), lengths, sequence)


def encode_embedded(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None, impl: str = "auto",
                    sequence: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """encode() from embedded tokens x (B, T, E), the embedding's output after dropout: the same layer on the
    same path (fused kernel or PyTorch's), for gradients with respect to the embedded words (rnnsent.explain)."""
    kernel = uses_fused(impl, x, x.dtype, rnn)
    if _direct(rnn, kernel):
        return _recur(rnn, x.transpose(0, 1), lengths, sequence, kernel)
    return _stock(rnn, x, lengths, sequence)


def embedded_last_state(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None,
                        impl: str = "auto") -> torch.Tensor:
    """The final states the head sees from embedded tokens x (B, T, E) after dropout (see encode_embedded)."""
    return encode_embedded(rnn, x, lengths, impl)[0]


def _direct(rnn: nn.Module, kernel: bool) -> bool:
    """Whether encode() runs the layer's recur() itself, rather than calling it as a module: on the kernel, or under
    a torch.func transform (where PyTorch's layer cannot run, nor a PackedSequence be made), unless hooks must see
    it called."""
    return (isinstance(rnn, layers.RNNBase) and rnn.batch_first and not _hooked(rnn)
            and (kernel or layers.transformed()))


def _recur(rnn, x, lengths, sequence, kernel, project=None):
    """encode()'s work through rnn.recur: x time-major, (T, B, E) embedded or (T, B) token ids that `project` reads."""
    steps = x.size(0)
    if lengths is not None:
        lengths = lengths.to(device="cpu", dtype=torch.long).clamp(1, steps)
    # F.linear's own gradients, as the model's checkpoints were trained with (rnnsent.nn's recur says why)
    out, finals, _ = rnn.recur(x, lengths, project=project, outputs=sequence, kernel=kernel, linear=F.linear)
    last = torch.cat(finals[-2:], dim=-1) if rnn.bidirectional else finals[-1]  # (B, H * dirs): the last layer's
    if not sequence:
        return last, None
    return last, _zero_padding(out.transpose(0, 1), lengths)  # (B, T, H * dirs)


def _zero_padding(seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """seq (B, T, F) with zeros past each row's length."""
    if lengths is None:
        return seq
    keep = torch.arange(seq.size(1)).unsqueeze(0) < lengths.to("cpu").unsqueeze(1)  # (B, T)
    return seq * keep.unsqueeze(-1).to(device=seq.device, dtype=seq.dtype)


def _stock(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None, sequence: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer called as a module on embedded input x (B, T, E): (final states (B, H * dirs), with `sequence`
    the outputs (B, T, H * dirs), zeros past each row's length)."""
    bidirectional = getattr(rnn, "bidirectional", False)
    if lengths is not None:
        lengths = lengths.to(device="cpu", dtype=torch.long).clamp(1, x.size(1))
    if lengths is not None and bidirectional:
        # The backward direction must start at each row's last real token: a packed sequence does exactly that.
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))  # (B, T, 2H), zeros past lengths
        h = state[0] if isinstance(state, tuple) else state  # (layers * 2, B, H), back in the batch's order
        return torch.cat([h[-2], h[-1]], dim=-1), (out if sequence else None)  # (B, 2H)
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
    return last, (_zero_padding(out, lengths) if sequence else None)


# Inference reuses the projected vocabulary table while the weights stay what they were: projecting 5,000 words costs
# more than a small batch's whole forward (a server's length buckets). Held per W_ih (by id, dropped with it) and
# checked by each tensor's identity and in-place version, so training steps, load_state_dict and edits make a new one.
_TABLES: dict[int, tuple[tuple, torch.Tensor]] = {}


def _projected_table(weight: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor) -> torch.Tensor:
    """F.linear(weight, w_ih, b_ih), (V, G*H); without gradients, the copy from the last call while valid."""
    tensors = (weight, w_ih, b_ih)
    if ((torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or torch.is_inference_mode_enabled()
            or torch._C._functorch.is_functorch_wrapped_tensor(w_ih)):
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
