"""UNet baseline (paper Section V-A, Figs. 5-6; Ronneberger et al. 2015).

The standard UNet: four down steps (two 3x3 conv + BN + ReLU, then 2x2 max-pool), a bottleneck,
four up steps (2x2 transposed conv halving the channels, concatenation with the skip, two 3x3
convs) and a 1x1 conv giving one logit map per segmentation task. Padded convolutions (the output
has the input's size) and batch norm, as common UNet implementations; an odd size is restored by
padding the upsampled map to its skip's size. ``width`` scales the channels (64 ... 1024).
The ``embedding`` is the global average pool of the bottleneck. No ImageNet weights exist for it:
the paper's UNet is trained from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cmtlib.errors import MissingInputError
from cmtlib.models.base import ContractModel
from cmtlib.models.encoder import EncoderOutput, ImageNetPreprocess
from cmtlib.models.segnet_single import segmentation_tasks

log = logging.getLogger(__name__)
UNET_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 1024)
MIN_CHANNELS = 8


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """UNet's step: (3x3 conv, BN, ReLU) twice; the conv bias is redundant before BN."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


class UNet(ContractModel):
    """UNet with one output channel per segmentation task.

    Args:
        tasks: lung and/or disease (classification tasks are ignored).
        width: channel multiplier (1.0 = 64, 128, 256, 512, 1024), at least 8 channels per level.
        encoder_weights: ``none``; ``imagenet`` keeps the random init with a WARNING (none exist);
            a path loads a UNet state_dict of this architecture.
        head_hidden: accepted for the registry's common signature; unused.
        effective_px: acquisition harmonisation (ModelConfig.effective_px; 0 = off).

    Output: ``lung`` and/or ``disease`` (B, 1, H, W) logits and ``embedding`` (B, C_bottleneck).
    """

    name = "unet"

    def __init__(self, tasks: Sequence[str] = ("lung", "disease"), width: float = 1.0, encoder_weights: str = "none", head_hidden: int = 256, effective_px: int = 0) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be a positive channel multiplier (1.0 = UNet's 64 ... 1024), got {width!r}")
        self.tasks = segmentation_tasks(tasks)
        self.width = float(width)
        self.encoder_weights = str(encoder_weights)
        self.head_hidden = int(head_hidden)
        self.channels = tuple(max(MIN_CHANNELS, int(round(c * width))) for c in UNET_CHANNELS)
        c = self.channels
        self.embedding_dim = c[-1]
        self.preprocess = ImageNetPreprocess(effective_px=effective_px)
        self.inc = double_conv(3, c[0])
        self.downs = nn.ModuleList(double_conv(c[i], c[i + 1]) for i in range(len(c) - 1))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c[i + 1], c[i], kernel_size=2, stride=2) for i in reversed(range(len(c) - 1)))
        self.up_convs = nn.ModuleList(double_conv(2 * c[i], c[i]) for i in reversed(range(len(c) - 1)))
        self.head = nn.Conv2d(c[0], len(self.tasks), kernel_size=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.encoder_weights_source = self._init_weights(self.encoder_weights)

    def _init_weights(self, spec: str) -> str:
        spec = spec.strip()
        if spec.lower() in ("", "none"):
            return "random init (encoder_weights=none)"
        if spec.lower() == "imagenet":
            log.warning("UNet has no ImageNet weights (the paper trains it from scratch): random init. Set encoder_weights: none to silence this.")
            return "random init (UNet has no ImageNet weights)"
        path = Path(spec).expanduser()
        if not path.is_file():
            raise MissingInputError(f"encoder_weights={spec!r} is neither 'imagenet', 'none' nor an existing state_dict file")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return f"state_dict ({path})"

    def forward_features(self, x: torch.Tensor) -> EncoderOutput:
        """Preprocess and run the contracting path.

        Shape:
            x: (B, 3 or 1, H, W) float in [0, 1].
            returns.features: the bottleneck (B, C4, H/16, W/16) (floored per pooling);
            returns.stages: the four skip maps (B, C_i, H/2^i, W/2^i), shallowest first;
            returns.sizes: their spatial sizes; returns.indices: [] (UNet does not unpool).
        """
        x = self.inc(self.preprocess(x))  # (B, C0, H, W)
        stages = []
        for down in self.downs:
            stages.append(x)
            x = down(F.max_pool2d(x, 2))  # (B, C_{i+1}, h/2, w/2)
        return EncoderOutput(features=x, indices=[], sizes=[s.shape[-2:] for s in stages], stages=stages)

    def decode(self, enc: EncoderOutput) -> torch.Tensor:
        """Expanding path: logits (B, n_tasks, H, W) at the input size."""
        x = enc.features
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(enc.stages)):
            x = up(x)  # (B, C_i, 2h, 2w)
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            if dh or dw:  # odd skip sizes: pad the upsampled map (left/top gets the smaller half)
                x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
            x = conv(torch.cat([skip, x], dim=1))  # (B, C_i, h_skip, w_skip)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segmentation logits and the embedding.

        Shape:
            x: (B, 3 or 1, H, W); lung, disease: (B, 1, H, W); embedding: (B, C4).
        """
        enc = self.forward_features(x)
        logits = self.decode(enc)
        out = {task: logits[:, i : i + 1] for i, task in enumerate(self.tasks)}
        out.update(self.classify(enc.features))
        return out

    def describe_own(self) -> dict:
        return {"arch": "UNet (padded convs + BN, transposed-conv upsampling), one output channel per task",
                "channels": list(self.channels)}
