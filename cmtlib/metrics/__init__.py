"""Metrics: pure functions on whole arrays (STYLE.md rule 7), then metrics.json (DESIGN.md, Metrics).

Undefined cases (one class only, no ground truth) return NaN with an `UndefinedMetricWarning`.
Every ranking metric is computed by one weighted kernel: a weight matrix `W` (B, N) holds how many
times each image is counted. The plain metric is `W = ones((1, N))`; a patient bootstrap resample is
a row of patient draw counts spread over the patients' images, so 1,000 resamples are one array pass.

Operating point (`threshold_at_specificity`): predictions are always `score >= threshold`. With
k = floor((1 - specificity) x negatives) false alarms allowed, the lowest such threshold is just above
the (k+1)-th highest negative score v; it is stored as `np.nextafter(v, inf)` (float64), so exactly
the negatives scoring above v, at most k of them, are flagged (ties at v are all below it).
Keep it in float64: cast to float32 it rounds back to v and flags the tied negatives too.
"""

import importlib

# Names are resolved from their submodule on first use (PEP 562): importing cmtlib.metrics.masks for the
# inference loop must not import pandas (metrics.summary), which `cmt predict` never needs.
_WHERE = {
    "UndefinedMetricWarning": "_kernels",
    **dict.fromkeys(("OperatingPoint", "accuracy", "confusion_matrix", "eer", "roc_auc", "roc_curve", "sensitivity_at",
                     "specificity_at", "threshold_at_specificity", "within_group_auc"), "ranking"),
    **dict.fromkeys(("Reliability", "dice", "dice_from_counts", "expected_calibration_error", "iou", "iou_from_counts",
                     "reliability_curve"), "masks"),
    **dict.fromkeys(("BootstrapCI", "bootstrap_ci"), "bootstrap"),
    **dict.fromkeys(("PREDICTION_COLUMNS", "SECTIONS", "metrics_from_predictions"), "summary"),
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"cmtlib.metrics.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cmtlib.metrics' has no attribute {name!r}")


__all__ = [
    "UndefinedMetricWarning",
    "OperatingPoint",
    "accuracy",
    "confusion_matrix",
    "eer",
    "roc_auc",
    "roc_curve",
    "sensitivity_at",
    "specificity_at",
    "threshold_at_specificity",
    "within_group_auc",
    "Reliability",
    "dice",
    "dice_from_counts",
    "expected_calibration_error",
    "iou",
    "iou_from_counts",
    "reliability_curve",
    "BootstrapCI",
    "bootstrap_ci",
    "PREDICTION_COLUMNS",
    "SECTIONS",
    "metrics_from_predictions",
]
