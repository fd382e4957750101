"""Per-image Dice and IoU, reliability curve and expected calibration error."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from cmtlib.metrics._kernels import _bin_index, _binary, _scores, _w_ece, _warn

def _masks(pred_mask, true_mask):
    out = []
    for name, m in (("pred_mask", pred_mask), ("true_mask", true_mask)):
        m = np.asarray(m)
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name} has values other than 0/1; threshold probabilities first (prob >= 0.5)")
        out.append(m.astype(bool))
    if out[0].shape != out[1].shape or out[0].ndim < 2:
        raise ValueError(f"masks must have the same shape (H, W) or (N, ..., H, W); got {out[0].shape} and {out[1].shape}")
    axes = None if out[0].ndim == 2 else tuple(range(1, out[0].ndim))
    inter = (out[0] & out[1]).sum(axis=axes)
    return inter, out[0].sum(axis=axes), out[1].sum(axis=axes)


def _per_image(num, den, truth):
    """num / den per image, NaN where the ground truth is empty. Works on numpy arrays and on torch
    tensors alike (``masked_fill`` marks a tensor), so the device-side loop of cmtlib.inference and
    these numpy functions share one formula."""
    if hasattr(num, "masked_fill"):
        return (num / den.clamp_min(1)).masked_fill(truth <= 0, float("nan"))
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(truth > 0, num / np.maximum(den, 1), np.nan)
    return float(v) if v.ndim == 0 else v


def dice_from_counts(inter, pred_area, true_area):
    """Dice per image from pixel counts |A and B|, |A|, |B| (numpy arrays or torch tensors, (N,));
    NaN where the ground truth is empty."""
    return _per_image(2.0 * inter, pred_area + true_area, true_area)


def iou_from_counts(inter, pred_area, true_area):
    """IoU per image from pixel counts (numpy arrays or torch tensors, (N,)); NaN where the ground
    truth is empty."""
    return _per_image(inter * 1.0, pred_area + true_area - inter, true_area)


def dice(pred_mask, true_mask):
    """Dice 2|A and B| / (|A| + |B|) per image; NaN where the ground truth is empty (DESIGN: Dice is
    averaged over images whose ground truth is not empty, so those images are left out, silently).

    Shape:
        (H, W) -> float; (N, H, W) or (N, 1, H, W) -> (N,).

    Args:
        pred_mask: binary prediction (bool or 0/1).
        true_mask: binary ground truth, same shape.

    Returns:
        Dice per image.
    """
    inter, a, b = _masks(pred_mask, true_mask)
    return dice_from_counts(inter, a, b)


def iou(pred_mask, true_mask):
    """Intersection over union per image; NaN where the ground truth is empty (as `dice`).

    Shape:
        (H, W) -> float; (N, H, W) or (N, 1, H, W) -> (N,).

    Args:
        pred_mask: binary prediction (bool or 0/1).
        true_mask: binary ground truth, same shape.

    Returns:
        IoU per image.
    """
    inter, a, b = _masks(pred_mask, true_mask)
    return iou_from_counts(inter, a, b)


def _probabilities(y, p):
    y = _binary(y)
    p = _scores(p, y.size, "p")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p must be probabilities in [0, 1] (apply a sigmoid/softmax to logits first)")
    return y, p


class Reliability(NamedTuple):
    """Per equal-width bin: centre, mean predicted probability and observed frequency (NaN where the
    bin is empty), and the count."""

    centres: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray


def reliability_curve(y, p, n_bins: int = 10) -> Reliability:
    """Reliability diagram data over equal-width bins of [0, 1] (bins as sklearn's calibration_curve,
    which leaves out the empty ones).

    Args:
        y: (N,) binary labels.
        p: (N,) predicted probabilities of the positive class.
        n_bins: number of bins.

    Returns:
        Reliability with arrays of length n_bins.
    """
    y, p = _probabilities(y, p)
    b = _bin_index(p, n_bins)
    counts = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, p, n_bins) / counts
        observed = np.bincount(b, y.astype(float), n_bins) / counts
    return Reliability((np.arange(n_bins) + 0.5) / n_bins, mean_p, observed, counts)


def expected_calibration_error(y, p, n_bins: int = 10) -> float:
    """ECE: sum over equal-width bins of (bin count / N) x |mean predicted - observed frequency|.

    Args:
        y: (N,) binary labels.
        p: (N,) predicted probabilities of the positive class.
        n_bins: number of bins.

    Returns:
        ECE in [0, 1]; NaN with a warning on empty input.
    """
    y, p = _probabilities(y, p)
    if y.size == 0:
        _warn("no samples: ECE undefined (NaN)")
        return math.nan
    return float(_w_ece(np.ones((1, y.size)), y.astype(float), p, n_bins)[0])


# ---- patient bootstrap ---------------------------------------------------------------------------

