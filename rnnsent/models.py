"""SentimentRNN: Embedding -> LSTM | GRU | SimpleRNN -> Dense(1) (or Dense(K) for K > 2 classes), exactly as Keras.

The forward pass reads as the architecture: embed, recur, take the last state, project. How the
recurrence runs (rnnsent's fused CPU kernel or PyTorch's layers) and why its weights hold exactly
Keras' parameters is rnnsent.recurrent's business; the settings are rnnsent.config.ModelConfig's.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rnnsent import recurrent
from rnnsent.config import (CELL_TABLE, CELLS, INITS, KERAS_CELL_NAMES, KERAS_GATE_ORDER,  # noqa: F401 (re-exported)
                            ModelConfig, canonical_cell)


def permute_gates(w: torch.Tensor, order: tuple[int, ...], dim: int = 0) -> torch.Tensor:
    """Reorder the gate blocks of a stacked weight or bias along `dim` (block j <- block order[j])."""
    if len(order) == 1:
        return w
    blocks = w.chunk(len(order), dim=dim)
    return torch.cat([blocks[k] for k in order], dim=dim)


class SentimentRNN(nn.Module):
    """Embedding(vocab_size, embed_dim) -> one recurrent layer -> Linear(hidden_size, 1), or
    Linear(hidden_size, num_classes) when num_classes > 2.

    forward(tokens, lengths=None) takes a LongTensor (batch, time) of token ids and returns logits
    of shape (batch,), or (batch, num_classes) for more than two classes (see rnnsent.objective). Without lengths the input is taken as pre-padded (Keras' pad_sequences) and the
    state after the last column is used. With lengths the input is right-padded and the state
    after each row's last real token is used, so the padding after it changes nothing.
    """

    def __init__(self, *args, impl: str = "auto", **kwargs):
        """SentimentRNN(cell="gru", vocab_size=5000, embed_dim=32, hidden_size=100, embed_dropout=0.0,
        output_dropout=0.0, init="keras", word_dropout=0.0, num_classes=2): ModelConfig's fields, positional in that order,
        or one ModelConfig. impl says how the recurrent layer runs (see rnnsent.recurrent), not what it
        computes, so it is not part of config() or checkpoints."""
        super().__init__()
        settings = args[0] if len(args) == 1 and isinstance(args[0], ModelConfig) and not kwargs else ModelConfig(*args, **kwargs)
        for name, value in settings.model_args().items():  # self.cell, self.vocab_size, ...
            setattr(self, name, value)
        self.impl = recurrent.check_impl(impl)
        self.gates = CELL_TABLE[self.cell].gates
        self.embedding = nn.Embedding(self.vocab_size, self.embed_dim)
        self.rnn = recurrent.make_layer(self.cell, self.embed_dim, self.hidden_size)
        self.drop_in = nn.Dropout(self.embed_dropout)
        self.drop_out = nn.Dropout(self.output_dropout)
        self.outputs = 1 if self.num_classes == 2 else self.num_classes  # two classes: one logit, as Keras' exercise
        self.fc = nn.Linear(self.hidden_size, self.outputs)
        self.reset_parameters()

    def config(self) -> dict:
        """The plain arguments that rebuild this model: SentimentRNN(**model.config())."""
        return {name: getattr(self, name) for name in ModelConfig.__dataclass_fields__}

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
        recurrent_kernel = _orthogonal(self.hidden_size, self.gates * self.hidden_size)  # (H, G*H)
        self.rnn.weight_ih_l0.copy_(permute_gates(kernel.t(), order))  # (G*H, E)
        self.rnn.weight_hh_l0.copy_(permute_gates(recurrent_kernel.t(), order))  # (G*H, H)
        self.rnn.bias_ih_l0.zero_()
        self.rnn.bias_hh_l0.zero_()
        if self.cell == "lstm":
            self.rnn.bias_ih_l0[self.hidden_size: 2 * self.hidden_size] = 1.0  # forget gate
        self.fc.weight.copy_(_glorot_uniform(self.hidden_size, self.outputs).t())
        self.fc.bias.zero_()

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.word_dropout > 0:
            # Word dropout: in training, a word becomes "unknown" (id 2) with this probability, so the
            # model cannot lean on a few strong words. Padding (0) and the start token (1) stay.
            drop = torch.rand(tokens.shape, device=tokens.device) < self.word_dropout  # (B, T)
            tokens = tokens.masked_fill(drop & (tokens > 2), 2)
        # embed -> dropout -> recur -> the state after each row's last real token
        last = recurrent.last_state(self.cell, self.rnn, self.embedding, self.drop_in, tokens, lengths, self.impl)  # (B, H)
        logits = self.fc(self.drop_out(last))  # (B, 1) or (B, K)
        return logits.squeeze(-1) if self.outputs == 1 else logits  # (B,) or (B, K)

    def forward_embedded(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """forward() from embedded tokens x = self.embedding(tokens), (B, T, E): the same logits, differentiable
        with respect to x on every path (fused kernel included), for attributions (rnnsent.explain)."""
        last = recurrent.embedded_last_state(self.cell, self.rnn, self.drop_in(x), lengths, self.impl)  # (B, H)
        logits = self.fc(self.drop_out(last))  # (B, 1) or (B, K)
        return logits.squeeze(-1) if self.outputs == 1 else logits  # (B,) or (B, K)

    def summary(self, time_steps: int | None = 500) -> str:
        """A Keras-style table: layer, output shape, trainable parameters, and the totals."""
        t = "None" if time_steps is None else str(time_steps)
        rows = [
            ("embedding (Embedding)", f"(None, {t}, {self.embed_dim})", self.embedding),
            (f"{self.cell} ({KERAS_CELL_NAMES[self.cell]})", f"(None, {self.hidden_size})", self.rnn),
            ("dense (Dense)", f"(None, {self.outputs})", self.fc),
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
