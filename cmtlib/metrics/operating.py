"""The run's operating threshold: chosen once, on the validation films, by a rule the run states.

`choose_thresholds` is the one place a COVID-19 threshold is chosen: the engine calls it when a run
is trained (its result is the run's threshold.json), and the comparison's embedding classifiers call
it on their own validation scores with the same rule, so that every method decides alike.

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
    format_balanced:S  the lowest threshold at which the validation specificity, averaged over the
                     film formats (original short side >= LARGE_PX, or smaller), is at least S: a
                     threshold that large hospital films and small films both have to accept, so
                     that it does not sit where one format's negatives are easy (measured on
                     leave-one-collection-out folds: docs/shortcuts.md)
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from cmtlib.errors import ConfigError
from cmtlib.metrics._kernels import _binary, _scores
from cmtlib.metrics.ranking import threshold_at_specificity

RULE_KINDS = ("specificity", "logit_normal", "format_balanced")
LARGE_PX = 224  # a film format boundary: hospital films are at least this on their short side; thumbnails far below
EPS = 1e-6  # scores are probabilities: logits are taken of scores clipped to [EPS, 1 - EPS]


def parse_rule(rule: str) -> tuple[str, float]:
    """("specificity" | "logit_normal", its level in (0, 1)); ConfigError naming the valid forms."""
    kind, _, level = str(rule).partition(":")
    try:
        value = float(level)
    except ValueError:
        value = math.nan
    if kind not in RULE_KINDS or not 0.0 < value < 1.0:
        raise ConfigError(f"threshold_rule {rule!r} is not a rule; use specificity:S, logit_normal:Q or format_balanced:S with "
                          "S, Q in (0, 1), e.g. specificity:0.95 (the paper's 99 % point is specificity:0.99)")
    return kind, value


def describe_rule(rule: str) -> str:
    """The rule in plain words, for pages and predict JSON."""
    kind, level = parse_rule(rule)
    if kind == "specificity":
        return (f"the lowest score at which at most {100 * (1 - level):.3g} % of the COVID-negative validation films "
                "score at or above it")
    if kind == "format_balanced":
        return (f"the lowest score at which the COVID-negative validation films are left unflagged {100 * level:.3g} % of the "
                f"time on average over the two film formats (large films, at least {LARGE_PX} px on their short side, and "
                "smaller ones), so that neither format's negatives set it alone")
    return (f"the {100 * level:.3g}th percentile of a bell curve fitted to the COVID-negative validation films' scores "
            f"(on the log-odds scale), so that about {100 * (1 - level):.3g} % of films like them would be flagged")


def format_groups(height, width) -> np.ndarray:
    """Each film's format for format_balanced: "large" (short side >= LARGE_PX) or "small"; "large"
    where the size is unknown (a hospital film is the usual case)."""
    h, w = np.asarray(height, dtype=float), np.asarray(width, dtype=float)
    short = np.fmin(h, w)
    return np.where(np.isnan(short) | (short >= LARGE_PX), "large", "small")


def _balanced(neg: np.ndarray, groups: np.ndarray, level: float) -> float:
    """The lowest threshold whose specificity averaged over the groups of the negatives is >= level."""
    parts = [neg[groups == g] for g in dict.fromkeys(groups)]
    for t in np.r_[np.unique(neg), np.inf]:
        t = float(np.nextafter(t, np.inf))
        if np.mean([(part < t).mean() for part in parts]) >= level:
            return t
    return math.inf


def operating_threshold(y, scores, rule: str, groups=None) -> dict:
    """The threshold the rule gives on validation labels `y` (1 = COVID-19) and scores (probabilities);
    `groups` (N,): each film's format, for format_balanced (None: one group).

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
    if kind == "format_balanced":
        g = np.full(y.size, "all") if groups is None else np.asarray(groups, dtype=str)
        threshold = _balanced(neg, g[~y], level)
        out["groups"] = {name: int((g[~y] == name).sum()) for name in dict.fromkeys(g[~y])}
    elif kind == "specificity":
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


PAPER_SPECIFICITY = 0.99  # the paper's operating point: sensitivity at 99 % specificity


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[name].replace("", np.nan), errors="coerce").to_numpy(dtype=float)


def choose_thresholds(val: pd.DataFrame, rule: str) -> dict:
    """The operating threshold by `rule` and the paper's 99 % point, chosen on validation predictions
    (columns label_covid, p_covid, and orig_height / orig_width for format_balanced; rows without a
    label or a score are left out). The result is what a run stores as threshold.json.

    Returns:
        dict: covid_threshold (NaN without negatives), threshold_rule, rule_text, val_specificity,
        val_sensitivity, n_negative, n_positive, note, negatives_by_format (format_balanced only),
        spec99_threshold, spec99_estimable (at least 100 negatives), chosen_on.
    """
    y, p = _column(val, "label_covid"), _column(val, "p_covid")
    keep = ~np.isnan(y) & ~np.isnan(p)
    groups = format_groups(_column(val, "orig_height"), _column(val, "orig_width"))[keep]
    chosen = operating_threshold(y[keep].astype(int), p[keep], rule, groups=groups)
    paper = threshold_at_specificity(y[keep].astype(int), p[keep], PAPER_SPECIFICITY) if (y[keep] == 0).any() else None
    return {"covid_threshold": chosen["threshold"], "threshold_rule": rule, "rule_text": describe_rule(rule),
            "val_specificity": chosen["val_specificity"], "val_sensitivity": chosen["val_sensitivity"],
            "n_negative": chosen["n_negative"], "n_positive": chosen["n_positive"], "note": chosen["note"],
            "negatives_by_format": chosen.get("groups"),
            "spec99_threshold": paper.threshold if paper else math.nan, "spec99_estimable": bool(paper and paper.estimable),
            "chosen_on": "val"}


def threshold_notes(record: dict | None) -> list[str]:
    """What metrics.json must say about a threshold record (choose_thresholds): too few validation
    negatives for the paper's 1 % false-alarm rate."""
    record = record or {}
    if record.get("spec99_estimable"):
        return []
    return [f"fewer than 100 validation COVID-negative images ({int(record.get('n_negative') or 0)}): the 1 % false-alarm rate "
            "cannot be estimated; the threshold sits above every negative"]
