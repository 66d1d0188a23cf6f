"""The recurrent layer: how it runs, PyTorch's own layer or rnnsent's fused CPU kernel (rnnsent/fused.py).

Both compute the same function on the same weights, which live in PyTorch's nn.LSTM / nn.GRU / nn.RNN
either way. On GPUs the stock layers run (cuDNN). On the CPU, in float32, the fused kernel runs where it
can be built, because the stock CPU layers are dominated by per-step dispatch; impl="torch" forces the
stock layers and impl="fused" refuses to fall back. Either way there is no Python loop over time steps.

The layer takes token ids and the embedding, not embedded vectors: the fused path then projects the
vocabulary's embedding table once instead of every token (see last_state).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rnnsent import fused
from rnnsent.config import CELL_TABLE, IMPLS

LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # PyTorch's layer for each cell of CELL_TABLE


def make_layer(cell: str, input_size: int, hidden_size: int) -> nn.RNNBase:
    """PyTorch's layer for `cell` (batch first), with Keras' biases.

    Keras and PyTorch differ in one place that changes the parameter count: PyTorch's LSTM and Elman RNN
    carry two bias vectors (input and recurrent) where Keras has one. The two are only ever added, so the
    recurrent bias becomes a zero, non-persistent buffer: the kernels see the tensors they expect and
    state_dict() holds exactly Keras' trainable weights. Keras' GRU with reset_after=True (its default
    since Keras 2.3) has both biases, laid out as PyTorch's, so the GRU keeps both as parameters.
    """
    layer = LAYERS[cell](input_size, hidden_size, batch_first=True)
    if cell != "gru":
        del layer.bias_hh_l0
        layer.register_buffer("bias_hh_l0", torch.zeros(CELL_TABLE[cell].gates * hidden_size), persistent=False)
        layer._init_flat_weights()
    return layer


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}: choose one of {', '.join(IMPLS)}")
    return impl


def uses_fused(impl: str, tokens: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the layer runs on the fused CPU kernel for `tokens` and weights of `dtype`: impl "auto" or
    "fused", CPU, float32, no CPU autocast. impl="fused" raises where that is impossible instead of falling back."""
    if check_impl(impl) == "torch":
        return False
    reasons = []
    if tokens.device.type != "cpu":
        reasons.append(f"input is on {tokens.device.type}")
    if dtype != torch.float32:
        reasons.append(f"weights are {dtype}")
    if torch.is_autocast_enabled("cpu"):
        reasons.append("CPU autocast is on")
    if not reasons and not fused.available():
        reasons.append(fused.status())
    if reasons and impl == "fused":
        raise RuntimeError(f"impl='fused' cannot run here: {'; '.join(reasons)}. Use impl='auto' or 'torch'.")
    return not reasons


def describe(impl: str, device: torch.device) -> str:
    """What runs the recurrent layer on `device`, for logs and reports. impl="fused" where the kernel cannot
    run is a ValueError here (a usage error of one line), rather than a failure mid-epoch; a first-time
    build announces itself (rnnsent.fused)."""
    if device.type != "cpu":
        return "PyTorch's layers (cuDNN on CUDA)"
    if impl == "torch":
        return "PyTorch's stock layers (rnn_impl=torch)"
    try:
        uses_fused(impl, torch.zeros(1, 1, dtype=torch.long), torch.float32)
    except RuntimeError as e:
        raise ValueError(str(e).replace("impl='fused'", "--rnn-impl fused").replace("impl=", "--rnn-impl ")) from None
    return fused.status()


def last_state(cell: str, rnn: nn.RNNBase, embedding: nn.Embedding, dropout: nn.Dropout, tokens: torch.Tensor,
               lengths: torch.Tensor | None, impl: str = "auto") -> torch.Tensor:
    """Embed `tokens` (B, T), apply `dropout`, run the layer; return the state after each row's last real
    token, (B, H). Without lengths the input is pre-padded and the last column is used."""
    if uses_fused(impl, tokens, embedding.weight.dtype):
        return _fused_last(cell, rnn, embedding, dropout, tokens, lengths)
    return embedded_last_state(cell, rnn, dropout(embedding(tokens)), lengths, "torch")


def embedded_last_state(cell: str, rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None,
                        impl: str = "auto") -> torch.Tensor:
    """last_state() from embedded tokens x (B, T, E), the embedding's output after dropout: the same layer on
    the same path (fused kernel or PyTorch's), for gradients with respect to the embedded words (rnnsent.explain)."""
    if uses_fused(impl, x, rnn.weight_ih_l0.dtype):
        return _fused_from_embedded(cell, rnn, x.transpose(0, 1), lengths)  # (T, B, E) inside
    out, _ = rnn(x)  # (B, T, H)
    if lengths is None:
        return out[:, -1]  # (B, H): pre-padded input ends with real tokens
    # Right-padded input: the output at each row's last real step; later steps never feed back into it.
    idx = (lengths.to(out.device).long().clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, out.size(-1))
    return out.gather(1, idx).squeeze(1)  # (B, H)


def _fused_last(cell, rnn, embedding, dropout, tokens, lengths) -> torch.Tensor:
    """The last real state through the fused CPU kernel (time-major inside)."""
    w_ih, b_ih = rnn.weight_ih_l0, rnn.bias_ih_l0
    hooked = bool(embedding._forward_hooks or embedding._forward_pre_hooks)
    if (dropout.p == 0 or not dropout.training) and embedding.num_embeddings <= tokens.numel() and not hooked:
        # Embedding then projection is linear in the one-hot tokens, so project the vocabulary's table
        # once and gather its rows: (V x E x G*H) multiply-adds instead of (B*T x E x G*H), and the
        # backward pass sums rows per word. Dropout between the two would break this, and the
        # embedding module is not called, so hooks on it send the tokens through it instead.
        table = F.linear(embedding.weight, w_ih, b_ih)  # (V, G*H)
        x_proj = F.embedding(tokens.t(), table)  # (T, B, G*H)
        return _fused_projected(cell, rnn, x_proj, lengths)
    # Dropout in the (B, T, E) layout of the stock path, so that a seed gives the same masks in both.
    return _fused_from_embedded(cell, rnn, dropout(embedding(tokens)).transpose(0, 1), lengths)


def _fused_from_embedded(cell, rnn, x, lengths) -> torch.Tensor:
    """The fused kernel on time-major embedded input x (T, B, E)."""
    x_proj = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)  # (T, B, G*H): all steps in one GEMM
    return _fused_projected(cell, rnn, x_proj, lengths)


def _fused_projected(cell, rnn, x_proj, lengths) -> torch.Tensor:
    steps, batch = x_proj.shape[:2]
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.long)
    else:
        lengths = lengths.to(device="cpu", dtype=torch.long).clamp(1, steps)
    return fused.last_state(cell, x_proj, rnn.weight_hh_l0, rnn.bias_hh_l0, lengths)
