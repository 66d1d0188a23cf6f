"""What trains on a run started from a trained model: --freeze, --unfreeze-after and --body-lr-scale.

--freeze keeps a group's weights as they are (requires_grad off: no gradient, so the optimizer leaves them
bit for bit): the embedding, the recurrent layer, both (body), or a kept classifier's head. --unfreeze-after N
is ULMFiT's gradual unfreezing (Howard & Ruder 2018): every N epochs the topmost frozen group starts training,
the head or the recurrent layer first, the embedding last. Which groups are frozen is a function of the epoch
alone (frozen_at), so a resumed run freezes what the uninterrupted one did. --body-lr-scale: on an --init-from
run the optimizer has two parameter groups, the body (embedding and recurrent layer) at lr x the scale and the
head at lr (param_groups; the Trainer sets each group's rate as lr_at(step) x its "lr_scale").
"""
from __future__ import annotations

from rnnsent.config import TrainConfig

# the model's modules of each --freeze choice, top first (the order gradual unfreezing releases them in)
GROUPS = {"embedding": ("embedding",), "recurrent": ("rnn",), "body": ("rnn", "embedding"), "head": ("fc",)}
NAMES = {"embedding": "the embedding", "rnn": "the recurrent layer", "fc": "the head"}


def check(config: TrainConfig) -> None:
    """The refusals that need no data: freezing needs trained weights, unfreezing something frozen."""
    if config.freeze and not (config.init_from or config.pretrained):
        raise ValueError(f"--freeze {config.freeze} keeps trained weights as they are: it needs --init-from (or "
                         "--pretrained); freezing a new model's random weights teaches nothing")
    if config.unfreeze_after is not None and not config.freeze:
        raise ValueError(f"--unfreeze-after {config.unfreeze_after} releases what --freeze holds: give --freeze too")


def frozen_at(config: TrainConfig, epoch: int) -> tuple[str, ...]:
    """The model's modules frozen during `epoch` (counted from 0)."""
    if not config.freeze:
        return ()
    groups = GROUPS[config.freeze]
    return groups[epoch // config.unfreeze_after:] if config.unfreeze_after else groups


def set_trainable(model, config: TrainConfig, epoch: int) -> str:
    """Freeze what frozen_at says for `epoch` and let the rest train; a log line when that changed anything."""
    if not config.freeze:
        return ""
    frozen, changed = frozen_at(config, epoch), []
    for name in NAMES:
        for p in getattr(model, name).parameters():
            if p.requires_grad == (name in frozen):
                p.requires_grad_(name not in frozen)
                changed.append(name)
    if not changed:
        return ""
    return (f"epoch {epoch + 1}: frozen: {', '.join(NAMES[n] for n in frozen) or 'nothing'} (--freeze "
            f"{config.freeze}" + (f", --unfreeze-after {config.unfreeze_after}" if config.unfreeze_after else "") + ")")


def param_groups(model, config: TrainConfig):
    """The optimizer's parameters: on an --init-from run two groups, the body at lr x body_lr_scale and the head at
    lr; else all of them in one group, as always."""
    if not config.init_from:
        return model.parameters()
    body = [*model.embedding.parameters(), *model.rnn.parameters()]
    head = list(model.fc.parameters())
    return [{"params": body, "lr_scale": config.body_lr_scale}, {"params": head, "lr_scale": 1.0}]
