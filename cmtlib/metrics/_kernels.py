"""Validation helpers and the weighted kernels shared by plain metrics and the bootstrap."""

from __future__ import annotations

import warnings

import numpy as np

class UndefinedMetricWarning(RuntimeWarning):
    """A metric was asked for where it is undefined (one class only, empty input); it returned NaN."""


def _warn(message: str) -> None:
    warnings.warn(message, UndefinedMetricWarning, stacklevel=3)


def _binary(y, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per image), got shape {y.shape}")
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError(f"{name} has NaN (unknown labels); keep only rows whose label is known")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1, got values {np.unique(y)[:5].tolist()}")
    return y.astype(bool)


def _scores(s, n: int, name: str = "scores") -> np.ndarray:
    s = np.asarray(s, dtype=float)
    if s.shape != (n,):
        raise ValueError(f"{name} has shape {s.shape}; expected ({n},), one score per label")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} has NaN or infinite values; drop those rows first")
    return s


# ---- weighted kernels: W (B, N) counts per image -> (B,) values; NaN where undefined -------------

def _ranked(y: np.ndarray, s: np.ndarray):
    """Order by descending score, the start of each run of tied scores, and the labels in that order."""
    order = np.argsort(-s, kind="mergesort")
    return order, np.r_[0, np.flatnonzero(np.diff(s[order])) + 1], y[order]


def _class_weights(W, ranked):
    """Positive and negative weight per tied-score group, highest score first: (B, G) each."""
    order, starts, pos = ranked
    Ws = W[:, order]
    return (np.add.reduceat(Ws * pos, starts, axis=1), np.add.reduceat(Ws * ~pos, starts, axis=1))


def _w_auc(W, ranked) -> np.ndarray:
    # Mann-Whitney with mid-ranks: P(s_pos > s_neg) + 0.5 P(tie), which is sklearn's trapezoid AUC.
    wp, wn = _class_weights(W, ranked)
    n_pos, n_neg = wp.sum(1), wn.sum(1)
    below = n_neg[:, None] - np.cumsum(wn, axis=1)  # negatives strictly below each group
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wp * (below + 0.5 * wn)).sum(1) / (n_pos * n_neg)


def _w_eer(W, ranked) -> np.ndarray:
    wp, wn = _class_weights(W, ranked)
    zero = np.zeros((W.shape[0], 1))
    tps, fps = np.hstack([zero, np.cumsum(wp, 1)]), np.hstack([zero, np.cumsum(wn, 1)])
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr, fnr = fps / fps[:, -1:], 1.0 - tps / tps[:, -1:]
    d = fpr - fnr  # non-decreasing from -1 at (0, 0) to +1 at (1, 1)
    i = np.maximum(np.argmax(d >= 0, axis=1), 1)  # first ROC point at or past the crossing
    rows = np.arange(W.shape[0])
    d0, d1, f0, f1 = d[rows, i - 1], d[rows, i], fpr[rows, i - 1], fpr[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        # Along the segment both rates are linear in t; they meet where d = 0.
        t = np.where(d1 > d0, -d0 / (d1 - d0), 1.0)
    return np.where((tps[:, -1] > 0) & (fps[:, -1] > 0), f0 + t * (f1 - f0), np.nan)


def _w_mean(W, x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (W @ x) / W.sum(1)


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # As sklearn's calibration_curve: bins (lo, hi], the first [0, hi]; p on an edge goes to the lower bin.
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)


def _w_ece(W, y: np.ndarray, p: np.ndarray, n_bins: int) -> np.ndarray:
    onehot = np.eye(n_bins)[_bin_index(p, n_bins)]  # (N, n_bins)
    gap = np.abs(W @ (onehot * p[:, None]) - W @ (onehot * y[:, None])).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap / W.sum(1)  # sum_b (n_b / N) |mean p_b - freq_b| = sum_b |sum p_b - sum y_b| / N


# ---- plain metrics ---------------------------------------------------------------------------

