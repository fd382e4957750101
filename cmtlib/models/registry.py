"""One registry of models: name -> builder. Adding a baseline is one entry in MODELS.

A builder is a class taking the ModelConfig fields other than ``model`` as keywords (``tasks``,
``width``, ``encoder_weights``, ``head_hidden``, which it may ignore where they do not apply, and
the switches it declares in ``SWITCHES``) and returning an ``nn.Module`` that follows DESIGN.md's Model contract: ``forward``
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


def switch_fields() -> tuple[str, ...]:
    """The ModelConfig fields that are switches (cmtlib.configs.switch)."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if "switch" in f.metadata)


def undeclared_switches(name: str) -> dict[str, Any]:
    """The switches model ``name`` does not declare (ContractModel.SWITCHES), at their defaults: what
    a run's params take when such a model is trained beside a run that has them on."""
    declared = getattr(MODELS[name], "SWITCHES", ())
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    return {k: defaults[k] for k in switch_fields() if k not in declared}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model a ModelConfig names, its other fields as keywords; a switch the model does not
    declare is left out when off and refused when on (ConfigError naming the models that take it)."""
    if cfg.model not in MODELS:
        raise UnknownNameError(f"unknown model {cfg.model!r}; registered models: {', '.join(sorted(MODELS))}")
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "model"}
    for key, default in undeclared_switches(cfg.model).items():
        if kwargs.pop(key) != default:
            takers = [n for n in MODELS if key in getattr(MODELS[n], "SWITCHES", ())]
            raise ConfigError(f"{key} is not a switch of {cfg.model}; models that take it: {', '.join(takers)}")
    return create_model(cfg.model, **kwargs)
