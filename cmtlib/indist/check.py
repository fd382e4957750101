"""The in-distribution check's reference (fitted at training, stored through Run), its verdicts and
their words (the package docstring says how)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmtlib.indist.describe import turned
from cmtlib.indist.distance import Gaussian, conformal_threshold

# The false-alarm rate accepted on films like the validation films. 1 %, not 2 %: on the default run the test films
# were flagged about twice as often as the validation films (4.1 % at 2 %, 2.0 % at 1 %), while every odd input stayed
# flagged at 1 % (benchmarks/RESULTS.md).
SHARE = 0.01
SIGNALS = ("features", "lungs", "appearance")  # the distance signals, in the order reasons are given
# Training films the reference is fitted on, spread evenly over the split: on the default run 600 of its
# 1,309 flagged every odd input and 2.5 % of the test films (2.0 % with all), at half the pass's time
# (about 5 s instead of 11 s on one CPU core; `make report` has little to spare).
FIT_FILMS = 600
MIN_SIDE_SHARE = 0.5  # a file whose shorter side is under this share of the smallest training film's is flagged
FORMAT = 1  # the layout of the stored reference (Reference.to_arrays)

WORDS = {
    "features": "unlike the training films to the network",
    "lungs": "lung outline unlike the training films' (its size, place or shape)",
    "appearance": "brightness, contrast, sharpness or layout unlike the training films'",
    "orientation": "turned or upside down (turned back, it is closer to the training films)",
}
VERDICT_IN, VERDICT_OUT, VERDICT_NA = "like the training films", "outside what this run was trained on", "not available"


def distances(gaussians: Mapping[str, Gaussian], described: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(N,) per signal: each fitted distance, and `orientation`: the appearance's distance as the film
    is over its smallest distance turned by a quarter, half or three-quarter turn. An upright film is
    closer to the training films as it is (below 1); a turned or upside-down one is closer turned back."""
    missing = [s for s in gaussians if s not in described]
    if missing:
        raise ValueError(f"the films' descriptors lack {missing}, which the run's reference was fitted on: is this the run's own model?")
    out = {s: g.distance(described[s]) for s, g in gaussians.items()}
    if "appearance" in gaussians:
        g, a = gaussians["appearance"], described["appearance"]
        closest_turned = np.min([g.distance(turned(a, k)) for k in (1, 2, 3)], 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["orientation"] = np.where(np.isfinite(out["appearance"]), out["appearance"] / np.maximum(closest_turned, 1e-9), np.inf)
    return out


# ---- the reference a run records at training ----------------------------------------------------------
def _ranges(described: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """The training films' 0.5 % and 99.5 % points of what the reasons' words read."""
    a = described["appearance"]
    values = {"brightness": a[:, 2], "contrast": a[:, 4] - a[:, 0], "sharpness": (a[:, 5] + a[:, 7]) / 2}
    if "lung_shape" in described:
        shape = described["lung_shape"]
        values.update(lung_area=shape[:, 0], lung_balance=shape[:, 1], lung_height=shape[:, 2])
    return {k: [float(np.quantile(v, 0.005)), float(np.quantile(v, 0.995))] for k, v in values.items()}


@dataclass
class Reference:
    """What a run recorded of its training films: the distances, their thresholds and the ranges the
    reasons' words read. `why_not` non-empty: the check is not available for this run, and why."""

    gaussians: dict[str, Gaussian] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    ranges: dict[str, list[float]] = field(default_factory=dict)
    min_side: float = 0.0  # the smallest training film's shorter side in pixels (0 = unknown)
    share: float = SHARE
    n_train: int = 0
    n_val: int = 0
    val_flagged: float = math.nan  # share of the validation films flagged
    why_not: str = ""

    @property
    def available(self) -> bool:
        return not self.why_not and bool(self.gaussians)

    def how(self) -> str:
        """How the thresholds were set, in words."""
        return (f"distances to the run's {self.n_train} training films, their thresholds set when it was trained on its "
                f"{self.n_val} validation films so that at most {100 * self.share:.0f} % of films like them are flagged "
                f"({100 * self.val_flagged:.1f} % of them were)")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an .npz (no pickling): each distance's parameters and one JSON string."""
        meta = {"format": FORMAT, "thresholds": self.thresholds, "ranges": self.ranges, "min_side": self.min_side, "share": self.share,
                "n_train": self.n_train, "n_val": self.n_val, "val_flagged": self.val_flagged, "why_not": self.why_not,
                "signals": list(self.gaussians)}
        arrays = {"meta": np.array(json.dumps(meta))}
        for name, g in self.gaussians.items():
            arrays.update({f"{name}.centre": g.centre, f"{name}.scale": g.scale, f"{name}.precision": g.precision})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray] | None) -> Reference:
        """The reference a run stored (Run.indist); one that says why not when the run has none."""
        if arrays is None:
            return cls(why_not="this run holds no record of its training films (trained before the check existed): retrain it to have one")
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != FORMAT:
            return cls(why_not=f"this run's record of its training films has format {meta.get('format')}, this cmtlib reads {FORMAT}: retrain it")
        gaussians = {s: Gaussian(arrays[f"{s}.centre"], arrays[f"{s}.scale"], arrays[f"{s}.precision"]) for s in meta["signals"]}
        return cls(gaussians, meta["thresholds"], meta["ranges"], meta["min_side"], meta["share"], meta["n_train"], meta["n_val"],
                   meta["val_flagged"] if meta["val_flagged"] is not None else math.nan, meta["why_not"])


def fit(train: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray], train_sides: np.ndarray | None = None,
        val_sides: np.ndarray | None = None, share: float = SHARE) -> tuple[Reference, Verdicts]:
    """The reference from the training films' descriptors and thresholds from the validation films'
    (module docstring), and the validation films' verdicts. `*_sides`: each film's shorter side in
    pixels as its file has it (None = unknown: no size rule)."""
    if "features" not in train:
        ref = Reference(why_not="the model gives no embedding, which the check reads")
        return ref, judge(ref, val)
    gaussians = {s: Gaussian.fit(train[s]) for s in SIGNALS if s in train}
    named = distances(gaussians, val)
    table = np.stack(list(named.values()), 1)  # (N_val, K)
    table = np.where(np.isfinite(table), table, np.nan)  # a broken validation output must not set the scale
    scale = np.maximum(np.nan_to_num(np.nanquantile(table, 1 - share, axis=0), nan=1.0), 1e-9)
    score_threshold = conformal_threshold(np.nanmax(table / scale, 1), share)
    sides = _finite(train_sides)
    ref = Reference(gaussians, {s: float(score_threshold * q) for s, q in zip(named, scale)}, _ranges(train),
                    float(sides.min()) if len(sides) else 0.0, share, len(train["features"]), len(val["features"]))
    verdicts = judge(ref, val, val_sides)
    ref.val_flagged = float(1 - np.mean(verdicts.in_distribution)) if len(verdicts) else math.nan
    return ref, verdicts


def spread_rows(n: int, at_most: int = FIT_FILMS) -> np.ndarray:
    """Up to `at_most` of rows 0..n-1, evenly spread (a split is ordered by source and patient, so a
    prefix would miss collections), ascending."""
    return np.unique(np.round(np.linspace(0, n - 1, min(n, at_most))).astype(np.int64)) if n else np.zeros(0, np.int64)


def _finite(values: np.ndarray | None) -> np.ndarray:
    values = np.asarray([] if values is None else values, dtype=np.float64)
    return values[np.isfinite(values) & (values > 0)]


# ---- verdicts -------------------------------------------------------------------------------------------
@dataclass
class Verdicts:
    """Per film: in distribution (1 / 0, NaN where the check is not available), the score (the largest
    signal's distance over its threshold: over 1 = flagged), the reasons in words ('; '-joined, ''
    when in distribution), and each signal's distance."""

    in_distribution: np.ndarray
    score: np.ndarray
    reasons: list[str]
    distances: dict[str, np.ndarray]
    sides: np.ndarray | None = None
    why_not: str = ""

    def __len__(self) -> int:
        return len(self.score)

    def columns(self) -> dict[str, Any]:
        """predictions.csv's columns of the check (cmtlib.predictions.OOD_COLUMNS)."""
        return {"in_distribution": self.in_distribution, "ood_score": self.score, "ood_reason": np.array(self.reasons, dtype=object)}

    def summary(self, ref: Reference) -> dict[str, Any]:
        """metrics.json's `in_distribution` block: how many films were flagged, beside the share the
        thresholds were set to flag on the validation films."""
        flagged = int((self.in_distribution == 0).sum())
        return {"available": not self.why_not, "n": len(self), "n_flagged": None if self.why_not else flagged,
                "share_flagged": None if self.why_not or not len(self) else flagged / len(self),
                "validation_share_flagged": None if self.why_not else ref.val_flagged, "share_set": ref.share,
                "why_not": self.why_not or None}

    def summary_text(self, ref: Reference) -> str:
        s = self.summary(ref)
        if not s["available"]:
            return f"in-distribution check not available ({self.why_not})"
        return f"{s['n_flagged']} of {s['n']} films outside what the run was trained on (validation: {ref.val_flagged:.1%})"

    def block(self, i: int, ref: Reference) -> dict[str, Any]:
        """Film i's verdict for a predict JSON: verdict, score, reasons, each signal's distance and threshold."""
        if self.why_not:
            return unavailable(self.why_not)
        inside = bool(self.in_distribution[i])
        signals: dict[str, Any] = {s: {"distance": float(d[i]), "threshold": ref.thresholds[s]} for s, d in self.distances.items()}
        if self.sides is not None and ref.min_side > 0:
            signals["size"] = {"shorter_side_px": float(self.sides[i]), "threshold_px": MIN_SIDE_SHARE * ref.min_side}
        return {"verdict": VERDICT_IN if inside else VERDICT_OUT, "in_distribution": inside, "score": float(self.score[i]),
                "reasons": [r for r in self.reasons[i].split("; ") if r], "signals": signals, "how": ref.how()}


def unavailable(why: str) -> dict[str, Any]:
    """The predict JSON's in-distribution block when the check cannot be made, and why."""
    return {"verdict": VERDICT_NA, "in_distribution": None, "score": None, "reasons": [], "why": why}


def judge(ref: Reference, described: Mapping[str, np.ndarray], sides: np.ndarray | None = None) -> Verdicts:
    """Each film's verdict from its descriptors (`Descriptors.host()`) and, for the size rule, its
    file's shorter side in pixels (`sides`, NaN where unknown)."""
    n = len(described["appearance"])
    if not ref.available:
        return Verdicts(np.full(n, np.nan), np.full(n, np.nan), [""] * n, {}, why_not=ref.why_not or "no reference recorded")
    named = distances(ref.gaussians, described)
    ratios = {s: d / ref.thresholds[s] for s, d in named.items()}
    side = None if sides is None else np.asarray(sides, dtype=np.float64)
    if side is not None and ref.min_side > 0:
        ratios["size"] = np.nan_to_num(MIN_SIDE_SHARE * ref.min_side / np.maximum(side, 1.0), nan=0.0)
    score = np.max(np.stack(list(ratios.values()), 1), 1)
    reasons = ["; ".join(_words(s, i, ref, described, side) for s in ratios if ratios[s][i] > 1) for i in range(n)]
    return Verdicts((score <= 1).astype(np.float64), score, reasons, named, side)


def _words(signal: str, i: int, ref: Reference, described: Mapping[str, np.ndarray], sides: np.ndarray | None) -> str:
    """Why film i is over `signal`'s threshold, as specifically as its descriptors say."""
    r = ref.ranges
    if signal == "size":
        return f"only {sides[i]:.0f} px on its shorter side, under half the smallest training film's ({ref.min_side:.0f} px)"
    if signal == "lungs" and "lung_area" in r:
        area, balance, height = described["lung_shape"][i]
        if area < 0.5 * r["lung_area"][0]:
            return "lungs not found"
        if balance < 0.5 * r["lung_balance"][0]:
            return "one lung only, or lungs off to one side"
        if not r["lung_height"][0] - 0.1 <= height <= r["lung_height"][1] + 0.1:
            return "lungs not where the training films have them"
    if signal == "appearance":
        a = described["appearance"][i]
        contrast, sharpness = a[4] - a[0], (a[5] + a[7]) / 2
        if contrast < 0.5 * r["contrast"][0]:
            return "almost no contrast (blank or washed out)"
        if sharpness < r["sharpness"][0]:
            return "blurred, as if enlarged from a small image"
        if sharpness > r["sharpness"][1]:
            return "noisier or sharper than the training films"
        if not r["brightness"][0] <= a[2] <= r["brightness"][1]:
            return "darker than the training films" if a[2] < r["brightness"][0] else "brighter than the training films"
    return WORDS[signal]


def shorter_sides(index) -> np.ndarray | None:
    """(N,) each film's shorter side in pixels as its file has it, from a cache index's orig_height and
    orig_width (NaN where unknown); None when the index has neither column."""
    import pandas as pd  # here: `cmt predict` reads no table and starts faster without pandas

    if index is None or not {"orig_height", "orig_width"} <= set(index.columns):
        return None
    h, w = (pd.to_numeric(index[c], errors="coerce").to_numpy(dtype=np.float64) for c in ("orig_height", "orig_width"))
    return np.minimum(h, w)
