"""SentimentRNN: Embedding -> LSTM | GRU | SimpleRNN -> Dense(1), parameterised exactly as Keras.

The recurrent layer's weights live in PyTorch's own nn.LSTM / nn.GRU / nn.RNN. On GPUs those run
(cuDNN). On the CPU, in float32, forward uses rnnsent's fused kernel (rnnsent/fused.py) where it can
be built, because the stock CPU layers are dominated by per-step dispatch; `impl="torch"` forces the
stock layers. Either way there is no Python loop over time steps.

Keras and PyTorch differ in one place that changes the parameter count: PyTorch's LSTM and
Elman RNN carry two bias vectors (input and recurrent) where Keras has one. The two are only
ever added, so rnnsent keeps PyTorch's recurrent bias as a zero, non-trainable buffer: the
kernels see the tensors they expect and the trainable parameters are Keras' to the last one.
Keras' GRU with reset_after=True (its default since Keras 2.3) has both biases, laid out as
PyTorch's, so the GRU keeps both as parameters.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from rnnsent import fused

# One mapping from every accepted name to (canonical name, PyTorch layer, gates per unit).
_CELLS = {
    "lstm": ("lstm", nn.LSTM, 4),
    "gru": ("gru", nn.GRU, 3),
    "rnn": ("rnn", nn.RNN, 1),
    "simplernn": ("rnn", nn.RNN, 1),
}
CELLS = ("lstm", "gru", "rnn")
KERAS_CELL_NAMES = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}
INITS = ("keras", "torch")

# PyTorch's GRU gate blocks are (r, z, n); Keras' are (z, r, h). LSTM blocks agree (i, f, g/c, o).
# KERAS_GATE_ORDER[cell][j] is the Keras block that holds PyTorch block j.
KERAS_GATE_ORDER = {"lstm": (0, 1, 2, 3), "gru": (1, 0, 2), "rnn": (0,)}


def canonical_cell(cell: str) -> str:
    """'GRU', 'gru' -> 'gru'; 'SimpleRNN' -> 'rnn'. Unknown names raise ValueError listing the valid ones."""
    key = str(cell).strip().lower()
    if key not in _CELLS:
        raise ValueError(
            f"unknown cell {cell!r}: choose one of lstm, gru, rnn "
            "(the Keras names LSTM, GRU and SimpleRNN are accepted too)"
        )
    return _CELLS[key][0]


def permute_gates(w: torch.Tensor, order: tuple[int, ...], dim: int = 0) -> torch.Tensor:
    """Reorder the gate blocks of a stacked weight or bias along `dim` (block j <- block order[j])."""
    if len(order) == 1:
        return w
    blocks = w.chunk(len(order), dim=dim)
    return torch.cat([blocks[k] for k in order], dim=dim)


class SentimentRNN(nn.Module):
    """Embedding(vocab_size, embed_dim) -> one recurrent layer -> Linear(hidden_size, 1).

    forward(tokens, lengths=None) takes a LongTensor (batch, time) of token ids and returns logits
    of shape (batch,). Without lengths the input is taken as pre-padded (Keras' pad_sequences) and the
    state after the last column is used. With lengths the input is right-padded and the state
    after each row's last real token is used, so the padding after it changes nothing.
    """

    def __init__(
        self,
        cell: str = "gru",
        vocab_size: int = 5000,
        embed_dim: int = 32,
        hidden_size: int = 100,
        embed_dropout: float = 0.0,
        output_dropout: float = 0.0,
        init: str = "keras",
        word_dropout: float = 0.0,
        impl: str = "auto",
    ):
        super().__init__()
        self.cell = canonical_cell(cell)
        for name, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("embed_dropout", embed_dropout), ("output_dropout", output_dropout),
                            ("word_dropout", word_dropout)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
        self.vocab_size, self.embed_dim, self.hidden_size = vocab_size, embed_dim, hidden_size
        self.embed_dropout, self.output_dropout, self.init = float(embed_dropout), float(output_dropout), init
        self.word_dropout = float(word_dropout)
        # How the recurrent layer runs, not what it computes: not part of config() or checkpoints.
        self.impl = impl

        _, layer, self.gates = _CELLS[self.cell]
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = layer(embed_dim, hidden_size, batch_first=True)
        if self.cell != "gru":
            # Keras has a single bias: keep PyTorch's second one as a zero buffer (see module docstring).
            # Not persistent, so state_dict() holds exactly the Keras weights.
            del self.rnn.bias_hh_l0
            self.rnn.register_buffer("bias_hh_l0", torch.zeros(self.gates * hidden_size), persistent=False)
            self.rnn._init_flat_weights()
        self.drop_in = nn.Dropout(self.embed_dropout)
        self.drop_out = nn.Dropout(self.output_dropout)
        self.fc = nn.Linear(hidden_size, 1)
        self.reset_parameters()

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in fused.IMPLS:
            raise ValueError(f"unknown impl {value!r}: choose one of {', '.join(fused.IMPLS)}")
        self._impl = value

    def uses_fused(self, tokens: torch.Tensor) -> bool:
        """Whether forward(tokens) takes the fused CPU kernel: impl "auto" or "fused", CPU, float32,
        no CPU autocast. impl="fused" raises where that is impossible instead of falling back."""
        if self._impl == "torch":
            return False
        reasons = []
        if tokens.device.type != "cpu":
            reasons.append(f"input is on {tokens.device.type}")
        if self.embedding.weight.dtype != torch.float32:
            reasons.append(f"weights are {self.embedding.weight.dtype}")
        if torch.is_autocast_enabled("cpu"):
            reasons.append("CPU autocast is on")
        if not reasons and not fused.available():
            reasons.append(fused.status())
        if reasons and self._impl == "fused":
            raise RuntimeError(f"impl='fused' cannot run here: {'; '.join(reasons)}. Use impl='auto' or 'torch'.")
        return not reasons

    def config(self) -> dict:
        """The plain arguments that rebuild this model: SentimentRNN(**model.config())."""
        return dict(
            cell=self.cell, vocab_size=self.vocab_size, embed_dim=self.embed_dim,
            hidden_size=self.hidden_size, embed_dropout=self.embed_dropout,
            output_dropout=self.output_dropout, init=self.init, word_dropout=self.word_dropout,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.init == "torch":
            self.embedding.reset_parameters()
            self.rnn.reset_parameters()
            if self.cell != "gru":
                self.rnn.bias_hh_l0.zero_()
            self.fc.reset_parameters()
            return
        # Keras defaults: uniform(-0.05, 0.05) embeddings, glorot_uniform kernels over the whole
        # (input, gates * units) matrix, orthogonal recurrent kernel over (units, gates * units),
        # zero biases, and LSTM's unit_forget_bias. Built in Keras' layout, then moved into PyTorch's,
        # so the statistics are Keras' whatever the gate order.
        order = KERAS_GATE_ORDER[self.cell]
        self.embedding.weight.uniform_(-0.05, 0.05)
        kernel = _glorot_uniform(self.embed_dim, self.gates * self.hidden_size)  # (E, G*H), Keras layout
        recurrent = _orthogonal(self.hidden_size, self.gates * self.hidden_size)  # (H, G*H)
        self.rnn.weight_ih_l0.copy_(permute_gates(kernel.t(), order))  # (G*H, E)
        self.rnn.weight_hh_l0.copy_(permute_gates(recurrent.t(), order))  # (G*H, H)
        self.rnn.bias_ih_l0.zero_()
        self.rnn.bias_hh_l0.zero_()
        if self.cell == "lstm":
            self.rnn.bias_ih_l0[self.hidden_size: 2 * self.hidden_size] = 1.0  # forget gate
        self.fc.weight.copy_(_glorot_uniform(self.hidden_size, 1).t())
        self.fc.bias.zero_()

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.word_dropout > 0:
            # Word dropout: in training, a word becomes "unknown" (id 2) with this probability, so the
            # model cannot lean on a few strong words. Padding (0) and the start token (1) stay.
            drop = torch.rand(tokens.shape, device=tokens.device) < self.word_dropout  # (B, T)
            tokens = tokens.masked_fill(drop & (tokens > 2), 2)
        if self.uses_fused(tokens):
            return self.fc(self.drop_out(self._fused_last(tokens, lengths))).squeeze(-1)
        x = self.drop_in(self.embedding(tokens))  # (B, T, E)
        out, _ = self.rnn(x)  # (B, T, H)
        if lengths is None:
            last = out[:, -1]  # (B, H): pre-padded input ends with real tokens
        else:
            # Right-padded input: the output at each row's last real step; later steps never feed back into it.
            idx = (lengths.to(out.device).long().clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, out.size(-1))
            last = out.gather(1, idx).squeeze(1)  # (B, H)
        return self.fc(self.drop_out(last)).squeeze(-1)  # (B,)

    def _fused_last(self, tokens: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """The recurrent layer's last real state through the fused CPU kernel (time-major inside)."""
        steps = tokens.size(1)
        w_ih, b_ih = self.rnn.weight_ih_l0, self.rnn.bias_ih_l0
        hooked = bool(self.embedding._forward_hooks or self.embedding._forward_pre_hooks)
        if (self.drop_in.p == 0 or not self.training) and self.vocab_size <= tokens.numel() and not hooked:
            # Embedding then projection is linear in the one-hot tokens, so project the vocabulary's table
            # once and gather its rows: (V x E x G*H) multiply-adds instead of (B*T x E x G*H), and the
            # backward pass sums rows per word. Dropout between the two would break this, and the
            # embedding module is not called, so hooks on it send the tokens through it instead.
            table = F.linear(self.embedding.weight, w_ih, b_ih)  # (V, G*H)
            x_proj = F.embedding(tokens.t(), table)  # (T, B, G*H)
        else:
            # Dropout in the (B, T, E) layout of the stock path, so that a seed gives the same masks in both.
            x = self.drop_in(self.embedding(tokens)).transpose(0, 1)  # (T, B, E)
            x_proj = F.linear(x, w_ih, b_ih)  # all steps in one GEMM
        if lengths is None:
            lengths = torch.full((tokens.size(0),), steps, dtype=torch.long)
        else:
            lengths = lengths.to(device="cpu", dtype=torch.long).clamp(1, steps)
        return fused.last_state(self.cell, x_proj, self.rnn.weight_hh_l0, self.rnn.bias_hh_l0, lengths)

    def summary(self, time_steps: int | None = 500) -> str:
        """A Keras-style table: layer, output shape, trainable parameters, and the totals."""
        t = "None" if time_steps is None else str(time_steps)
        rows = [
            ("embedding (Embedding)", f"(None, {t}, {self.embed_dim})", self.embedding),
            (f"{self.cell} ({KERAS_CELL_NAMES[self.cell]})", f"(None, {self.hidden_size})", self.rnn),
            ("dense (Dense)", "(None, 1)", self.fc),
        ]
        line = "_" * 65
        out = [f'Model: "sentiment_{self.cell}"', line,
               f"{'Layer (type)':<30}{'Output Shape':<22}{'Param #':>13}", "=" * 65]
        total = 0
        for name, shape, module in rows:
            n = count_parameters(module)
            total += n
            out.append(f"{name:<30}{shape:<22}{n:>13,}")
        out += ["=" * 65, f"Total params: {total:,}", f"Trainable params: {total:,}",
                "Non-trainable params: 0", line]
        return "\n".join(out)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _glorot_uniform(fan_in: int, fan_out: int) -> torch.Tensor:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.empty(fan_in, fan_out).uniform_(-limit, limit)


def _orthogonal(rows: int, cols: int) -> torch.Tensor:
    """Keras' Orthogonal initializer for a (rows, cols) kernel: orthonormal rows or columns."""
    a = torch.randn(max(rows, cols), min(rows, cols))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # LAPACK's rounding depends on its thread count: the same weights for any --threads
    try:
        q, r = torch.linalg.qr(a)
    finally:
        torch.set_num_threads(threads)
    q = q * torch.sign(torch.diagonal(r))  # make the decomposition unique, as Keras does
    return q.t() if rows < cols else q
