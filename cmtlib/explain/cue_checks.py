"""The shortcut audit's measures that read the films' metadata and simple image floors.

Metadata cues (`METADATA`): what a collection records about each film that can stand in for the
label: its source, its view and its original size (the long side before caching; films stored
smaller are blurrier once cached). Each is read as levels (`cue_levels`: the values, or for the
size, its distinct values when few, else quartile bins of the train split).

- `data_tie`: does the cue predict the label in these films? Each level's COVID-19 rate on the
  train split scores the test films; its AUC with a patient-bootstrap interval (0.5: no tie).
- `within_class`: does the network's score follow the cue? Within each class, the mean p(COVID-19)
  of the films at the levels commoner among COVID-19 films (on the train split) minus that of the
  others, averaged over the two classes. The label fixed, a network that reads the disease gives the
  two groups the same score; one that follows the cue gives the cue's films more. On phantoms a cue
  is drawn independently of the disease, so this is the cue's own effect; on real collections a
  cue can go with how sick the patients are (AP films in the intensive care unit), which the page says.
- `within_class_probe`: can the embedding tell the cue's levels apart within one class (linear
  probe, cross-validated, a patient's films together)? Encoding a cue is not following it: support.

Image floors (`floors`): a logistic regression on 32 x 32 thumbnails of one region of the films
(FLOOR_REGIONS: the frame, the corners, everything outside where the lungs lie on these films,
and for reference the whole film and the lung field), trained on the train split and scored on the
test split. A region outside the lungs that predicts the label carries a cue. The lung field is the
same for every film (`lung_field`: where the network outlines the lungs on at least LUNG_FIELD of
the test films, dilated), so that no film's own outline, whose shape can differ by collection,
leaks into the region. `floor_association` asks whether the network's score follows a floor's
output within each class (rank correlation): support for the network verdict, not proof.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cmtlib.explain.shortcut import THUMB, linear_probe, thumbnails
from cmtlib.explain.swaps import dilate, geometry
from cmtlib.metrics import bootstrap_ci, roc_auc

METADATA = ("source", "view", "original size")
FLOOR_REGIONS = ("frame", "corners", "outside the lungs", "whole film", "lung field")
CUE_FLOORS = FLOOR_REGIONS[:3]  # regions whose floor names a cue (the whole film and the lungs carry the disease)
LUNG_FIELD = 0.05
FEW_SIZES = 6  # at most this many distinct original sizes are levels of their own; more are binned
MIN_GROUP = 5  # films a class needs on each side of a cue for `within_class` to use that class


def cue_levels(index: pd.DataFrame, cue: str, train: np.ndarray) -> np.ndarray:
    """Each film's level of a metadata cue as a string, '' where unknown.

    Args:
        index: the films' rows (source, view, orig_height, orig_width where known).
        train: (N,) bool, the train split (the size's bins are set there).
    """
    if cue in ("source", "view"):
        if cue not in index.columns:
            return np.full(len(index), "", dtype=object)
        return index[cue].fillna("").astype(str).str.strip().to_numpy(dtype=object)
    if cue != "original size":
        raise KeyError(f"unknown metadata cue {cue!r}; known: {', '.join(METADATA)}")
    if not {"orig_height", "orig_width"} <= set(index.columns):
        return np.full(len(index), "", dtype=object)
    side = np.fmax(pd.to_numeric(index["orig_height"], errors="coerce").to_numpy(float),
                   pd.to_numeric(index["orig_width"], errors="coerce").to_numpy(float))
    known = ~np.isnan(side)
    distinct = np.unique(side[known])
    out = np.full(len(index), "", dtype=object)
    if len(distinct) <= FEW_SIZES:
        out[known] = [f"{v:.0f} px" for v in side[known]]
        return out
    ref = side[known & np.asarray(train, bool)] if (known & np.asarray(train, bool)).any() else side[known]
    edges = np.unique(np.floor(np.quantile(ref, [0.25, 0.5, 0.75])))  # whole pixels: the names say what they hold
    names = [f"<={edges[0]:.0f} px"] + [f"{a + 1:.0f}-{b:.0f} px" for a, b in zip(edges[:-1], edges[1:])] + [f">{edges[-1]:.0f} px"]
    out[known] = np.array(names, dtype=object)[np.searchsorted(edges, side[known], side="left")]
    return out


def level_rates(levels, labels, train) -> tuple[dict[str, float], float]:
    """Each level's COVID-19 rate on the train split, and the overall rate there."""
    lv, y, tr = np.asarray(levels, dtype=object), np.asarray(labels, dtype=float), np.asarray(train, bool)
    use = tr & (lv != "") & ~np.isnan(y)
    overall = float(y[use].mean()) if use.any() else math.nan
    rates = pd.Series(y[use]).groupby(lv[use]).mean().to_dict()
    return {str(k): float(v) for k, v in rates.items()}, overall


def data_tie(levels, labels, patients, train, test, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC of the label from the cue's level on the test split (rates learned on train), with its
    interval; the levels' rates; and `levels`: how many levels the test films hold."""
    lv, y = np.asarray(levels, dtype=object), np.asarray(labels, dtype=float)
    rates, overall = level_rates(lv, y, train)
    use = np.asarray(test, bool) & (lv != "") & ~np.isnan(y)
    out = {"auc": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": int(use.sum()), "levels": int(len(set(lv[use]))),
           "rates": {k: round(v, 3) for k, v in rates.items()}, "note": ""}
    if out["levels"] < 2:
        out["note"] = "one level only among the test films: the cue cannot be told apart here"
        return out
    if len(set(y[use])) < 2:
        out["note"] = "one class only among the test films with the cue known"
        return out
    score = np.array([rates.get(v, overall) for v in lv[use]])
    ci = bootstrap_ci("auc", (y[use].astype(int), score), np.asarray(patients)[use], n_boot=n_boot, seed=seed)
    out.update(auc=ci.estimate, ci_low=ci.low, ci_high=ci.high)
    return out


def cue_group(levels, labels, train) -> np.ndarray:
    """(N,) True at the levels commoner among COVID-19 films on the train split than overall."""
    rates, overall = level_rates(levels, labels, train)
    return np.array([rates.get(v, -1.0) > overall for v in np.asarray(levels, dtype=object)])


def within_class(scores, levels, labels, patients, train, test, n_boot: int = 1000, seed: int = 0) -> dict:
    """The network's score difference between the cue's films and the others, the label fixed
    (module docstring), on the test split: effect with a patient-bootstrap interval, per class."""
    p, lv, y = np.asarray(scores, dtype=float), np.asarray(levels, dtype=object), np.asarray(labels, dtype=float)
    group = cue_group(lv, y, train)
    use = np.asarray(test, bool) & (lv != "") & ~np.isnan(y) & ~np.isnan(p)
    out = {"effect": math.nan, "ci_low": math.nan, "ci_high": math.nan, "by_class": {}, "note": ""}
    classes = []
    for c, name in ((1, "covid"), (0, "other")):
        in_c = use & (y == c)
        n_cue, n_rest = int((in_c & group).sum()), int((in_c & ~group).sum())
        out["by_class"][name] = {"n_cue": n_cue, "n_rest": n_rest, "difference": math.nan}
        if min(n_cue, n_rest) < MIN_GROUP:
            continue
        out["by_class"][name]["difference"] = float(p[in_c & group].mean() - p[in_c & ~group].mean())
        classes.append(c)
    if not classes:
        out["note"] = f"no class has {MIN_GROUP} test films on each side of the cue"
        return out

    def effect(pp, gg, yy) -> float:  # the mean over the classes of (cue's films - the others), per resample
        diffs = [pp[(yy == c) & gg].mean() - pp[(yy == c) & ~gg].mean() for c in classes
                 if ((yy == c) & gg).any() and ((yy == c) & ~gg).any()]
        return float(np.mean(diffs)) if len(diffs) == len(classes) else math.nan

    ci = bootstrap_ci(effect, (p[use], group[use], y[use]), np.asarray(patients)[use], n_boot=n_boot, seed=seed)
    out.update(effect=ci.estimate, ci_low=ci.low, ci_high=ci.high)
    return out


def within_class_probe(embeddings, levels, labels, patients, test, seed: int = 0) -> dict:
    """Linear probes of the cue's levels from the embedding within each class of the test split:
    the mean accuracy over the classes that could be probed, beside always guessing the commonest."""
    lv, y, use = np.asarray(levels, dtype=object), np.asarray(labels, dtype=float), np.asarray(test, bool)
    accuracy, majority = [], []
    for c in (1, 0):
        rows = np.flatnonzero(use & (y == c))
        if not len(rows):
            continue
        r = linear_probe(np.asarray(embeddings)[rows], lv[rows], np.asarray(patients)[rows], seed=seed)
        if not math.isnan(r["accuracy"]):
            accuracy.append(r["accuracy"])
            majority.append(r["majority_rate"])
    if not accuracy:
        return {"accuracy": math.nan, "majority_rate": math.nan, "classes": 0}
    return {"accuracy": float(np.mean(accuracy)), "majority_rate": float(np.mean(majority)), "classes": len(accuracy)}


def lung_field(test_lungs, share: float = LUNG_FIELD) -> np.ndarray:
    """(S, S) bool: where the lungs lie on at least `share` of the films, dilated (module docstring)."""
    lungs = np.asarray(test_lungs, bool)
    if not len(lungs):
        raise ValueError("no lung outlines to place the lung field")
    return dilate((lungs.mean(axis=0) >= share)[None])[0]


def floor_region(name: str, field: np.ndarray) -> np.ndarray:
    """(S, S) bool: a floor's region (FLOOR_REGIONS) given the lung field."""
    if name == "whole film":
        return np.ones_like(field)
    if name == "lung field":
        return field.copy()
    return geometry(name, field.shape[-1]) & ~field


def floors(train_images, train_y, test_images, test_y, field: np.ndarray, size: int = THUMB) -> dict[str, dict]:
    """Per region of FLOOR_REGIONS: test AUC of a thumbnail logistic regression trained on train,
    and its test probabilities (for `floor_association`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ya, yb = np.asarray(train_y, dtype=float), np.asarray(test_y, dtype=float)
    ka, kb = ~np.isnan(ya), ~np.isnan(yb)
    out = {}
    for name in FLOOR_REGIONS:
        region = floor_region(name, field)
        entry = {"auc": math.nan, "p_test": np.full(len(yb), math.nan), "area": float(region.mean())}
        if 0 < ya[ka].sum() < ka.sum() and 0 < yb[kb].sum() < kb.sum() and region.any():
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            clf.fit(thumbnails(np.asarray(train_images)[ka], np.broadcast_to(region, np.asarray(train_images)[ka].shape), size), ya[ka].astype(int))
            p = clf.predict_proba(thumbnails(test_images, np.broadcast_to(region, np.shape(test_images)), size))[:, 1]
            entry.update(auc=roc_auc(yb[kb].astype(int), p[kb]), p_test=p)
        out[name] = entry
    return out


def floor_ci(floor_p, labels, patients, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The patient-bootstrap interval of a floor's test AUC."""
    y, p = np.asarray(labels, dtype=float), np.asarray(floor_p, dtype=float)
    use = ~np.isnan(y) & ~np.isnan(p)
    if not use.any() or len(set(y[use])) < 2:
        return math.nan, math.nan
    ci = bootstrap_ci("auc", (y[use].astype(int), p[use]), np.asarray(patients)[use], n_boot=n_boot, seed=seed)
    return ci.low, ci.high


def floor_association(scores, floor_p, labels) -> float:
    """Within each class, the rank correlation of the network's score with a floor's output; the
    mean over the two classes (NaN where a class has fewer than MIN_GROUP films)."""
    from scipy.stats import spearmanr

    p, f, y = np.asarray(scores, dtype=float), np.asarray(floor_p, dtype=float), np.asarray(labels, dtype=float)
    rhos = []
    for c in (0, 1):
        m = (y == c) & ~np.isnan(p) & ~np.isnan(f)
        if m.sum() >= MIN_GROUP and np.ptp(f[m]) > 0 and np.ptp(p[m]) > 0:
            rhos.append(float(spearmanr(p[m], f[m]).statistic))
    return float(np.mean(rhos)) if rhos else math.nan
