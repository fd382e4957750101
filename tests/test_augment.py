"""Augmentation: image and masks move together, the ranges hold, a seed repeats."""

from __future__ import annotations

import math

import torch

from cmtlib.data.augment import PAPER_SIZE, affine_matrices, apply_affine, draw_affine
from cmtlib.runtime import generator


def square(size: int = 64, b: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright off-centre square on black and its mask (so rotation and shift both move it)."""
    image = torch.zeros(b, 1, size, size)
    mask = torch.zeros(b, 2, size, size)
    image[:, :, 10:26, 34:50] = 1.0
    mask[:, 0, 10:26, 34:50] = 1.0
    return image, mask


def test_image_and_mask_stay_aligned():
    image, mask = square()
    params = draw_affine(8, 10.0, 10.0, generator(0))
    out_img, out_mask = apply_affine(image, mask, params)
    moved = (out_mask[:, 0] != mask[:, 0]).flatten(1).sum(1)
    assert (moved > 0).all()  # every sample was transformed
    inside = (out_img[:, 0] * out_mask[:, 0]).flatten(1).sum(1) / out_mask[:, 0].flatten(1).sum(1)
    outside = (out_img[:, 0] * (1 - out_mask[:, 0])).flatten(1).sum(1) / (1 - out_mask[:, 0]).flatten(1).sum(1)
    assert (inside > 0.9).all() and (outside < 0.02).all()
    assert out_mask[:, 1].sum() == 0  # an empty mask stays empty
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}


def test_identity_parameters_change_nothing():
    image, mask = square()
    out_img, out_mask = apply_affine(image, mask, torch.zeros(8, 3))
    assert torch.allclose(out_img, image, atol=1e-5) and torch.equal(out_mask, mask)


def test_pure_shift_moves_by_the_scaled_pixel_count():
    # 10 px at 224 px is 10 * 64 / 224 px at 64 px; a shift of exactly 8 px needs 8 * 224 / 64 = 28.
    image, mask = square(b=1)
    params = torch.tensor([[0.0, 2 * 28.0 / PAPER_SIZE, 0.0]])  # affine_grid samples input at x + t
    out_img, out_mask = apply_affine(image, mask, params)
    assert torch.equal(out_mask[0, 0, 10:26, 26:42], torch.ones(16, 16)) and out_mask[0, 0].sum() == 256


def test_rotation_is_a_true_rotation():
    theta = affine_matrices(torch.tensor([[90.0, 0.0, 0.0]]))
    assert torch.allclose(theta, torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]]), atol=1e-6)


def test_parameters_stay_in_range_and_repeat_for_a_seed():
    a = draw_affine(1000, 10.0, 10.0, generator(3, 1))
    b = draw_affine(1000, 10.0, 10.0, generator(3, 1))
    assert torch.equal(a, b) and not torch.equal(a, draw_affine(1000, 10.0, 10.0, generator(3, 2)))
    assert a[:, 0].abs().max() <= 10.0 and a[:, 0].abs().max() > 9.0
    limit = 2 * 10.0 / PAPER_SIZE
    assert a[:, 1:].abs().max() <= limit + 1e-7 and a[:, 1:].abs().max() > 0.9 * limit
    assert math.isclose(float(a[:, 0].mean()), 0.0, abs_tol=1.0)


def test_padding_is_black():
    image = torch.ones(1, 1, 32, 32)
    out_img, _ = apply_affine(image, torch.zeros(1, 0, 32, 32), torch.tensor([[10.0, 0.0, 0.0]]))
    assert out_img[0, 0, 0, 0] < 0.05 and out_img[0, 0, 16, 16] > 0.99
