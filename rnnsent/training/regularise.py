"""Training-only regularisers that leave the predicting model as it is: an average of the weights
(TrainConfig.ema) and adversarial perturbations of the embeddings (TrainConfig.adversarial).

Label smoothing is a change of the loss, so it lives in rnnsent.model.objective.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of a model's floating-point state (weights and buffers).

    After each optimizer step, avg <- d * avg + (1 - d) * weights, where d = min(decay, (1 + n) / (10 + n))
    after n updates, so the first steps (far from anything worth keeping) fade fast. `swapped(model)`
    puts the average into the model for validation, best.pt and the test, then restores the live weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = model.state_dict()
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in names], [live[k].detach() for k in names], 1.0 - d)
        self.updates += 1

    @contextlib.contextmanager
    def swapped(self, model: nn.Module):
        """Within the block the model holds the average; afterwards its own weights again, bit for bit."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(live, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(
                f"the weight average in the checkpoint is for another model (differs in {sorted(missing)})"
            )
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


class EmbeddingPerturbation:
    """Adversarial training on the embeddings (Miyato et al., 2016), through a forward hook on the embedding.

    Step 1: a normal forward and backward; the hook keeps the gradient g of the loss with respect to the
    embedded review (B, T, E). Step 2: `aim(epsilon)` turns it into r = epsilon * ||e|| * g / ||g|| per
    review, the direction that raises the loss fastest, as a share epsilon of the review's own embedding
    norm ||e|| (its words, not its padding). Miyato et al. fix ||r|| and normalise the embeddings instead;
    a relative size keeps the model's prediction path exactly Embedding -> cell -> Dense, and the
    embeddings cannot outgrow the perturbation. The next forward adds r to the embeddings, and its loss is
    trained on as well. Padding after a review's end gets no gradient, so it is not perturbed.
    """

    def __init__(self, embedding: nn.Embedding):
        self.embedded: torch.Tensor | None = None
        self.size: torch.Tensor | None = None  # ||e|| per review
        self.delta: torch.Tensor | None = None
        self._handle = embedding.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.delta is not None:
            return output + self.delta
        if torch.is_grad_enabled():
            if not output.requires_grad:  # a frozen embedding (--freeze): the gradient is still the direction
                output.requires_grad_()
            output.retain_grad()
            self.embedded = output
            words = (inputs[0] != 0).unsqueeze(-1)  # (B, T, 1): padding (id 0) is not part of the review
            self.size = (output.detach().float() * words).flatten(1).norm(dim=1)  # (B,)
        return output

    def aim(self, epsilon: float) -> None:
        g = self.embedded.grad if self.embedded is not None else None
        if g is None:
            raise RuntimeError("aim() needs a forward and backward pass through the embedding first")
        g = g.detach().float()
        scale = epsilon * self.size / g.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
        self.delta = (scale.view(-1, *([1] * (g.dim() - 1))) * g).to(self.embedded.dtype)
        self.embedded = self.size = None

    def close(self) -> None:
        self._handle.remove()
        self.embedded = self.delta = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
