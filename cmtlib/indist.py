"""Is a film like the films a run was trained on? The in-distribution check of `cmt predict` and
`cmt evaluate` (docs/CONTRACTS.md, "The in-distribution check").

A classifier answers every input; a screening tool must say when an input is outside what it has
seen (a photo, a document, a mask, a negative, a rotated or lateral film, a thumbnail). Each film is
described by what every model already returns, in the same pass (`Descriptors`, an `infer` hook):

    features    the embedding (the model contract's `embedding`): how the network itself sees the film
    lungs       the lung probability map averaged over an 8 x 8 grid (models with a lung output):
                whether there are lungs, where, how large, how many, how sure the outline is
    appearance  the film as the network receives it: brightness quantiles, edge strength across and
                along at one and two pixels, and where bright and dark lie on a 4 x 4 grid: negatives,
                blank or washed-out images, noise, blur, films upside down or turned
    orientation the appearance's distance as the film is, over its distance turned by a quarter, a
                half or three quarters of a turn (computed from the descriptor, no pass): above 1 when a
                turned film is closer to the training films than the film as given
    size        the file's shorter side: under half the smallest training film's, too little of the
                film is left to judge (a 16-px thumbnail)

The distances are Mahalanobis distances to the training films (each feature standardised, the
covariance shrunk by Ledoit and Wolf's rule, which needs no tuning and keeps the distance stable when
features outnumber films). Measured on the default run, the embedding alone misses bright images (a
white page, a document) and blurred films, the lung map alone misses some blurred films, the
appearance without its 4 x 4 layout misses films turned upside down, which a barely trained network's
lung map and embedding miss too (the smoke run); on the real-data run (varied films, a weakly trained
network) only the orientation catches every turned film. The embedding's Mahalanobis distance beat
the k-nearest-neighbour distance. Together they flag every kind tried (benchmarks/RESULTS.md).

Recorded once at training (`fit`, the engine's last step, with the best checkpoint): the distances'
parameters from one pass over the training films; the thresholds from the validation films, which the
network never fitted (its training films sit closer to their own statistics than any new film does).
Each distance is divided by its own (1 - SHARE) quantile on the validation films; a film's score is
the largest of these ratios; the score's threshold is set on the validation films' scores so that a new
film like them is flagged with probability at most SHARE (1 %; `conformal_threshold`); each signal's
threshold is that threshold times its quantile, so a film is flagged when any signal is over its own
threshold, and the reasons name those signals in words. Stored through `Run.write_indist`.

Only torch and numpy: a bare GPU machine trains and predicts with this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The false-alarm rate accepted on films like the validation films. 1 %, not 2 %: on the default run the test films
# were flagged about twice as often as the validation films (a split's mix of findings differs: 4.1 % at 2 %, 2.0 % at 1 %),
# while every odd input stayed flagged at 1 % (benchmarks/RESULTS.md).
SHARE = 0.01
GRID = 8  # the lung map is averaged over GRID x GRID cells: where the lungs are, not their every pixel
QUANTILES = (0.02, 0.25, 0.5, 0.75, 0.98)  # brightness quantiles of the appearance signal
LAYOUT = 4  # the appearance's brightness layout: mean brightness over LAYOUT x LAYOUT cells
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


# ---- describing films (on the device, inside the model pass) ------------------------------------------
def _appearance(gray: torch.Tensor) -> torch.Tensor:
    """(B, 9 + LAYOUT^2): brightness quantiles, log mean absolute differences across and along at 1 and
    2 px, and the mean brightness of each LAYOUT x LAYOUT cell (row by row).

    Shape:
        gray: (B, H, W) in [0, 1].
    """
    flat = gray.flatten(1).float()
    ranks = torch.tensor([round(q * (flat.shape[1] - 1)) for q in QUANTILES], device=flat.device)
    quantiles = flat.sort(dim=1).values[:, ranks]  # (B, 5)
    edges = [(gray[:, :, k:] - gray[:, :, :-k]).abs().mean((1, 2)) for k in (1, 2)]
    edges += [(gray[:, k:, :] - gray[:, :-k, :]).abs().mean((1, 2)) for k in (1, 2)]
    layout = F.adaptive_avg_pool2d(gray[:, None].float(), LAYOUT).flatten(1)  # (B, LAYOUT^2)
    return torch.cat([quantiles, torch.log(torch.stack(edges, 1) + 1e-4), layout], 1)


def _lung_shape(p: torch.Tensor) -> torch.Tensor:
    """(B, 3): lung area share, balance between the image halves (smaller / larger), height of the
    lungs' centre (0 = top, 1 = bottom; 0.5 where no lung is found), all at probability 0.5.

    Shape:
        p: (B, H, W) lung probabilities.
    """
    m = (p >= 0.5).float()
    h, w = m.shape[-2:]
    left, right = m[:, :, : w // 2].sum((1, 2)), m[:, :, w - w // 2:].sum((1, 2))
    balance = torch.minimum(left, right) / torch.maximum(left, right).clamp_min(1.0)
    rows = torch.linspace(0, 1, h, device=p.device).view(1, h, 1)
    total = m.sum((1, 2))
    height = torch.where(total > 0, (m * rows).sum((1, 2)) / total.clamp_min(1.0), torch.full_like(total, 0.5))
    return torch.stack([m.mean((1, 2)), balance, height], 1)


@torch.no_grad()
def describe(outputs: Mapping[str, torch.Tensor], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the check reads of a batch: `features` (B, D) where the model gives an embedding, `lungs`
    (B, GRID * GRID) and `lung_shape` (B, 3) where it outlines lungs, `appearance` (B, 9 + LAYOUT^2) always.

    Shape:
        outputs: the model's float outputs (DESIGN.md's contract); images: (B, 1 or 3, H, W) in [0, 1].
    """
    out = {"appearance": _appearance(images[:, 0])}
    if "embedding" in outputs:
        out["features"] = outputs["embedding"].float().flatten(1)
    if "lung" in outputs:
        p = torch.sigmoid(outputs["lung"].float())  # (B, 1, H, W)
        out["lungs"] = F.adaptive_avg_pool2d(p, GRID).flatten(1)
        out["lung_shape"] = _lung_shape(p[:, 0])
    return out


class Descriptors:
    """An `infer(..., on_batch=...)` hook gathering `describe` per batch on the device; `host()` copies
    them once at the end (no per-batch synchronisation on a GPU)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {}

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        for key, value in describe(outputs, batch["image"]).items():
            self.parts.setdefault(key, []).append(value)

    def host(self) -> dict[str, np.ndarray]:
        return {k: torch.cat(v).cpu().numpy().astype(np.float64) for k, v in self.parts.items()}


# ---- the distance --------------------------------------------------------------------------------------
def ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """(covariance, shrinkage): the empirical covariance of the rows of `z` shrunk towards a scaled
    identity by Ledoit and Wolf's (2004) closed-form intensity, as sklearn.covariance.LedoitWolf
    computes it (sklearn is not on a bare GPU machine; tests compare the two).

    Shape:
        z: (N, P); covariance: (P, P).
    """
    n, p = z.shape
    x = z - z.mean(0)
    cov = x.T @ x / n
    mu = np.trace(cov) / p
    frob = (cov**2).sum()  # ||S||_F^2
    # (1 / (n^2 p)) sum_k ||x_k x_k^T - S||_F^2, written with sum_k ||x_k||^4 so no (P, P) matrix per row is formed
    beta = (((x**2).sum(1) ** 2).sum() / n - frob) / (n * p)
    delta = (frob - 2 * mu * np.trace(cov) + p * mu**2) / p  # ||S - mu I||_F^2 / p
    shrinkage = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    return (1 - shrinkage) * cov + shrinkage * mu * np.eye(p), shrinkage


@dataclass
class Gaussian:
    """A Mahalanobis distance fitted on rows: standardise each feature, then a shrunk covariance."""

    centre: np.ndarray  # (P,) training mean
    scale: np.ndarray  # (P,) training standard deviation (1 where a feature never varies)
    precision: np.ndarray  # (P, P) inverse of the shrunk covariance of the standardised features

    @classmethod
    def fit(cls, rows: np.ndarray) -> Gaussian:
        rows = np.asarray(rows, dtype=np.float64)
        centre, scale = rows.mean(0), rows.std(0)
        scale = np.where(scale > 1e-8, scale, 1.0)  # a feature constant in training: any change of it is far
        cov, _ = ledoit_wolf((rows - centre) / scale)
        # A small ridge keeps the inverse finite where a feature is constant in training.
        ridge = 1e-3 * max(float(np.trace(cov)) / len(cov), 1e-6)
        return cls(centre, scale, np.linalg.inv(cov + ridge * np.eye(len(cov))))

    def distance(self, rows: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distances; infinite where a row is not finite (a broken output is far)."""
        z = (np.asarray(rows, dtype=np.float64) - self.centre) / self.scale
        bad = ~np.isfinite(z).all(1)
        z = np.where(np.isfinite(z), z, 0.0)
        d = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))
        return np.where(bad, np.inf, d)


def turned(appearance: np.ndarray, k: int) -> np.ndarray:
    """The appearance descriptors of the same films turned by k quarter turns, without a pass: the
    quantiles stay, the edge strengths across and along swap on odd k, the layout grid turns.

    Shape:
        appearance: (N, 9 + LAYOUT^2), as `_appearance` gives it.
    """
    out = np.array(appearance, dtype=np.float64, copy=True)
    grid = out[:, 9:].reshape(-1, LAYOUT, LAYOUT)
    out[:, 9:] = np.rot90(grid, k, axes=(1, 2)).reshape(len(out), -1)
    if k % 2:
        out[:, 5:9] = out[:, [7, 8, 5, 6]]
    return out


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


def conformal_threshold(scores: np.ndarray, share: float) -> float:
    """The k-th smallest validation score, k = ceil((n + 1)(1 - share)) (at most n): a new film
    exchangeable with the validation films scores above it with probability at most `share` (split
    conformal prediction; at most 1 / (n + 1) above `share`, when n < 1 / share - 1, the largest score).
    An empirical quantile would sit lower, its few films above it a noisy estimate on ~100 films."""
    finite = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    if not len(finite):
        return math.inf
    k = min(len(finite), math.ceil((len(finite) + 1) * (1 - share)))
    return float(finite[k - 1])


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
