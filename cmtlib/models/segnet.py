"""SegNet decoder: the VGG16-BN encoder transposed, upsampling with the encoder's pooling indices."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cmtlib.models.encoder import VGG16_DEPTHS, EncoderOutput, conv_bn_relu


def unpool2x2_mask(x: torch.Tensor, indices: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.max_unpool2d(x, indices, 2, 2, output_size=size)`` as one broadcast multiply, no scatter.

    Each value goes back to the position its 2 x 2 window's maximum came from, the other three get
    zero: the same numbers as max-unpooling, but an element-wise op that torch.compile can fuse
    with its neighbours (a scatter cannot be fused). Only for even sizes, where each window is
    whole; odd sizes fall back to ``F.max_unpool2d``.

    Shape:
        x, indices: (B, C, h, w), indices flat into (H, W) as ``MaxPool2d(return_indices=True)`` gives.
        returns: (B, C, H, W) with H, W = size, in x's memory format (channels_last kept).
    """
    H, W = int(size[-2]), int(size[-1])
    h, w = x.shape[-2:]
    if H != 2 * h or W != 2 * w:
        return F.max_unpool2d(x, indices, 2, 2, output_size=size)
    # Window offset of each maximum: 2 * (row parity) + column parity, in {0, 1, 2, 3} (W is even).
    offset = (indices // W % 2) * 2 + indices % 2
    slots = torch.arange(4, device=x.device).view(2, 2)  # (row parity, column parity) -> offset
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # Build (B, h, 2, w, 2, C) so that memory is already (B, H, W, C): channels_last.
        xs, os_ = x.permute(0, 2, 3, 1), offset.permute(0, 2, 3, 1)
        out = xs[:, :, None, :, None, :] * (os_[:, :, None, :, None, :] == slots.view(1, 1, 2, 1, 2, 1))
        return out.reshape(x.shape[0], H, W, x.shape[1]).permute(0, 3, 1, 2)
    out = x[:, :, :, None, :, None] * (offset[:, :, :, None, :, None] == slots.view(1, 1, 1, 2, 1, 2))
    return out.reshape(x.shape[0], x.shape[1], H, W)


class SegNetDecoder(nn.Module):
    """Mirror of the encoder: per stage (deepest first) max-unpool, then conv + BN + ReLU layers.

    Stage b has as many conv layers as encoder block b (3, 3, 3, 2, 2 from the deepest); all keep
    ``encoder_channels[b]`` except the last, which steps down to ``encoder_channels[b - 1]`` (the
    shallowest stage keeps its width). A final 3x3 conv (SegNet's classifier) gives the logits.

    Args:
        encoder_channels: the encoder's declared ``out_channels``, shallowest first.
        out_channels: logit channels (1: one binary mask, sigmoid outside the model).
        depths: conv layers per encoder block, shallowest first (the encoder's ``depths``).

    Attributes:
        unpool_impl: "scatter" (max-unpooling's ATen op, what ``nn.MaxUnpool2d`` calls), "mask" (`unpool2x2_mask`: the same numbers,
            fusable under torch.compile) or "auto" (the default: mask on a GPU, scatter on the CPU).
            Measured with benchmarks/train_throughput.py on an H100 (RESULTS.md): mask trains 12 %
            faster compiled (915 vs 821 images/s at batch 128), 2 % eager; on a 2-core CPU it is
            25 % slower (eager, width 0.125, 96 px), hence the split.
    """

    def __init__(self, encoder_channels: Sequence[int], out_channels: int = 1, depths: Sequence[int] = VGG16_DEPTHS) -> None:
        super().__init__()
        if len(encoder_channels) != len(depths):
            raise ValueError(
                f"encoder_channels has {len(encoder_channels)} stages but depths has {len(depths)}; "
                "pass the encoder's out_channels and depths together"
            )
        self.encoder_channels = tuple(int(c) for c in encoder_channels)
        self.depths = tuple(int(d) for d in depths)
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        self.unpool_impl = "auto"
        stages = []
        # Built deepest first, the order forward runs them.
        for b in reversed(range(len(self.encoder_channels))):
            ch = self.encoder_channels[b]
            nxt = self.encoder_channels[b - 1] if b > 0 else ch
            layers: list[nn.Module] = []
            for k in range(self.depths[b]):
                layers += conv_bn_relu(ch, nxt if k == self.depths[b] - 1 else ch)
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(self.encoder_channels[0], out_channels, kernel_size=3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, enc: EncoderOutput) -> torch.Tensor:
        """Decode the encoder's features to a logit map at the input resolution.

        Args:
            enc: the encoder's output (features, pooling indices, pre-pool sizes).

        Returns:
            Raw logits (no sigmoid).

        Shape:
            enc.features: (B, C5, H/32, W/32).
            returns: (B, out_channels, H, W), H and W as given to the encoder (any size).
        """
        x = enc.features
        n = len(self.stages)
        for i, stage in enumerate(self.stages):
            b = n - 1 - i  # encoder block this stage mirrors
            # (B, C_b, h_b // 2, w_b // 2) -> (B, C_b, h_b, w_b); output_size restores odd sizes.
            if self.unpool_impl == "mask" or (self.unpool_impl == "auto" and x.is_cuda):
                x = unpool2x2_mask(x, enc.indices[b], enc.sizes[b])
            else:
                # The ATen op nn.MaxUnpool2d calls, without its Python-side size check: that check
                # imports torch's symbolic-shape machinery (sympy) on first use, 0.4 s of a cold
                # `cmt predict`. The size is the encoder's own pre-pool size, valid by construction.
                x = torch.ops.aten.max_unpool2d(x, enc.indices[b], [int(v) for v in enc.sizes[b]])
            x = stage(x)  # (B, C_{b-1}, h_b, w_b)
        return self.head(x)  # (B, out_channels, H, W)
