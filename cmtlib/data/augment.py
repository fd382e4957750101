"""On-device augmentation: one random rotation + translation per image, applied identically to the
image and its masks (the paper: +/- 10 degrees, +/- 10 pixels at 224 px).

The paper added five fixed copies per COVID image (rotated +/- 10 degrees, shifted 10 px in x, y and
xy); here every training draw gets a fresh uniform rotation in [-rotate_deg, rotate_deg] and shift in
[-translate_px, translate_px] on each axis, which covers the same range and, with COVID oversampling
(loader.py), gives COVID images the same weight.

Padding: pixels that enter the frame are zero (black) in the image and background (0) in the masks.
Radiographs have dark borders and collimation edges, so black is what a rotated film shows; edge
padding would smear the shoulder and diaphragm into the corners and create lung-like structure at
the border. Masks use bilinear sampling thresholded at 0.5, which keeps their edges smooth and
aligned with the bilinear image (nearest sampling shifts edges by up to half a pixel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cmtlib.errors import ConfigError

# The paper states shifts in pixels at 224 x 224; shifts are scaled to the training size.
PAPER_SIZE = 224


def draw_affine(n: int, rotate_deg: float, translate_px: float, generator: torch.Generator) -> torch.Tensor:
    """Random rotation angles and shifts for `n` images.

    Returns:
        (n, 3) float32 on the generator's device: angle in degrees, shift x, shift y, the shifts as
        fractions of the half-side (affine_grid's normalised units: 1.0 = half the image).

    The shifts are size-independent: translate_px pixels at 224 px is translate_px * S / 224 pixels
    at S px, i.e. 2 * translate_px / 224 in normalised units.
    """
    if rotate_deg < 0 or translate_px < 0:
        raise ConfigError(f"rotate_deg and translate_px must be >= 0, got {rotate_deg}, {translate_px}")
    u = torch.rand(n, 3, generator=generator, device=generator.device) * 2 - 1  # uniform in [-1, 1)
    scale = torch.tensor([rotate_deg, 2 * translate_px / PAPER_SIZE, 2 * translate_px / PAPER_SIZE], device=u.device)
    return u * scale


def affine_matrices(params: torch.Tensor) -> torch.Tensor:
    """(n, 3) angle/shift rows -> (n, 2, 3) affine_grid matrices (output -> input coordinates).

    Images are square, so a rotation in normalised coordinates is a true rotation.
    """
    rad = params[:, 0] * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    row0 = torch.stack([cos, -sin, params[:, 1]], dim=1)
    row1 = torch.stack([sin, cos, params[:, 2]], dim=1)
    return torch.stack([row0, row1], dim=1)  # (n, 2, 3)


def apply_affine(image: torch.Tensor, masks: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images and their masks with one transform per sample.

    Args:
        image: (B, 1, H, W) float in [0, 1].
        masks: (B, K, H, W) float 0/1 (K may be 0).
        params: (B, 3) from `draw_affine`, on the same device.

    Returns:
        The warped image (B, 1, H, W) in [0, 1] and masks (B, K, H, W) in {0, 1}; outside the
        source frame both are 0 (see the module docstring).
    """
    if image.shape[0] != params.shape[0] or masks.shape[0] != image.shape[0]:
        raise ValueError(f"batch sizes differ: image {tuple(image.shape)}, masks {tuple(masks.shape)}, params {tuple(params.shape)}")
    stack = torch.cat([image, masks], dim=1)  # (B, 1 + K, H, W): one grid_sample for all
    theta = affine_matrices(params.to(stack.dtype))
    grid = F.affine_grid(theta, list(stack.shape), align_corners=False)
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :1].clamp_(0.0, 1.0), (out[:, 1:] >= 0.5).to(masks.dtype)
