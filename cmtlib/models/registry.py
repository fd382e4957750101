"""One registry of models: name -> builder. Adding a baseline is one entry in MODELS.

A builder is a callable taking the ModelConfig fields other than ``model`` as keywords (``tasks``,
``width``, ``encoder_weights``, ``head_hidden``; it may ignore those that do not apply but must
accept them) and returning an ``nn.Module`` that follows DESIGN.md's Model contract: ``forward``
returns a dict of raw logits (only the keys of tasks it does, ``embedding`` always) and
``describe()`` returns plain data (name, tasks, parameters, preprocessing, ...).
tests/test_model_contract.py checks every entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

from cmtlib.configs import ModelConfig
from cmtlib.errors import UnknownNameError
from cmtlib.models.classifiers import VGG19, DenseNet121, MobileNetV2, ResNet18
from cmtlib.models.cmtnet import CMTNet
from cmtlib.models.maskrcnn import MaskRCNNAdapter, MaskRCNNResNet50
from cmtlib.models.segnet_single import SegNet
from cmtlib.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cmtnet": CMTNet,
    "densenet121": DenseNet121,
    "mobilenet_v2": MobileNetV2,
    "resnet18": ResNet18,
    "vgg19": VGG19,
    "unet": UNet,
    "segnet": SegNet,
    "maskrcnn": MaskRCNNAdapter,
    "maskrcnn_resnet50": MaskRCNNResNet50,
}


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments ``cfg``.

    Raises:
        KeyError: ``name`` is not registered; the message lists the valid names.
    """
    if name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**cfg)


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model a ModelConfig names, passing its other fields as keywords."""
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "model"}
    return create_model(cfg.model, **kwargs)
