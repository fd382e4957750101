"""ROC, AUC, EER, the 99 %-specificity operating point, accuracy and confusion matrix."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from cmtlib.metrics._kernels import _binary, _ranked, _scores, _w_auc, _w_eer, _warn

def roc_curve(y, scores, drop_intermediate: bool = False):
    """ROC curve of `score >= threshold`, matching `sklearn.metrics.roc_curve`.

    Args:
        y: (N,) binary labels (0/1 or bool), no unknowns.
        scores: (N,) finite scores, higher meaning positive.
        drop_intermediate: drop collinear points as sklearn's default does; False keeps one point
            per distinct score (sklearn with `drop_intermediate=False`).

    Returns:
        (fpr, tpr, thresholds): thresholds descending, the first `inf` (the (0, 0) point). A rate
        with no class to divide by is all NaN, with a warning.
    """
    y = _binary(y)
    s = _scores(scores, y.size)
    if y.size == 0:
        raise ValueError("roc_curve needs at least one labelled score")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]  # last index of each tied group
    tps = np.cumsum(y_sorted)[last].astype(float)
    fps = 1.0 + last - tps
    thresholds = s_sorted[last]
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps, fps, thresholds = np.r_[0.0, tps], np.r_[0.0, fps], np.r_[np.inf, thresholds]
    out = []
    for counts, what in ((fps, "negative"), (tps, "positive")):
        if counts[-1] <= 0:
            _warn(f"no {what} labels: the {'false' if what == 'negative' else 'true'} positive rate is undefined (NaN)")
            out.append(np.full(counts.shape, np.nan))
        else:
            out.append(counts / counts[-1])
    return out[0], out[1], thresholds


def _two_classes(y: np.ndarray, metric: str) -> bool:
    if not y.any() or y.all():
        what = "no labels" if y.size == 0 else "only positives" if y.any() else "only negatives"
        _warn(f"{metric} needs both classes; {what} given: NaN")
        return False
    return True


def roc_auc(y, scores) -> float:
    """Area under the ROC curve (ties count one half); agrees with `sklearn.metrics.roc_auc_score`.

    Args:
        y: (N,) binary labels.
        scores: (N,) finite scores.

    Returns:
        AUC in [0, 1]; NaN with a warning when only one class is present.
    """
    y = _binary(y)
    s = _scores(scores, y.size)
    return float(_w_auc(np.ones((1, y.size)), _ranked(y, s))[0]) if _two_classes(y, "AUC") else math.nan


def within_group_auc(y, scores, groups) -> float:
    """AUC over positive-negative pairs from the same group only (e.g. one collection): the ranking
    that a cue naming the group cannot help. The pair-weighted mean of each group's AUC; NaN (with a
    warning) when no group holds both classes.

    Args:
        y: (N,) binary labels; scores: (N,) finite scores; groups: (N,) group names.
    """
    y = _binary(y)
    s = _scores(scores, y.size)
    g = np.asarray(groups, dtype=object)
    total = weight = 0.0
    for name in dict.fromkeys(g):
        m = g == name
        n_pos, n_neg = int(y[m].sum()), int((~y[m]).sum())
        if n_pos and n_neg:
            total += n_pos * n_neg * float(_w_auc(np.ones((1, int(m.sum()))), _ranked(y[m], s[m]))[0])
            weight += n_pos * n_neg
    if not weight:
        _warn("no group holds both classes: within-group AUC undefined (NaN)")
        return math.nan
    return total / weight


def eer(y, scores) -> float:
    """Equal error rate: where FPR = FNR on the ROC, linearly interpolated between the two ROC points
    that bracket the crossing (a tie between classes makes a diagonal segment, crossed midway).

    Args:
        y: (N,) binary labels.
        scores: (N,) finite scores.

    Returns:
        EER in [0, 1] (0 for perfect separation); NaN with a warning when only one class is present.
    """
    y = _binary(y)
    s = _scores(scores, y.size)
    return float(_w_eer(np.ones((1, y.size)), _ranked(y, s))[0]) if _two_classes(y, "EER") else math.nan


class OperatingPoint(NamedTuple):
    """A threshold chosen on negatives. `estimable` is False when the allowed false-alarm rate is
    finer than one negative (fewer than 100 negatives for 99 % specificity); the threshold is then
    just above the highest negative (k = 0)."""

    threshold: float
    k: int  # negatives allowed at or above the threshold
    n_negative: int
    estimable: bool


def threshold_at_specificity(y, scores, specificity: float = 0.99) -> OperatingPoint:
    """The lowest threshold at which at most floor((1 - specificity) x negatives) negatives score at
    or above it (DESIGN.md): `nextafter(v, inf)` with v the (k+1)-th highest negative score.

    Args:
        y: (N,) binary labels (only the negatives are used).
        scores: (N,) finite scores.
        specificity: the target, in [0, 1].

    Returns:
        OperatingPoint; threshold -inf when every negative may be flagged, NaN (with a warning)
        when there are no negatives.
    """
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"specificity must be in [0, 1], got {specificity}")
    y = _binary(y)
    neg = np.sort(_scores(scores, y.size)[~y])[::-1]
    n = neg.size
    k = math.floor((1.0 - specificity) * n + 1e-9)  # + 1e-9: (1 - 0.9) * 10 is 0.999...
    estimable = (1.0 - specificity) * n >= 1.0 - 1e-9
    if n == 0:
        _warn("no negatives: the specificity threshold is undefined (NaN)")
        return OperatingPoint(math.nan, 0, 0, False)
    threshold = -math.inf if k >= n else float(np.nextafter(neg[k], np.inf))
    return OperatingPoint(threshold, k, n, bool(estimable))


def _rate(hits: np.ndarray, what: str) -> float:
    if hits.size == 0:
        _warn(f"no {what}: rate undefined (NaN)")
        return math.nan
    return float(hits.mean())


def sensitivity_at(y, scores, threshold: float) -> float:
    """Share of positives with `score >= threshold`; NaN with a warning without positives or threshold.

    Args:
        y: (N,) binary labels.
        scores: (N,) finite scores.
        threshold: the operating point (e.g. `threshold_at_specificity(...).threshold`).

    Returns:
        Sensitivity (true positive rate).
    """
    y = _binary(y)
    s = _scores(scores, y.size)
    if math.isnan(threshold):
        _warn("threshold is NaN: sensitivity undefined")
        return math.nan
    return _rate(s[y] >= threshold, "positives")


def specificity_at(y, scores, threshold: float) -> float:
    """Share of negatives with `score < threshold`; NaN with a warning without negatives or threshold.

    Args:
        y: (N,) binary labels.
        scores: (N,) finite scores.
        threshold: the operating point.

    Returns:
        Specificity (true negative rate).
    """
    y = _binary(y)
    s = _scores(scores, y.size)
    if math.isnan(threshold):
        _warn("threshold is NaN: specificity undefined")
        return math.nan
    return _rate(s[~y] < threshold, "negatives")


def accuracy(y, pred) -> float:
    """Share of `pred == y`; NaN with a warning on empty input.

    Args:
        y: (N,) true labels (any values, no NaN).
        pred: (N,) predicted labels.

    Returns:
        Accuracy in [0, 1].
    """
    y, pred = np.asarray(y), np.asarray(pred)
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError(f"y {y.shape} and pred {pred.shape} must be 1-D of the same length")
    return _rate(y == pred, "labels")


def confusion_matrix(y, pred) -> np.ndarray:
    """2 x 2 counts `[[tn, fp], [fn, tp]]` (rows: truth, columns: prediction), as sklearn's with labels [0, 1].

    Args:
        y: (N,) binary labels.
        pred: (N,) binary predictions.

    Returns:
        int64 array (2, 2).
    """
    y, pred = _binary(y), _binary(pred, "pred")
    if y.shape != pred.shape:
        raise ValueError(f"y {y.shape} and pred {pred.shape} must have the same length")
    return np.bincount(2 * y.astype(int) + pred, minlength=4).reshape(2, 2).astype(np.int64)

