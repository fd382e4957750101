"""A mask cell or box cell of the manifest as a mask on the cache's square grid."""

from __future__ import annotations

import math

import numpy as np

from cmtlib.data.io import ImageReadError, read_mask
from cmtlib.data.manifest import parse_boxes

__all__ = ["box_mask", "mask_or_boxes"]


def mask_or_boxes(kind: str, mask_path: str, boxes_cell: str, orig_hw: tuple[int, int], size: int) -> tuple[np.ndarray | None, str | None]:
    """One task's mask at size x size: from its PNG if given, else its boxes, else unknown.

    Returns:
        (mask, note): mask is uint8 (size, size) 0/1 or None when unknown or unusable; note is the
        quarantine reason when a given mask or box cell could not be used (the image is kept).
    """
    if mask_path:
        try:
            return read_mask(mask_path, orig_hw, out_shape=(size, size)).astype(np.uint8), None
        except ImageReadError as err:
            return None, f"{kind} mask ignored (image kept): {err}"
    if boxes_cell == "":
        return None, None
    try:
        return box_mask(parse_boxes(boxes_cell), orig_hw, size), None
    except (ValueError, TypeError) as err:  # bad JSON, ManifestError, non-numeric coordinates
        return None, f"{kind}_boxes ignored (image kept): {err}"


def box_mask(boxes: list[list[float]], orig_hw: tuple[int, int], size: int) -> np.ndarray:
    """Filled boxes given in original pixels, drawn on a size x size grid.

    A pixel is inside when its centre is; a box thinner than a pixel still gets one, so a small
    lesion does not vanish at low resolution. An empty list gives an all-zero mask (known empty).

    Returns:
        uint8 (size, size), 0/1.

    Raises:
        ValueError: a box holding NaN or infinity, with x1 <= x0 or y1 <= y0, or wholly outside the image.
    """
    h, w = orig_hw
    mask = np.zeros((size, size), dtype=np.uint8)
    for box in boxes:
        x0, y0, x1, y1 = box
        if not all(math.isfinite(v) for v in box):
            raise ValueError(f"box {box} holds NaN or infinity")
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {box} has x1 <= x0 or y1 <= y0; boxes are [x0, y0, x1, y1] (not [x, y, w, h])")
        if x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0:
            raise ValueError(f"box {box} lies outside the {w}x{h} px image")
        r0, r1 = _span(y0 * size / h, y1 * size / h, size)
        c0, c1 = _span(x0 * size / w, x1 * size / w, size)
        mask[r0:r1, c0:c1] = 1
    return mask


def _span(a: float, b: float, size: int) -> tuple[int, int]:
    """Pixel indices [lo, hi) whose centres (i + 0.5) lie in [a, b); at least one pixel."""
    lo = min(max(0, math.ceil(a - 0.5)), size - 1)
    hi = min(size, math.ceil(b - 0.5))
    return lo, max(hi, lo + 1)
