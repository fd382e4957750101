"""Which loss the engine trains a model with: the model's own, else the multi-task loss."""

from __future__ import annotations

from torch import nn

from cmtlib.losses import MultiTaskLoss


def loss_for(model: nn.Module, train_cfg=None):
    """The ``loss_fn(outputs, batch) -> (total, parts)`` for ``model``.

    A model that cannot learn from its contract outputs alone (Mask R-CNN needs instance targets)
    defines ``make_loss(train_cfg)``; every other model trains with MultiTaskLoss and the train
    config's loss weights. No branching on model types (STYLE.md rule 5).

    Args:
        model: the bare model (not a DDP / compile wrapper).
        train_cfg: a TrainConfig (or anything with w_lung .. w_other); None = weights 1.
    """
    make = getattr(model, "make_loss", None)
    if callable(make):
        return make(train_cfg)
    return MultiTaskLoss.from_config(train_cfg) if train_cfg is not None else MultiTaskLoss()
