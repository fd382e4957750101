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

from cmtlib.metrics._kernels import UndefinedMetricWarning
from cmtlib.metrics.ranking import OperatingPoint, accuracy, confusion_matrix, eer, roc_auc, roc_curve, sensitivity_at, specificity_at, threshold_at_specificity
from cmtlib.metrics.masks import Reliability, dice, dice_from_counts, expected_calibration_error, iou, iou_from_counts, reliability_curve
from cmtlib.metrics.bootstrap import BootstrapCI, bootstrap_ci
from cmtlib.metrics.summary import PREDICTION_COLUMNS, SECTIONS, metrics_from_predictions

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
