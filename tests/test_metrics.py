"""cmtlib.metrics: agreement with sklearn, hand-computed EER / operating points / Dice / ECE, the
patient bootstrap, and the metrics.json structure of DESIGN.md."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from cmtlib import metrics as M
from cmtlib.fileio import write_json


def _random_cases(seed=0, n_cases=40):
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        n = int(rng.integers(2, 80))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        # Odd cases: scores on a 5-value grid, so many ties within and across classes.
        s = rng.integers(0, 5, n) / 4 if i % 2 else rng.random(n)
        yield y, s


# ---- ROC, AUC ----------------------------------------------------------------------------------

@pytest.mark.parametrize("drop", [False, True])
def test_roc_curve_agrees_with_sklearn_including_ties(drop):
    for y, s in _random_cases():
        ours, theirs = M.roc_curve(y, s, drop_intermediate=drop), skm.roc_curve(y, s, drop_intermediate=drop)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b)


def test_roc_curve_hand_case_with_tie():
    # Scores desc: 0.9 (pos), then 0.5 shared by a pos and a neg, then 0.1 (neg).
    fpr, tpr, thr = M.roc_curve([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.5, 0.1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])


def test_roc_curve_one_class_warns_nan_like_sklearn():
    with pytest.warns(M.UndefinedMetricWarning, match="no negative"):
        fpr, tpr, _ = M.roc_curve([1, 1], [0.2, 0.4])
    assert np.isnan(fpr).all() and tpr[-1] == 1


def test_roc_auc_agrees_with_sklearn_and_hand_cases():
    for y, s in _random_cases(seed=1):
        assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    # sklearn's doc example: pairs (pos, neg) ordered right: 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3 of 4.
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert M.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half


def test_roc_auc_one_class_is_nan_with_warning():
    with pytest.warns(M.UndefinedMetricWarning, match="both classes"):
        assert math.isnan(M.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_inputs_are_validated_with_fixes():
    with pytest.raises(ValueError, match="unknown labels"):
        M.roc_auc([0, np.nan, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one score per label"):
        M.eer([0, 1], [0.1, 0.2, 0.3])


# ---- EER -----------------------------------------------------------------------------------------

def test_eer_perfect_separation_is_zero():
    # desc: p p n n -> (fpr, fnr): (0,1) (0,.5) (0,0) ... FNR reaches 0 while FPR is 0.
    assert M.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_eer_inverted_scores_is_one():
    assert M.eer([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_eer_crossing_between_two_roc_points():
    # Labels by descending score: p p n n p n n (3 positives, 4 negatives).
    # ROC points (fpr, fnr): (0, 1) (0, 2/3) (0, 1/3) (1/4, 1/3) (1/2, 1/3) (1/2, 0) ...
    # fpr - fnr: -1, -1/3, -1/3, -1/12, +1/6: the crossing lies between (1/4, 1/3) and (1/2, 1/3).
    # t = (1/12) / (1/6 + 1/12) = 1/3 -> fpr = 1/4 + 1/3 * 1/4 = 1/3 = fnr.
    y = [1, 1, 0, 0, 1, 0, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert M.eer(y, s) == pytest.approx(1 / 3)


def test_eer_tie_makes_a_diagonal_segment():
    # 0.5 is shared by a positive and a negative: the ROC goes diagonally from (fpr 0, fnr .5) to
    # (fpr .5, fnr 0); fpr - fnr goes -0.5 -> +0.5, so it crosses halfway: EER = 0.25.
    assert M.eer([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.25)
    # All scores tied: the ROC is the diagonal, EER = 0.5.
    assert M.eer([1, 0, 1, 0], [0.3] * 4) == pytest.approx(0.5)


def _eer_reference(y, s):
    """Independent walk along sklearn's ROC to the first point where FPR >= FNR."""
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    fnr = 1 - tpr
    for j in range(1, len(fpr)):
        d0, d1 = fpr[j - 1] - fnr[j - 1], fpr[j] - fnr[j]
        if d1 >= 0:
            t = -d0 / (d1 - d0)
            return fpr[j - 1] + t * (fpr[j] - fpr[j - 1])
    raise AssertionError("ROC never crossed")


def test_eer_agrees_with_a_reference_walk():
    for y, s in _random_cases(seed=2):
        assert M.eer(y, s) == pytest.approx(_eer_reference(y, s), abs=1e-12)


def test_eer_one_class_is_nan_with_warning():
    with pytest.warns(M.UndefinedMetricWarning):
        assert math.isnan(M.eer([1, 1], [0.2, 0.3]))


# ---- operating point -----------------------------------------------------------------------------

def test_threshold_200_negatives_allows_two():
    # k = floor(0.01 x 200) = 2. Negatives 0.000 .. 0.199: the 3rd highest is 0.197, so the lowest
    # threshold with at most 2 negatives at or above it is just above 0.197.
    neg = np.arange(200) / 1000
    pos = np.array([0.197, 0.198, 0.25, 0.1])
    y = np.r_[np.zeros(200), np.ones(4)]
    s = np.r_[neg, pos]
    op = M.threshold_at_specificity(y, s, 0.99)
    assert op == (np.nextafter(0.197, np.inf), 2, 200, True)
    assert (neg >= op.threshold).sum() == 2  # 0.198 and 0.199
    assert (neg >= np.nextafter(op.threshold, -np.inf)).sum() == 3  # one step lower flags 3
    # Positives at or above: 0.198 and 0.25; the one tied with the 3rd negative (0.197) is missed.
    assert M.sensitivity_at(y, s, op.threshold) == 0.5
    assert M.specificity_at(y, s, op.threshold) == 198 / 200


def test_threshold_ties_among_negatives_flag_fewer():
    # Top negatives 0.9, 0.8, 0.8, 0.8; k = 2; the 3rd highest is 0.8 (tied with the 2nd and 4th),
    # so the threshold must be above 0.8 and only 0.9 is flagged (1 <= 2).
    neg = np.r_[0.9, 0.8, 0.8, 0.8, np.arange(196) / 1000]
    op = M.threshold_at_specificity(np.zeros(200), neg)
    assert op.threshold == np.nextafter(0.8, np.inf) and op.k == 2
    assert M.specificity_at(np.zeros(200), neg, op.threshold) == 199 / 200


def test_threshold_fewer_than_100_negatives_is_flagged_not_failed():
    neg = np.linspace(0, 0.5, 99)
    op = M.threshold_at_specificity(np.zeros(99), neg)
    assert (op.k, op.estimable, op.threshold) == (0, False, np.nextafter(0.5, np.inf))
    op = M.threshold_at_specificity(np.zeros(100), np.linspace(0, 0.5, 100))
    assert (op.k, op.estimable) == (1, True)


def test_threshold_edge_cases():
    # (1 - 0.9) x 10 is 0.9999999999999998 in floats; k must still be 1.
    op = M.threshold_at_specificity(np.zeros(10), np.arange(10) / 10, 0.9)
    assert op.k == 1 and op.threshold == np.nextafter(0.8, np.inf)
    assert M.threshold_at_specificity([0, 0], [0.1, 0.2], 0.0).threshold == -np.inf
    with pytest.warns(M.UndefinedMetricWarning, match="no negatives"):
        assert math.isnan(M.threshold_at_specificity([1, 1], [0.1, 0.2]).threshold)
    with pytest.raises(ValueError, match="specificity"):
        M.threshold_at_specificity([0, 1], [0.1, 0.2], 99)


def test_rates_undefined_are_nan_with_warning():
    with pytest.warns(M.UndefinedMetricWarning, match="no positives"):
        assert math.isnan(M.sensitivity_at([0, 0], [0.1, 0.2], 0.5))
    with pytest.warns(M.UndefinedMetricWarning, match="threshold is NaN"):
        assert math.isnan(M.specificity_at([0, 1], [0.1, 0.2], math.nan))


# ---- accuracy, confusion matrix ----------------------------------------------------------------------

def test_accuracy_and_confusion_matrix_agree_with_sklearn():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y, pred = rng.integers(0, 2, 30), rng.integers(0, 2, 30)
        assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
        np.testing.assert_array_equal(M.confusion_matrix(y, pred), skm.confusion_matrix(y, pred, labels=[0, 1]))
    # y = 0 0 1 1 1, pred = 0 1 1 1 0 -> tn 1, fp 1, fn 1, tp 2.
    np.testing.assert_array_equal(M.confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]), [[1, 1], [1, 2]])
    assert M.accuracy([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]) == 0.6
    np.testing.assert_array_equal(M.confusion_matrix([1, 1], [1, 1]), [[0, 0], [0, 2]])  # always 2 x 2


# ---- Dice, IoU ---------------------------------------------------------------------------------------

def test_dice_iou_golden_2x2():
    pred = np.array([[1, 1], [0, 0]])
    true = np.array([[1, 0], [1, 0]])
    # |A and B| = 1, |A| = |B| = 2, |A or B| = 3: Dice = 2/4, IoU = 1/3.
    assert M.dice(pred, true) == 0.5
    assert M.iou(pred, true) == pytest.approx(1 / 3)


def test_dice_iou_batch_and_empty_truth():
    pred = np.array([[[1, 1], [0, 0]], [[1, 0], [0, 1]], [[0, 0], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [0, 0]]])
    true = np.array([[[1, 0], [1, 0]], [[1, 0], [0, 1]], [[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])
    # Perfect -> 1; empty prediction on a non-empty truth -> 0; empty truth -> NaN (left out, DESIGN).
    np.testing.assert_allclose(M.dice(pred, true), [0.5, 1, 0, np.nan, np.nan])
    np.testing.assert_allclose(M.iou(pred, true), [1 / 3, 1, 0, np.nan, np.nan])
    assert M.dice(pred[:, None].astype(bool), true[:, None]).shape == (5,)  # (N, 1, H, W) -> (N,)


def test_dice_rejects_probabilities_and_shape_mismatch():
    with pytest.raises(ValueError, match="threshold probabilities"):
        M.dice(np.full((2, 2), 0.7), np.ones((2, 2)))
    with pytest.raises(ValueError, match="same shape"):
        M.iou(np.ones((2, 2)), np.ones((3, 2)))


# ---- calibration -----------------------------------------------------------------------------------

def test_ece_hand_computed_four_samples():
    # 2 bins [0, .5) and [.5, 1]: bin 0 holds p .2, .4 (mean .3) with labels 0, 1 (freq .5):
    # gap .2, weight 2/4; bin 1 holds p .6, .9 (mean .75), labels 1, 1: gap .25, weight 2/4.
    # ECE = .5 x .2 + .5 x .25 = .225.
    y, p = [0, 1, 1, 1], [0.2, 0.4, 0.6, 0.9]
    assert M.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.225)
    # 10 bins: all four alone: (|.2 - 0| + |.4 - 1| + |.6 - 1| + |.9 - 1|) / 4 = 1.3 / 4.
    assert M.expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.325)
    assert M.expected_calibration_error([1, 0, 0, 0], [0.25] * 4) == pytest.approx(0.0)


def test_reliability_curve_agrees_with_sklearn():
    rng = np.random.default_rng(4)
    p = np.r_[rng.random(300), 0.0, 0.5, 1.0, 0.3]  # edges included
    y = (rng.random(p.size) < p).astype(int)
    rel = M.reliability_curve(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    full = rel.counts > 0
    np.testing.assert_allclose(rel.observed[full], prob_true)
    np.testing.assert_allclose(rel.mean_predicted[full], prob_pred)
    np.testing.assert_allclose(rel.centres, np.arange(0.05, 1, 0.1))
    assert rel.counts.sum() == p.size
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.expected_calibration_error([0, 1], [0.5, 1.5])


# ---- bootstrap ---------------------------------------------------------------------------------------

def _clustered(seed=0, n_patients=60, per_patient=5):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), per_patient)
    y = np.repeat(rng.integers(0, 2, n_patients), per_patient)
    s = np.repeat(rng.random(n_patients), per_patient) + 0.4 * y + 0.05 * rng.random(groups.size)
    return y, s, groups


def test_bootstrap_contains_estimate_and_is_deterministic():
    y, s, g = _clustered()
    a = M.bootstrap_ci("auc", (y, s), g, n_boot=500, seed=7)
    assert a.low < a.estimate < a.high and a.n_used == 500
    assert a.estimate == pytest.approx(skm.roc_auc_score(y, s))
    assert M.bootstrap_ci("auc", (y, s), g, n_boot=500, seed=7) == a
    assert M.bootstrap_ci("auc", (y, s), g, n_boot=500, seed=8) != a


@pytest.mark.parametrize("name, fn", [("auc", M.roc_auc), ("eer", M.eer),
                                      ("mean", np.mean), ("ece", M.expected_calibration_error)])
def test_vectorised_bootstrap_equals_per_resample_loop(name, fn):
    y, s, g = _clustered(seed=1)
    arrays = (s / s.max(),) if name == "mean" else (y, s / s.max())
    fast = M.bootstrap_ci(name, arrays, g, n_boot=200, seed=3)
    slow = M.bootstrap_ci(fn, arrays, g, n_boot=200, seed=3)
    np.testing.assert_allclose(fast[:3], slow[:3], rtol=1e-12)
    assert fast.n_used == slow.n_used == 200


def test_bootstrap_resamples_whole_patients():
    sizes = [1, 2, 3, 4]
    groups = np.repeat(np.arange(4), sizes)

    def check(g):
        ids, counts = np.unique(g, return_counts=True)
        assert all(c % sizes[i] == 0 for i, c in zip(ids, counts)), "a patient was split"
        return float(len(g))

    ci = M.bootstrap_ci(check, groups, groups, n_boot=100, seed=0)
    assert ci.n_used == 100


def test_patient_bootstrap_is_wider_than_image_bootstrap():
    # 20 patients x 10 images, each patient's images identical: the information is 20 values, not
    # 200, so the patient interval is about sqrt(10) ~ 3x the (wrong) image-level one.
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(20), 10)
    x = np.repeat(rng.random(20), 10)
    by_patient = M.bootstrap_ci("mean", x, groups, n_boot=1000)
    by_image = M.bootstrap_ci("mean", x, np.arange(200), n_boot=1000)
    assert by_patient.estimate == by_image.estimate == pytest.approx(x.mean())
    assert (by_patient.high - by_patient.low) > 2 * (by_image.high - by_image.low)


def test_bootstrap_skips_undefined_resamples():
    # 4 patients, one image each, one positive: a resample misses the positive with probability
    # (3/4)^4 = 0.32 (AUC undefined there), so about 680 of 1000 resamples count.
    y, s, g = np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3]), np.arange(4)
    ci = M.bootstrap_ci("auc", (y, s), g, n_boot=1000)
    assert 600 < ci.n_used < 760 and ci.high == 1.0
    # EER is undefined in exactly the same resamples, vectorised or not.
    assert M.bootstrap_ci("eer", (y, s), g, n_boot=1000).n_used == ci.n_used
    with pytest.warns(M.UndefinedMetricWarning):
        assert M.bootstrap_ci(M.eer, (y, s), g, n_boot=1000).n_used == ci.n_used
    assert math.isnan(M.bootstrap_ci("auc", (y, s), g, n_boot=1000, min_used=0.9).low)


def test_bootstrap_dataframe_and_errors():
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "pid": ["a", "a", "b", "c"]})
    ci = M.bootstrap_ci(lambda d: d["x"].mean(), df, df["pid"], n_boot=50)
    assert ci.estimate == 2.5 and ci.low <= 2.5 <= ci.high
    with pytest.raises(KeyError, match="auc"):
        M.bootstrap_ci("median", df["x"].to_numpy(), df["pid"])
    with pytest.raises(ValueError, match="one per image"):
        M.bootstrap_ci("mean", df["x"].to_numpy(), ["a"])


# ---- metrics.json ------------------------------------------------------------------------------------

COLS = ["image_id", "patient_id", "source", "view", "label_healthy", "label_covid", "label_other",
        "p_healthy", "p_covid", "p_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou"]
ROWS = [  # labels as the manifest writes them: '1', '0', '' (unknown)
    ("r0", "p1", "srcA", "PA", "0", "1", "0", 0.2, 0.95, 0.1, "0.9", "0.8", "", ""),
    ("r1", "p1", "srcA", "PA", "0", "1", "0", 0.6, 0.75, 0.2, "0.8", "0.7", "", ""),
    ("r2", "p2", "srcA", "AP", "1", "0", "0", 0.8, 0.25, 0.1, "0.95", "0.9", "", ""),
    ("r3", "p3", "srcB", "AP", "0", "0", "1", 0.3, 0.65, 0.7, "", "", "0.3", "0.2"),
    ("r4", "p4", "srcB", "PA", "", "", "", 0.5, 0.4, 0.5, "", "", "", ""),
    ("r5", "p5", "srcB", "", "0", "1", "0", 0.1, 0.35, 0.4, "0.7", "0.6", "0.6", "0.5"),
    ("r6", "p6", "srcA", "PA", "1", "0", "0", 0.9, 0.15, 0.2, "", "", "", ""),
]
TOP = {"covid", "healthy", "other", "lung", "disease", "calibration", "covid_as_unhealthy",
       "covid_as_unhealthy_ci_low", "covid_as_unhealthy_ci_high", "counts", "notes"}


def _ci(*names):
    return {f"{n}{s}" for n in names for s in ("", "_ci_low", "_ci_high")}


SECTION_KEYS = {
    "covid": _ci("auc", "eer", "sens_at_spec99", "sens_at_spec99_oracle", "accuracy", "sensitivity", "specificity") | {"threshold", "spec99_threshold"},
    "healthy": _ci("accuracy"), "other": _ci("accuracy"), "lung": _ci("dice", "iou"),
    "disease": _ci("dice", "iou"), "calibration": _ci("ece"),
}


def _frame():
    return pd.DataFrame(ROWS, columns=COLS)


def _check_structure(m):
    assert set(m) - {"by_view", "by_source", "ci"} == TOP
    for section, keys in SECTION_KEYS.items():
        assert set(m[section]) == keys, section
    assert set(m["counts"]) == {"n_images", "n_patients", "n_covid", "n_negative"}


def test_the_operating_threshold_is_not_the_papers_point():
    """covid.threshold, sensitivity and specificity follow the run's frozen operating threshold;
    sens_at_spec99 keeps the paper's."""
    m = M.metrics_from_predictions(_frame(), threshold=0.8, operating_threshold=0.3, n_boot=50)
    c = m["covid"]
    assert c["threshold"] == 0.3 and c["spec99_threshold"] == 0.8
    assert c["sens_at_spec99"] == pytest.approx(1 / 3)  # .95 of .95 .75 .35
    assert c["sensitivity"] == pytest.approx(1.0)  # all three positives >= .3
    assert c["specificity"] == pytest.approx(2 / 3)  # negatives .25 .65 .15: .25 and .15 fall below .3


def test_metrics_from_predictions_hand_computed():
    m = M.metrics_from_predictions(_frame(), threshold=0.8, n_boot=200)
    _check_structure(m)
    assert set(m["by_view"]) == {"PA", "AP", "unknown"} and set(m["by_source"]) == {"srcA", "srcB"}
    for group in [*m["by_view"].values(), *m["by_source"].values()]:
        _check_structure(group)
    c = m["covid"]
    # COVID known (r4 unknown): positives .95 .75 .35, negatives .25 .65 .15.
    # AUC: .95 and .75 beat all 3 negatives, .35 beats .25 and .15 -> 8/9.
    assert c["auc"] == pytest.approx(8 / 9)
    # Desc: p p n p n n; (fpr, fnr) at the 3rd point (after .65): (1/3, 1/3) -> EER 1/3.
    assert c["eer"] == pytest.approx(1 / 3)
    # Threshold .8 (given): only .95 of 3 positives -> 1/3. Oracle on 3 negatives: k = 0, just above
    # .65 -> .95 and .75 -> 2/3.
    assert c["threshold"] == 0.8
    assert c["sens_at_spec99"] == pytest.approx(1 / 3)
    assert c["sens_at_spec99_oracle"] == pytest.approx(2 / 3)
    # At 0.5: r0 r1 r2 r6 right, r3 (.65, neg) and r5 (.35, pos) wrong -> 4/6.
    assert c["accuracy"] == pytest.approx(4 / 6)
    # Without an operating threshold the decision is the 99 % point: sensitivity 1/3; negatives
    # .25 .65 .15 all below .8 -> specificity 1.
    assert c["sensitivity"] == pytest.approx(1 / 3) and c["specificity"] == 1.0 and c["spec99_threshold"] == 0.8
    # Healthy at 0.5: only r1 (.6 but unhealthy) wrong of 6 known -> 5/6; other: all 6 right.
    assert m["healthy"]["accuracy"] == pytest.approx(5 / 6)
    assert m["other"]["accuracy"] == 1.0
    # COVID-positive r0 (p_healthy .2), r1 (.6), r5 (.1): 2 of 3 called unhealthy.
    assert m["covid_as_unhealthy"] == pytest.approx(2 / 3)
    # Lung: (.9 + .8 + .95 + .7) / 4, IoU (.8 + .7 + .9 + .6) / 4; disease: r3 and r5.
    assert m["lung"]["dice"] == pytest.approx(0.8375) and m["lung"]["iou"] == pytest.approx(0.75)
    assert m["disease"]["dice"] == pytest.approx(0.45) and m["disease"]["iou"] == pytest.approx(0.35)
    # 10 bins, each probability alone: (.05 + .25 + .25 + .65 + .65 + .15) / 6 = 1/3.
    assert m["calibration"]["ece"] == pytest.approx(1 / 3)
    assert m["counts"] == {"n_images": 7, "n_patients": 6, "n_covid": 3, "n_negative": 3}
    assert any("fewer than 100 COVID-negative" in n for n in m["notes"])
    for sec in SECTION_KEYS:
        for key, v in m[sec].items():
            if not key.endswith(("_ci_low", "_ci_high")) and key not in ("threshold", "spec99_threshold") and not math.isnan(v):
                assert m[sec][f"{key}_ci_low"] <= v <= m[sec][f"{key}_ci_high"], (sec, key)


def test_metrics_groups_nan_where_no_ground_truth(tmp_path):
    m = M.metrics_from_predictions(_frame(), threshold=0.8, n_boot=100)
    ap, unknown, src_a = m["by_view"]["AP"], m["by_view"]["unknown"], m["by_source"]["srcA"]
    assert math.isnan(ap["covid"]["auc"]) and math.isnan(ap["covid"]["sens_at_spec99"])  # negatives only
    assert ap["covid"]["accuracy"] == 0.5  # r2 right, r3 wrong
    assert math.isnan(unknown["covid"]["eer"]) and unknown["covid"]["sens_at_spec99"] == 0.0
    assert math.isnan(unknown["covid"]["accuracy_ci_low"])  # one patient: no interval
    assert src_a["covid"]["auc"] == 1.0 and src_a["covid"]["eer"] == 0.0
    assert math.isnan(src_a["disease"]["dice"]) and math.isnan(m["by_view"]["PA"]["disease"]["iou"])
    assert any(n.startswith("view AP: only COVID-negative") for n in m["notes"])
    assert any(n.startswith("source srcA: no non-empty disease") for n in m["notes"])
    assert any(n.startswith("view PA: CIs from fewer than 100 resamples") and "covid.auc" in n for n in m["notes"])
    assert "view unknown: fewer than 2 patients: no confidence intervals" in m["notes"]
    back = json.loads(write_json(tmp_path / "metrics.json", m).read_text())
    assert back["by_view"]["AP"]["covid"]["auc"] is None
    assert back["by_source"]["srcA"]["disease"]["dice"] is None
    assert back["covid"]["auc"] == pytest.approx(8 / 9)


def test_metrics_float_labels_give_the_same_result(tmp_path):
    strings = _frame()
    floats = strings.copy()
    for col in COLS[4:7] + COLS[10:]:
        floats[col] = pd.to_numeric(floats[col].replace("", np.nan))
    a = write_json(tmp_path / "a.json", M.metrics_from_predictions(strings, 0.8, n_boot=50)).read_text()
    b = write_json(tmp_path / "b.json", M.metrics_from_predictions(floats, 0.8, n_boot=50)).read_text()
    assert a == b


def test_thresholds_are_chosen_once_on_validation_and_metrics_only_apply_them():
    from cmtlib.metrics.operating import choose_thresholds, threshold_notes

    val = pd.DataFrame({"label_covid": ["0"] * 150 + ["1"], "p_covid": list(np.arange(150) / 1000) + [0.5]})
    record = choose_thresholds(val, "specificity:0.95")
    # 150 negatives: the paper's 99 % point lets k = 1 through, so it sits just above the 2nd highest (0.148);
    # specificity 0.95 lets floor(7.5) = 7 through: just above the 8th highest negative (0.142).
    assert record["spec99_threshold"] == np.nextafter(0.148, np.inf) and record["spec99_estimable"]
    assert record["covid_threshold"] == np.nextafter(0.142, np.inf) and record["threshold_rule"] == "specificity:0.95"
    m = M.metrics_from_predictions(_frame(), record["spec99_threshold"], operating_threshold=record["covid_threshold"],
                                   notes=threshold_notes(record), n_boot=0)
    assert m["covid"]["spec99_threshold"] == record["spec99_threshold"] and m["covid"]["threshold"] == record["covid_threshold"]
    assert not any("validation" in n for n in m["notes"])
    assert math.isnan(m["covid"]["auc_ci_low"])  # n_boot = 0: no intervals
    few = choose_thresholds(val.iloc[60:], "specificity:0.99")  # 90 negatives
    m = M.metrics_from_predictions(_frame(), few["spec99_threshold"], notes=threshold_notes(few), n_boot=0)
    assert any("fewer than 100 validation" in n and "(90)" in n for n in m["notes"])
    m = M.metrics_from_predictions(_frame(), threshold=None, n_boot=0)
    assert math.isnan(m["covid"]["sens_at_spec99"]) and "no validation threshold" in m["notes"][0]


def test_metrics_reject_broken_predictions():
    with pytest.raises(ValueError, match="lack column.*p_covid.*CONTRACTS"):
        M.metrics_from_predictions(_frame().drop(columns="p_covid"), 0.5)
    bad = _frame()
    bad.loc[0, "label_covid"] = "2"
    with pytest.raises(ValueError, match="label_covid has .*2"):
        M.metrics_from_predictions(bad, 0.5)
    bad = _frame()
    bad.loc[0, "p_covid"] = 3.0
    with pytest.raises(ValueError, match=r"p_covid has .*\[0, 1\]"):
        M.metrics_from_predictions(bad, 0.5)


def test_metrics_speed_1000_rows():
    rng = np.random.default_rng(0)
    n = 1000
    y = rng.integers(0, 2, n)
    df = pd.DataFrame({
        "patient_id": [f"p{i}" for i in rng.integers(0, 400, n)], "source": rng.choice(["a", "b", "c"], n),
        "view": rng.choice(["PA", "AP", ""], n), "label_covid": y.astype(str),
        "label_healthy": np.where(y == 1, "0", rng.choice(["0", "1"], n)), "label_other": rng.choice(["0", "1", ""], n),
        "p_covid": rng.random(n) * 0.6 + 0.4 * y, "p_healthy": rng.random(n), "p_other": rng.random(n),
        "lung_dice": rng.random(n), "lung_iou": rng.random(n), "disease_dice": rng.random(n), "disease_iou": rng.random(n),
    })
    start = time.perf_counter()
    m = M.metrics_from_predictions(df, 0.7, n_boot=1000)
    elapsed = time.perf_counter() - start
    print(f"metrics_from_predictions: 1000 rows, 1000 resamples, 7 groups: {elapsed:.2f} s")
    assert m["covid"]["auc_ci_low"] < m["covid"]["auc"] < m["covid"]["auc_ci_high"]
    assert elapsed < 10, "the vectorised bootstrap got slow"


def test_within_group_auc_counts_only_pairs_inside_a_group():
    # Group a: positives .9 .8 over negative .1 -> 1.0 (2 pairs); group b: positive .2 below negative .3 -> 0.0 (1 pair);
    # group c: negatives only, no pair. Across groups the score would separate perfectly by group alone.
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.95])
    g = np.array(["a", "a", "a", "b", "b", "c"])
    assert M.within_group_auc(y, s, g) == pytest.approx((2 * 1.0 + 1 * 0.0) / 3)
    with pytest.warns(M.UndefinedMetricWarning):
        assert math.isnan(M.within_group_auc([1, 0], [0.5, 0.4], ["a", "b"]))
