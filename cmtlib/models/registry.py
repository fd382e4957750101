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
import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from torch import nn

from cmtlib.configs import ModelConfig
from cmtlib.errors import ConfigError, UnknownNameError

class _Registry(Mapping[str, Callable[..., nn.Module]]):
    """A read-only name -> model class mapping whose classes are imported on first use.

    Why not a dict of classes: the baselines' modules import torchvision, which pulls in torch's
    compiler stack (seconds of start-up); `cmt predict` with a CMTNet needs none of it. Keys,
    membership and iteration never import anything.
    """

    def __init__(self, entries: dict[str, str]):
        self._entries = dict(entries)  # name -> "module:Class"

    def __getitem__(self, name: str) -> Callable[..., nn.Module]:
        module, _, cls = self._entries[name].partition(":")
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


MODELS = _Registry({
    "cmtnet": "cmtlib.models.cmtnet:CMTNet",
    "densenet121": "cmtlib.models.classifiers:DenseNet121",
    "mobilenet_v2": "cmtlib.models.classifiers:MobileNetV2",
    "resnet18": "cmtlib.models.classifiers:ResNet18",
    "vgg19": "cmtlib.models.classifiers:VGG19",
    "unet": "cmtlib.models.unet:UNet",
    "segnet": "cmtlib.models.segnet_single:SegNet",
    "maskrcnn": "cmtlib.models.maskrcnn:MaskRCNNAdapter",
    "maskrcnn_resnet50": "cmtlib.models.maskrcnn:MaskRCNNResNet50",
})


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments ``cfg``.

    Raises:
        KeyError: ``name`` is not registered; the message lists the valid names.
    """
    if name not in MODELS:
        raise UnknownNameError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**cfg)


# ModelConfig fields set on the built model rather than passed to its builder: acquisition
# harmonisation (every model's `preprocess`) and lung focus (models with a lung output that support it).
OPTION_FIELDS = ("effective_px", "lung_focus")


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model a ModelConfig names, passing its other fields as keywords, then set the option
    fields: effective_px on the model's `preprocess` module, lung_focus on a model that supports it."""
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("model", *OPTION_FIELDS)}
    model = create_model(cfg.model, **kwargs)
    if cfg.effective_px:
        model.preprocess.effective_px = int(cfg.effective_px)
    if cfg.lung_focus:
        if not hasattr(model, "lung_focus") or getattr(model, "lung_decoder", None) is None:
            raise ConfigError(f"lung_focus needs a model that outlines the lungs itself (cmtnet with the lung task); "
                              f"{cfg.model} with tasks {list(cfg.tasks)} does not")
        model.lung_focus = True
    return model
