"""The run's operating threshold: chosen once, on the validation films, by a rule the run states.

DESIGN.md (Metrics) keeps two thresholds apart. The paper's 99 %-specificity point
(`covid.sens_at_spec99`) is a metric; the operating threshold (`covid.threshold`) is the decision
`cmt predict`, the confusion tables and external validation use, and it must hold on a collection
the run never saw. With a few dozen validation negatives the 99 % point sits above every one of them:
a decision set there flags almost nothing elsewhere. Rules (the `threshold_rule` training key):

    specificity:S    the lowest threshold at which at most floor((1 - S) x negatives) validation
                     negatives score at or above it (the paper's rule is specificity:0.99)
    logit_normal:Q   the Q-quantile of a normal fitted to the logits of the validation negatives'
                     scores: a smoothed tail, which moves less with one extreme negative than an
                     order statistic of a few dozen
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from cmtlib.errors import ConfigError
from cmtlib.metrics._kernels import _binary, _scores
from cmtlib.metrics.ranking import threshold_at_specificity

RULE_KINDS = ("specificity", "logit_normal")
EPS = 1e-6  # scores are probabilities: logits are taken of scores clipped to [EPS, 1 - EPS]


def parse_rule(rule: str) -> tuple[str, float]:
    """("specificity" | "logit_normal", its level in (0, 1)); ConfigError naming the valid forms."""
    kind, _, level = str(rule).partition(":")
    try:
        value = float(level)
    except ValueError:
        value = math.nan
    if kind not in RULE_KINDS or not 0.0 < value < 1.0:
        raise ConfigError(f"threshold_rule {rule!r} is not a rule; use specificity:S or logit_normal:Q with S, Q in (0, 1), "
                          "e.g. specificity:0.95 (the paper's 99 % point is specificity:0.99)")
    return kind, value


def describe_rule(rule: str) -> str:
    """The rule in plain words, for pages and predict JSON."""
    kind, level = parse_rule(rule)
    if kind == "specificity":
        return (f"the lowest score at which at most {100 * (1 - level):.3g} % of the COVID-negative validation films "
                "score at or above it")
    return (f"the {100 * level:.3g}th percentile of a bell curve fitted to the COVID-negative validation films' scores "
            f"(on the log-odds scale), so that about {100 * (1 - level):.3g} % of films like them would be flagged")


def operating_threshold(y, scores, rule: str) -> dict:
    """The threshold the rule gives on validation labels `y` (1 = COVID-19) and scores (probabilities).

    Returns:
        dict: threshold (NaN without negatives), rule, n_negative, n_positive, val_specificity and
        val_sensitivity at it (NaN where undefined), and note when the rule had to fall back.
    """
    kind, level = parse_rule(rule)
    y = _binary(y)
    s = _scores(scores, y.size)
    neg, pos = s[~y], s[y]
    out = {"rule": rule, "n_negative": int(neg.size), "n_positive": int(pos.size), "note": ""}
    if neg.size == 0:
        out.update(threshold=math.nan, val_specificity=math.nan, val_sensitivity=math.nan,
                   note="no COVID-negative validation film: no threshold")
        return out
    if kind == "specificity":
        op = threshold_at_specificity(y, s, level)
        threshold = op.threshold
        if not op.estimable:
            out["note"] = (f"{neg.size} validation negatives are too few for a {100 * (1 - level):.3g} % false-alarm rate: "
                           "the threshold sits above every negative")
    else:
        logits = np.log(np.clip(neg, EPS, 1 - EPS) / (1 - np.clip(neg, EPS, 1 - EPS)))
        spread = float(logits.std(ddof=1)) if neg.size > 1 else 0.0
        z = NormalDist().inv_cdf(level)
        threshold = float(1.0 / (1.0 + math.exp(-(float(logits.mean()) + z * spread))))
        if neg.size < 10:
            out["note"] = f"only {neg.size} validation negatives: the fitted curve is a rough guide"
    out.update(threshold=float(threshold), val_specificity=float((neg < threshold).mean()),
               val_sensitivity=float((pos >= threshold).mean()) if pos.size else math.nan)
    return out
