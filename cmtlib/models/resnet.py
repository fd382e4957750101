"""torchvision's ResNet18 with every stage's channels scaled (64, 128, 256, 512 at width 1.0).

torchvision's builder fixes the channels; a CPU report needs narrow networks (a full-width ResNet18
was the slowest of the classification baselines at 64 px). The narrowed network is torchvision's
`ResNet` class with the same module names, so at width 1.0 it is exactly `resnet18()` and its
ImageNet state_dict loads; narrowed, it starts from random weights, as the other narrowed baselines.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from cmtlib.models.encoder import scaled_channels

STAGE_CHANNELS = (64, 128, 256, 512)  # the stem has 64 too


def _one(c: int, width: float) -> int:
    return scaled_channels(width, (c,))[0]


class NarrowResNet18(ResNet):
    """ResNet18 whose stem and four stages carry `width` x torchvision's channels."""

    def __init__(self, width: float = 1.0) -> None:
        self._width = float(width)
        stem = _one(64, self._width)
        super().__init__(BasicBlock, [2, 2, 2, 2])
        if stem != 64:
            self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's init
        self.fc = nn.Linear(_one(512, self._width), 1000)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if planes == STAGE_CHANNELS[0]:
            self.inplanes = _one(64, self._width)  # layer1 follows the (narrowed) stem
        return super()._make_layer(block, _one(planes, self._width), blocks, stride, dilate)
