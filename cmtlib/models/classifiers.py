"""Classification baselines of the paper's Table IV: DenseNet121, MobileNetV2, ResNet18, VGG19 + FC.

Each is torchvision's feature extractor, global average pooling (the ``embedding``) and the same
three-layer FC heads as CMTNet (``ClassificationHead``), so that only the encoder differs from
CMTNet's classification branch. Outputs follow DESIGN.md without the segmentation keys.

``width`` narrows the networks where torchvision allows it cheaply, for CPU runs:
DenseNet121 scales growth_rate and num_init_features; MobileNetV2 uses torchvision's width_mult
(its last 1x1 conv stays 1280 wide, as torchvision keeps it for width_mult <= 1); VGG19 scales
every conv's channels; ResNet18 scales its stem's and stages' channels (cmtlib.models.resnet:
torchvision's ResNet class, narrowed). ImageNet weights fit only the unnarrowed networks.

VGG19 is torchvision's ``vgg19_bn``: CMTNet's "VGG16" encoder is ``vgg16_bn`` too (batch norm lets
narrow, randomly initialised CPU versions train at all).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Sequence

import torch
import torchvision
from torch import nn

from cmtlib.models.base import ContractModel
from cmtlib.models.encoder import EncoderOutput, ImageNetPreprocess
from cmtlib.models.heads import ClassificationHead
from cmtlib.models.resnet import NarrowResNet18
from cmtlib.models.weights import load_torchvision_weights

CLASSIFICATION_TASKS = ("healthy", "multilabel")
MIN_CHANNELS = 8
# torchvision's DenseNet files use pre-2018 names (norm.1 for norm1); torchvision renames them the same way.
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def classification_tasks(tasks: Sequence[str] | str) -> tuple[str, ...]:
    """The classification tasks a baseline classifier does: multilabel, and healthy if listed.

    Segmentation tasks in ``tasks`` are not done by a classifier and are ignored (ModelConfig's
    default lists all four).

    Raises:
        ValueError: ``multilabel`` (the COVID output) is missing, or a task name is unknown.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in ("lung", "disease", *CLASSIFICATION_TASKS)]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid tasks are lung, disease, healthy, multilabel")
    if "multilabel" not in tasks:
        raise ValueError(f"tasks {list(tasks)} lack 'multilabel': a classification baseline always predicts COVID / other disease")
    return tuple(t for t in CLASSIFICATION_TASKS if t in tasks)


def _scaled(c: int, width: float) -> int:
    if not width > 0:
        raise ValueError(f"width must be a positive channel multiplier (1.0 = the torchvision network), got {width!r}")
    return max(MIN_CHANNELS, int(round(c * width)))


def _densenet_remap(state: dict) -> dict:
    return {(m.group(1) + m.group(2) if (m := _DENSENET_OLD_KEY.match(k)) else k): v for k, v in state.items()}


class TorchvisionClassifier(ContractModel):
    """A torchvision encoder + GAP + CMTNet's FC heads. Subclasses set the class attributes.

    Args:
        tasks: healthy and/or multilabel (multilabel required); lung/disease are ignored.
        width: channel multiplier (see the module docstring; 1.0 = torchvision's network).
        encoder_weights: ``imagenet`` (local torchvision file, width 1.0 only), ``none`` or a path.
        head_hidden: hidden width of the FC heads.
        effective_px: acquisition harmonisation (ModelConfig.effective_px; 0 = off).

    Input: (B, 3 or 1, H, W) float in [0, 1], any H, W >= 32. Output: ``embedding``, ``healthy``
    (if a task), ``multilabel`` raw logits.
    """

    name = ""
    arch = ""  # torchvision's builder name (reports, messages)
    weights_file = ""  # torchvision's ImageNet file (its url's basename)
    tv_prefix = "features."  # torchvision's key prefix of the encoder part
    tv_skip: tuple[str, ...] = ("classifier.",)
    width_note = "scales channels"

    def __init__(self, tasks: Sequence[str] = ("healthy", "multilabel"), width: float = 1.0, encoder_weights: str = "imagenet", head_hidden: int = 256, effective_px: int = 0) -> None:
        super().__init__()
        self.tasks = classification_tasks(tasks)
        self.width = float(width)
        self.head_hidden = int(head_hidden)
        self.encoder_weights = str(encoder_weights)
        self.preprocess = ImageNetPreprocess(effective_px=effective_px)
        self.encoder, self.embedding_dim = self.build_encoder(self.width)
        narrowed = self.width != 1.0 and self.width_note != "ignored"
        self.encoder_weights_source = load_torchvision_weights(
            self.encoder, self.encoder_weights, arch=self.arch, file_name=self.weights_file, prefix=self.tv_prefix,
            skip=self.tv_skip, remap=_densenet_remap if self.arch == "densenet121" else None,
            imagenet_ok=f"ImageNet weights need width 1.0, got {self.width}" if narrowed else "",
        )
        self.healthy_head = ClassificationHead(self.embedding_dim, self.head_hidden, 2) if "healthy" in self.tasks else None
        self.multilabel_head = ClassificationHead(self.embedding_dim, self.head_hidden, 2)

    def build_encoder(self, width: float) -> tuple[nn.Module, int]:
        """(encoder whose output is the last conv block's map, its channels D)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward_features(self, x: torch.Tensor) -> EncoderOutput:
        """Preprocess and encode: the last conv block's output, what CAM and embeddings need.

        Shape:
            x: (B, 3 or 1, H, W) float in [0, 1].
            returns.features: (B, D, ~H/32, ~W/32); indices, sizes and stages are empty lists.
        """
        return EncoderOutput(features=self.encode(self.preprocess(x)), indices=[], sizes=[], stages=[])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding``, ``healthy`` (if a task) and ``multilabel`` raw logits.

        Shape:
            x: (B, 3 or 1, H, W) float in [0, 1].
            embedding: (B, D); healthy, multilabel: (B, 2).
        """
        return self.classify(self.forward_features(x).features)

    @property
    def output_keys(self) -> tuple[str, ...]:
        return ("embedding",) + self.tasks

    def describe_own(self) -> dict:
        return {"arch": f"torchvision {self.arch} + GAP + 3-layer FC heads", "width_note": self.width_note}


class DenseNet121(TorchvisionClassifier):
    name, arch, weights_file = "densenet121", "densenet121", "densenet121-a639ec97.pth"
    width_note = "scales growth_rate (32) and num_init_features (64)"

    def build_encoder(self, width: float) -> tuple[nn.Module, int]:
        net = torchvision.models.DenseNet(growth_rate=_scaled(32, width), block_config=(6, 12, 24, 16), num_init_features=_scaled(64, width))
        return net.features, net.classifier.in_features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's DenseNet ends its features in norm5 and applies the ReLU in forward.
        return torch.relu(self.encoder(x))  # (B, D, H/32, W/32)


class MobileNetV2(TorchvisionClassifier):
    name, arch, weights_file = "mobilenet_v2", "mobilenet_v2", "mobilenet_v2-b0353104.pth"
    width_note = "torchvision width_mult (the last 1x1 conv stays 1280 wide)"

    def build_encoder(self, width: float) -> tuple[nn.Module, int]:
        if not width > 0:
            raise ValueError(f"width must be a positive channel multiplier, got {width!r}")
        net = torchvision.models.mobilenet_v2(weights=None, width_mult=width)
        return net.features, net.last_channel


class ResNet18(TorchvisionClassifier):
    name, arch, weights_file = "resnet18", "resnet18", "resnet18-f37072fd.pth"
    tv_prefix, tv_skip = "", ("fc.",)
    width_note = "scales the stem's and every stage's channels (64 ... 512)"

    def build_encoder(self, width: float) -> tuple[nn.Module, int]:
        net = NarrowResNet18(width)  # torchvision's resnet18 at width 1.0
        # Same module names as torchvision's ResNet, so its state_dict keys map one to one.
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names)), net.fc.in_features


class VGG19(TorchvisionClassifier):
    name, arch, weights_file = "vgg19", "vgg19_bn", "vgg19_bn-c79401a0.pth"
    width_note = "scales every conv's channels (64 ... 512)"

    def build_encoder(self, width: float) -> tuple[nn.Module, int]:
        cfg = [v if v == "M" else _scaled(v, width) for v in torchvision.models.vgg.cfgs["E"]]
        features = torchvision.models.vgg.make_layers(cfg, batch_norm=True)
        for m in features.modules():  # torchvision's VGG initialisation (make_layers alone leaves PyTorch's)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        return features, cfg[-2]
