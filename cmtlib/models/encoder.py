"""VGG16-BN encoder with SegNet pooling indices, and the ImageNet input preprocessing.

The layer order matches torchvision's ``vgg16_bn().features`` exactly (conv, BN, ReLU per layer,
a max-pool after each block), so at width 1.0 its ImageNet weights map onto ``blocks.b.j`` one to
one (see ``VGG16BNEncoder.torchvision_key_map``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's ImageNet statistics (VGG16_BN_Weights.IMAGENET1K_V1.transforms()).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Convolutions per block and channels per block at width 1.0 (the paper: 2, 2, 3, 3, 3).
VGG16_DEPTHS: tuple[int, ...] = (2, 2, 3, 3, 3)
VGG16_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# Narrow models keep at least this many channels per block so BN statistics stay meaningful.
MIN_CHANNELS = 8


def scaled_channels(width: float, base: Sequence[int] = VGG16_CHANNELS, minimum: int = MIN_CHANNELS) -> tuple[int, ...]:
    """Channels per block for a width multiplier: ``max(minimum, round(c * width))``."""
    if not width > 0:
        raise ValueError(f"width must be a positive channel multiplier (1.0 = VGG16), got {width!r}")
    return tuple(max(minimum, int(round(c * width))) for c in base)


class EncoderOutput(NamedTuple):
    """What the encoder hands to decoders, heads and CAM code.

    Attributes:
        features: the last block's pooled map, (B, C5, H/32, W/32) (floored per pooling).
        indices: per block, the max-pool argmax indices (same shape as that block's pooled map),
            shallowest first; ``MaxUnpool2d`` consumes them.
        sizes: per block, the pre-pool spatial size ``(h, w)``, shallowest first; passed as
            ``output_size`` to ``MaxUnpool2d`` so odd sizes round-trip.
        stages: per block, the pre-pool feature map (B, C_b, h_b, w_b), shallowest first
            (skip connections for UNet-like models, Grad-CAM targets).
    """

    features: torch.Tensor
    indices: list[torch.Tensor]
    sizes: list[torch.Size]
    stages: list[torch.Tensor]


def conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    """One VGG layer: 3x3 conv (bias, as torchvision's VGG) + BN + ReLU."""
    return [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class VGG16BNEncoder(nn.Module):
    """VGG16-BN feature extractor returning pooled features plus SegNet pooling indices.

    Args:
        width: channel multiplier (1.0 = VGG16: 64, 128, 256, 512, 512).
        in_channels: input channels (3 for ImageNet weights).

    Attributes:
        out_channels: channels of each block's output, shallowest first.
        depths: convolutions per block (2, 2, 3, 3, 3).
    """

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.width = float(width)
        self.in_channels = int(in_channels)
        self.out_channels: tuple[int, ...] = scaled_channels(width)
        self.depths: tuple[int, ...] = VGG16_DEPTHS
        blocks = []
        prev = self.in_channels
        for depth, ch in zip(self.depths, self.out_channels):
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += conv_bn_relu(prev, ch)
                prev = ch
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        # Floors odd sizes (as torchvision's VGG); the recorded pre-pool size undoes it when unpooling.
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's VGG initialisation (kaiming-normal fan-out convs, unit BN)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Run the five blocks, recording what SegNet decoders need.

        Args:
            x: normalised images.

        Returns:
            EncoderOutput (see its docstring).

        Shape:
            x: (B, in_channels, H, W), any H, W >= 32.
            features: (B, out_channels[-1], H // 32, W // 32) with floor at each halving.
        """
        indices: list[torch.Tensor] = []
        sizes: list[torch.Size] = []
        stages: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)  # (B, C_b, h_b, w_b)
            stages.append(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)  # (B, C_b, h_b // 2, w_b // 2)
            indices.append(idx)
        return EncoderOutput(features=x, indices=indices, sizes=sizes, stages=stages)

    def torchvision_key_map(self) -> dict[str, str]:
        """Map torchvision ``vgg16_bn().features`` module prefixes to ours.

        Returns:
            e.g. ``{"features.0": "blocks.0.0", "features.1": "blocks.0.1", ...,
            "features.7": "blocks.1.0", ...}``; ReLU and pooling slots hold no tensors and are
            skipped. Valid for any width (shapes only match torchvision's at width 1.0).
        """
        mapping: dict[str, str] = {}
        tv_index = 0
        for b, block in enumerate(self.blocks):
            for j, layer in enumerate(block):
                if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
                    mapping[f"features.{tv_index}"] = f"blocks.{b}.{j}"
                tv_index += 1
            tv_index += 1  # torchvision's MaxPool2d after each block
        return mapping


class ImageNetPreprocess(nn.Module):
    """Model-side preprocessing: [0, 1] images -> ImageNet-normalised 3-channel tensors.

    Grayscale input (B, 1, H, W) is repeated to 3 channels (an X-ray has one channel; the
    batch contract already repeats it, this keeps ``predict`` on single-channel arrays simple).
    The range is not checked at run time (that would sync the device); callers pass [0, 1].
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, effective_px: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        # Acquisition harmonisation (ModelConfig.effective_px): every film is reduced to this side and
        # enlarged back before the network sees it, in training, evaluation and prediction alike, so
        # that a collection's resolution and sharpness stop naming it. 0 = off.
        self.effective_px = int(effective_px)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the ImageNet mean and std.

        Shape:
            x: (B, 1 or 3, H, W) float in [0, 1].
            returns: (B, 3, H, W) float.
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"expected images of shape (B, 3, H, W) or (B, 1, H, W) in [0, 1], got {tuple(x.shape)}; "
                "add a batch dimension or convert to RGB/grayscale first"
            )
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got {x.dtype}; divide uint8 images by 255")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W), a view
        if self.effective_px and max(x.shape[-2:]) > self.effective_px:
            size = x.shape[-2:]
            x = F.interpolate(x, size=(self.effective_px, self.effective_px), mode="area")  # (B, 3, px, px): detail averaged away
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (B, 3, H, W) again
        return (x - self.mean) / self.std

    def describe(self) -> dict:
        """The preprocessing as plain data, for self-describing checkpoints."""
        return {
            "input_range": [0.0, 1.0],
            "channels": 3,
            "grayscale_input": "a (B, 1, H, W) input is repeated to 3 channels",
            "mean": [round(float(v), 6) for v in self.mean.flatten()],
            "std": [round(float(v), 6) for v in self.std.flatten()],
            **({"effective_px": self.effective_px, "harmonisation": f"reduced to {self.effective_px} px and enlarged back"}
               if self.effective_px else {}),
        }
