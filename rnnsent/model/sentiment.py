"""SentimentRNN: Embedding -> LSTM | GRU | SimpleRNN -> Dense(1) (or Dense(K) for K > 2 classes), exactly as Keras;
optionally stacked (num_layers) and bidirectional, as Keras' Bidirectional(merge_mode="concat").

The forward pass is features, then output dropout and the dense head. The features are one call,
rnnsent.model.recurrent.encode: it embeds the tokens, applies the embedding dropout, runs every layer and direction
and returns the final states. Embedding happens inside it because the fused CPU kernel can skip it: when no
dropout applies it reads each token's input projection from a table computed once per vocabulary word. How the
recurrence runs (that kernel or PyTorch's layers: the layer is an rnnsent.nn layer) and why its weights hold exactly
Keras' parameters is rnnsent.model.recurrent's business; the settings are rnnsent.config.ModelConfig's.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from rnnsent import nn as layers
from rnnsent.model import recurrent
from rnnsent.config import CELL_TABLE, KERAS_CELL_NAMES, KERAS_GATE_ORDER, ModelConfig


def permute_gates(w: torch.Tensor, order: tuple[int, ...], dim: int = 0) -> torch.Tensor:
    """Reorder the gate blocks of a stacked weight or bias along `dim` (block j <- block order[j])."""
    if len(order) == 1:
        return w
    blocks = w.chunk(len(order), dim=dim)
    return torch.cat([blocks[k] for k in order], dim=dim)


class SentimentRNN(nn.Module):
    """Embedding(vocab_size, embed_dim) -> num_layers recurrent layers (bidirectional: two directions each,
    concatenated) -> Linear(hidden_size * directions, 1), or Linear(..., num_classes) when num_classes > 2.

    forward(tokens, lengths=None) takes a LongTensor (batch, time) of token ids and returns logits
    of shape (batch,), or (batch, num_classes) for more than two classes (see rnnsent.model.objective). Without
    lengths the input is taken as pre-padded (Keras' pad_sequences) and the state after the last column is used.
    With lengths the input is right-padded and the state after each row's last real token is used, so the padding
    after it changes nothing (a backward direction starts at that token). features() is what the head sees,
    sequence() the last layer's outputs at every step.
    """

    def __init__(self, *args, impl: str = "auto", **kwargs):
        """SentimentRNN(cell="gru", vocab_size=5000, embed_dim=32, hidden_size=100, embed_dropout=0.0,
        output_dropout=0.0, init="keras", word_dropout=0.0, num_classes=2, num_layers=1, bidirectional=False,
        layer_dropout=0.0): ModelConfig's fields, positional in that order,
        or one ModelConfig. impl says how the recurrent layer runs (see rnnsent.nn), not what it
        computes, so it is not part of config() or checkpoints."""
        super().__init__()
        settings = (
            args[0]
            if len(args) == 1 and isinstance(args[0], ModelConfig) and not kwargs
            else ModelConfig(*args, **kwargs)
        )
        for name, value in settings.model_args().items():  # self.cell, self.vocab_size, ...
            setattr(self, name, value)
        self.gates = CELL_TABLE[self.cell].gates
        self.embedding = nn.Embedding(self.vocab_size, self.embed_dim)
        self.directions = settings.directions
        self.rnn = recurrent.make_layer(self.cell, self.embed_dim, self.hidden_size, self.num_layers,
                                        self.bidirectional, self.layer_dropout, impl=impl)
        self.drop_in = nn.Dropout(self.embed_dropout)
        self.drop_out = nn.Dropout(self.output_dropout)
        self.outputs = 1 if self.num_classes == 2 else self.num_classes  # two classes: one logit, as Keras' exercise
        self.fc = nn.Linear(self.hidden_size * self.directions, self.outputs)
        self.reset_parameters()

    @property
    def impl(self) -> str:
        """How the recurrent layer runs: "auto", "fused" or "torch" (rnnsent.nn); the layer's own setting."""
        return getattr(self.rnn, "impl", "auto")

    @impl.setter
    def impl(self, value: str) -> None:
        self.rnn.impl = layers.check_impl(value)

    def config(self) -> dict:
        """The plain arguments that rebuild this model: SentimentRNN(**model.config())."""
        return {name: getattr(self, name) for name in ModelConfig.__dataclass_fields__}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.init == "torch":
            self.embedding.reset_parameters()
            self.rnn.reset_parameters()
            if self.cell != "gru":
                for suffix in recurrent.weight_suffixes(self.rnn):
                    getattr(self.rnn, f"bias_hh{suffix}").zero_()
            self.fc.reset_parameters()
            return
        # Keras defaults: uniform(-0.05, 0.05) embeddings, glorot_uniform kernels over the whole
        # (input, gates * units) matrix, orthogonal recurrent kernel over (units, gates * units),
        # zero biases, and LSTM's unit_forget_bias. Built in Keras' layout, then moved into PyTorch's,
        # so the statistics are Keras' whatever the gate order. Each layer and direction is initialised
        # on its own, as Keras builds each of its layers (a layer above reads H * directions inputs).
        order = KERAS_GATE_ORDER[self.cell]
        self.embedding.weight.uniform_(-0.05, 0.05)
        for k, suffix in enumerate(recurrent.weight_suffixes(self.rnn)):
            fan_in = self.embed_dim if k < self.directions else self.hidden_size * self.directions
            kernel = _glorot_uniform(fan_in, self.gates * self.hidden_size)  # (in, G*H), Keras layout
            recurrent_kernel = _orthogonal(self.hidden_size, self.gates * self.hidden_size)  # (H, G*H)
            getattr(self.rnn, f"weight_ih{suffix}").copy_(permute_gates(kernel.t(), order))  # (G*H, in)
            getattr(self.rnn, f"weight_hh{suffix}").copy_(permute_gates(recurrent_kernel.t(), order))  # (G*H, H)
            bias = getattr(self.rnn, f"bias_ih{suffix}")
            bias.zero_()
            getattr(self.rnn, f"bias_hh{suffix}").zero_()
            if self.cell == "lstm":
                bias[self.hidden_size: 2 * self.hidden_size] = 1.0  # forget gate
        self.fc.weight.copy_(_glorot_uniform(self.hidden_size * self.directions, self.outputs).t())
        self.fc.bias.zero_()

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # features (embed -> dropout -> recur -> the final states, in recurrent.encode) -> dropout -> project
        logits = self.fc(self.drop_out(self.features(tokens, lengths)))  # (B, 1) or (B, K)
        return logits.squeeze(-1) if self.outputs == 1 else logits  # (B,) or (B, K)

    def features(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """What the head sees (before output_dropout), (B, H * directions): the forward state after each row's
        last real token, then (bidirectional) the backward state after its first."""
        return self._encode(tokens, lengths, sequence=False)[0]

    def sequence(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The last recurrent layer's outputs at every step, (B, T, H * directions), zeros past each row's
        length: Keras' return_sequences=True. The supported way to read the layer's outputs on any path."""
        return self._encode(tokens, lengths, sequence=True)[1]

    def _encode(self, tokens, lengths, sequence: bool):
        if lengths is not None:
            check_lengths(lengths, tokens)
        if self.training and self.word_dropout > 0:
            # Word dropout: in training, a word becomes "unknown" (id 2) with this probability, so the
            # model cannot lean on a few strong words. Padding (0) and the start token (1) stay.
            drop = torch.rand(tokens.shape, device=tokens.device) < self.word_dropout  # (B, T)
            tokens = tokens.masked_fill(drop & (tokens > 2), 2)
        return recurrent.encode(self.rnn, self.embedding, self.drop_in, tokens, lengths, self.impl, sequence)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first: the forward is Python (the layer choice, the fused operator).
        raise RuntimeError("SentimentRNN cannot be compiled by torch.jit.script; torch.jit.trace, torch.export and "
                           "torch.onnx.export work (they record PyTorch's own layers, as impl=\"torch\" runs them)")

    def forward_embedded(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """forward() from embedded tokens x = self.embedding(tokens), (B, T, E): the same logits, differentiable
        with respect to x on every path (fused kernel included), for attributions (rnnsent.explain)."""
        if lengths is not None:
            check_lengths(lengths, x[..., 0])
        # (B, H * directions)
        last = recurrent.embedded_last_state(self.rnn, self.drop_in(x), lengths, self.impl)
        logits = self.fc(self.drop_out(last))  # (B, 1) or (B, K)
        return logits.squeeze(-1) if self.outputs == 1 else logits  # (B,) or (B, K)

    def summary(self, time_steps: int | None = 500) -> str:
        """A Keras-style table: layer, output shape, parameters, and the totals (frozen ones as non-trainable)."""
        t = "None" if time_steps is None else str(time_steps)
        keras_name = KERAS_CELL_NAMES[self.cell]
        rows = [("embedding (Embedding)", f"(None, {t}, {self.embed_dim})", self.embedding.weight.numel())]
        for k in range(self.num_layers):  # Keras' names: lstm, lstm_1, ... or bidirectional, bidirectional_1, ...
            base = "bidirectional" if self.bidirectional else self.cell
            name = (
                f"{base}{f'_{k}' if k else ''} ({f'Bidirectional({keras_name})' if self.bidirectional else keras_name})"
            )
            units = self.hidden_size * self.directions
            shape = f"(None, {t}, {units})" if k < self.num_layers - 1 else f"(None, {units})"
            rows.append((name, shape, layer_parameters(self.rnn, k)))
        rows.append(("dense (Dense)", f"(None, {self.outputs})", sum(p.numel() for p in self.fc.parameters())))
        width = max(30, max(len(r[0]) for r in rows) + 2)
        line = "_" * (width + 35)
        out = [f'Model: "sentiment_{self.cell}"', line,
               f"{'Layer (type)':<{width}}{'Output Shape':<22}{'Param #':>13}", "=" * (width + 35)]
        total = 0
        for name, shape, n in rows:
            total += n
            out.append(f"{name:<{width}}{shape:<22}{n:>13,}")
        trainable = count_parameters(self)
        out += ["=" * (width + 35), f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}", line]
        return "\n".join(out)


def check_lengths(lengths: torch.Tensor, tokens: torch.Tensor) -> None:
    """Every row's length in 1..width: a longer one would read past the row, a zero or negative one take the
    state before any token, silently. Checked where it costs no wait for the device: on CPU, and outside
    training on CUDA (the trainer's own batches come from Batcher, whose lengths are right by construction)."""
    if lengths.device.type != "cpu" and torch.is_grad_enabled():
        return
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return  # reading the values would break the graph (or freeze them into a trace); eager calls check
    if lengths.shape != tokens.shape[:1]:
        raise ValueError(f"lengths has shape {tuple(lengths.shape)} for a batch of {tokens.size(0)} rows")
    if torch._C._functorch.is_functorch_wrapped_tensor(lengths):
        return  # under torch.func.vmap a sample's values cannot be read (the kernel checks them)
    if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > tokens.size(1)):
        raise ValueError(f"lengths must be in 1..{tokens.size(1)} (the batch's width); got {int(lengths.min())} to "
                         f"{int(lengths.max())}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def layer_parameters(rnn: nn.Module, layer: int) -> int:
    """Parameters of one stacked layer (both directions), trainable or frozen: one row of Keras' summary."""
    return sum(p.numel() for name, p in rnn.named_parameters() if re.search(rf"_l{layer}(_reverse)?$", name))


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
