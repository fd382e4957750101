"""The run's operating threshold rules (cmtlib.metrics.operating), on hand-made scores."""

import math

import numpy as np
import pytest

from cmtlib.errors import ConfigError
from cmtlib.metrics.operating import describe_rule, format_groups, operating_threshold, parse_rule

# 20 negatives 0.01 .. 0.20 and 5 positives.
NEG = np.round(np.arange(1, 21) / 100, 2)
POS = np.array([0.05, 0.3, 0.5, 0.7, 0.9])
Y = np.r_[np.zeros(20, int), np.ones(5, int)]
S = np.r_[NEG, POS]


def test_specificity_rule_allows_floor_of_the_false_alarm_share():
    # 90 %: floor(0.1 x 20) = 2 negatives may score at or above -> just above the 3rd highest (0.18).
    out = operating_threshold(Y, S, "specificity:0.9")
    assert out["threshold"] == pytest.approx(np.nextafter(0.18, 1))
    assert out["val_specificity"] == pytest.approx(18 / 20) and out["val_sensitivity"] == pytest.approx(4 / 5)
    assert out["note"] == "" and out["n_negative"] == 20 and out["n_positive"] == 5


def test_the_papers_rule_on_few_negatives_sits_above_every_negative_and_says_so():
    out = operating_threshold(Y, S, "specificity:0.99")
    assert out["threshold"] == pytest.approx(np.nextafter(0.20, 1)) and out["val_specificity"] == 1.0
    assert "too few" in out["note"]


def test_logit_normal_rule_is_the_quantile_of_the_fitted_negatives():
    logits = np.log(NEG / (1 - NEG))
    expected = 1 / (1 + math.exp(-(logits.mean() + 1.6448536269514722 * logits.std(ddof=1))))
    out = operating_threshold(Y, S, "logit_normal:0.95")
    assert out["threshold"] == pytest.approx(expected, rel=1e-9)
    # One extreme negative moves the smoothed threshold less than it moves the top order statistic.
    y2, s2 = np.r_[Y, 0], np.r_[S, 0.95]
    moved_smooth = operating_threshold(y2, s2, "logit_normal:0.95")["threshold"] - out["threshold"]
    moved_order = operating_threshold(y2, s2, "specificity:0.99")["threshold"] - operating_threshold(Y, S, "specificity:0.99")["threshold"]
    assert 0 < moved_smooth < moved_order


def test_no_negatives_gives_no_threshold():
    out = operating_threshold(np.ones(3, int), np.array([0.2, 0.5, 0.9]), "specificity:0.95")
    assert math.isnan(out["threshold"]) and "no COVID-negative" in out["note"]


@pytest.mark.parametrize("rule", ["spec95", "specificity", "specificity:1.5", "logit_normal:0", "quantile:0.9"])
def test_a_bad_rule_says_which_forms_exist(rule):
    with pytest.raises(ConfigError, match="specificity:S, logit_normal:Q or format_balanced:S"):
        parse_rule(rule)


def test_rules_read_as_plain_sentences():
    assert "5 %" in describe_rule("specificity:0.95") and "COVID-negative validation films" in describe_rule("specificity:0.95")
    assert "95th percentile" in describe_rule("logit_normal:0.95")


def test_format_balanced_averages_the_specificity_of_large_and_small_films():
    # 10 large negatives score high (0.5 .. 0.95), 30 small ones low (0.01 .. 0.10). A plain 90 % rule on
    # the 40 negatives lets 4 through, all large (large specificity 0.6); the balanced rule asks 90 % on
    # average over the two formats, so the large films must be 80 % unflagged.
    large, small = np.linspace(0.5, 0.95, 10), np.linspace(0.01, 0.10, 30)
    y = np.r_[np.zeros(40, int), np.ones(3, int)]
    s = np.r_[large, small, [0.2, 0.6, 0.99]]
    groups = np.r_[["large"] * 10, ["small"] * 30, ["large"] * 3]
    out = operating_threshold(y, s, "format_balanced:0.9", groups=groups)
    assert out["threshold"] == pytest.approx(np.nextafter(0.85, 1))  # 8 of 10 large below, every small one
    assert out["groups"] == {"large": 10, "small": 30} and out["val_specificity"] == pytest.approx(38 / 40)
    plain = operating_threshold(y, s, "specificity:0.9")
    assert plain["threshold"] == pytest.approx(np.nextafter(0.75, 1))  # just above the 5th highest negative
    assert format_groups([1000, 64, np.nan], [900, 64, np.nan]).tolist() == ["large", "small", "large"]
    assert "two film formats" in describe_rule("format_balanced:0.9")
