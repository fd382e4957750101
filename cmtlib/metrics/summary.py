"""metrics.json (DESIGN.md, Metrics) from predictions.csv rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cmtlib.metrics._kernels import _ranked, _w_auc, _w_ece, _w_eer, _w_mean
from cmtlib.metrics.ranking import OperatingPoint, threshold_at_specificity
from cmtlib.metrics.bootstrap import _interval, _resample_weights

PREDICTION_COLUMNS = ("patient_id", "source", "view", "label_healthy", "label_covid", "label_other",
                      "p_healthy", "p_covid", "p_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou")


def _numeric(df: pd.DataFrame, col: str, allowed: str) -> np.ndarray:
    """A label / probability / Dice column as floats, '' or NaN -> NaN (manifest strings or floats)."""
    raw = df[col]
    if not pd.api.types.is_numeric_dtype(raw):  # strings from the manifest: '' (or blanks) = unknown
        raw = raw.astype(object).where(raw.notna() & (raw.astype(str).str.strip() != ""), None)
    try:
        x = pd.to_numeric(raw, errors="raise").to_numpy(dtype=float)
    except (ValueError, TypeError) as err:
        raise ValueError(f"predictions column {col} must hold {allowed} or empty: {err}") from None
    known = x[~np.isnan(x)]
    ok = np.isin(known, (0, 1)) if allowed == "1, 0" else (known >= 0) & (known <= 1)
    if not ok.all():
        raise ValueError(f"predictions column {col} has {np.unique(known[~ok])[:5].tolist()}; allowed: {allowed} or empty")
    return x


def _columns(df: pd.DataFrame) -> dict:
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {', '.join(missing)}; see docs/CONTRACTS.md (predictions.csv)")
    c = {k: _numeric(df, k, "1, 0" if k.startswith("label_") else "numbers in [0, 1]")
         for k in PREDICTION_COLUMNS[3:]}
    pid = df["patient_id"].fillna("").astype(str).to_numpy(dtype=object)
    blank = np.flatnonzero(pid == "")
    pid[blank] = [f"\0image {i}" for i in blank]  # an image without a patient id is its own patient
    c["patient"] = pd.factorize(pid)[0]
    for k in ("view", "source"):
        c[k] = df[k].fillna("").astype(str).replace("", "unknown").to_numpy()
    return c


def _statistics(c: dict, rows: np.ndarray, threshold: float, notes: list, operating: float = math.nan) -> dict:
    """(section, key) -> kernel W (B, len(rows)) -> (B,) for one group of rows. `threshold` is the
    paper's 99 %-specificity point (sens_at_spec99), `operating` the run's decision threshold."""
    g = {k: v[rows] for k, v in c.items()}
    y, p = g["label_covid"], g["p_covid"]
    known = ~np.isnan(y) & ~np.isnan(p)
    yk, pk = y[known].astype(bool), p[known]

    def masked(x, m):  # weighted mean of x over rows m
        return lambda W: _w_mean(W[:, m], x[m].astype(float))

    stats = {}
    if yk.any() and not yk.all():
        ranked = _ranked(yk, pk)
        stats[("covid", "auc")] = lambda W: _w_auc(W[:, known], ranked)
        stats[("covid", "eer")] = lambda W: _w_eer(W[:, known], ranked)
    elif yk.size:
        notes.append(f"only {'COVID-positive' if yk.any() else 'COVID-negative'} images: AUC and EER undefined")
    pos = known.copy()
    pos[known] = yk
    oracle = threshold_at_specificity(yk, pk) if (~yk).any() else OperatingPoint(math.nan, 0, 0, False)
    if 0 < oracle.n_negative and not oracle.estimable:
        notes.append(f"fewer than 100 COVID-negative images ({oracle.n_negative}): the 1 % false-alarm rate "
                     "cannot be estimated; sens_at_spec99_oracle puts the threshold above every negative")
    for key, t in (("sens_at_spec99", threshold), ("sens_at_spec99_oracle", oracle.threshold), ("sensitivity", operating)):
        if pos.any() and not math.isnan(t):
            stats[("covid", key)] = masked(p >= t, pos)
    negatives = known & ~pos
    if negatives.any() and not math.isnan(operating):
        stats[("covid", "specificity")] = masked(p < operating, negatives)
    for task in ("covid", "healthy", "other"):
        lab, prob = g[f"label_{task}"], g[f"p_{task}"]
        m = ~np.isnan(lab) & ~np.isnan(prob)
        if m.any():
            stats[(task, "accuracy")] = masked((prob >= 0.5) == lab, m)
    ph = g["p_healthy"]
    m = (y == 1) & ~np.isnan(ph)
    if m.any():
        stats[(None, "covid_as_unhealthy")] = masked(ph < 0.5, m)
    for task in ("lung", "disease"):
        for k in ("dice", "iou"):
            x = g[f"{task}_{k}"]
            if (~np.isnan(x)).any():
                stats[(task, k)] = masked(x, ~np.isnan(x))
        if np.isnan(g[f"{task}_dice"]).all():
            notes.append(f"no non-empty {task} ground truth: {task}.dice and {task}.iou are null")
    if known.any():
        stats[("calibration", "ece")] = lambda W: _w_ece(W[:, known], yk.astype(float), pk, 10)
    return stats


SECTIONS = {"covid": ("auc", "eer", "sens_at_spec99", "sens_at_spec99_oracle", "accuracy", "sensitivity", "specificity"),
            "healthy": ("accuracy",), "other": ("accuracy",), None: ("covid_as_unhealthy",),
            "lung": ("dice", "iou"), "disease": ("dice", "iou"), "calibration": ("ece",)}


def _group(c: dict, rows: np.ndarray, threshold: float, n_boot: int, seed: int, alpha: float, operating: float = math.nan) -> dict:
    notes: list[str] = []
    stats = _statistics(c, rows, threshold, notes, operating)
    n, codes = rows.size, pd.factorize(c["patient"][rows])[0]
    n_patients = int(codes.max()) + 1 if n else 0
    with np.errstate(all="ignore"):
        point = {k: float(f(np.ones((1, n)))[0]) for k, f in stats.items()}
        draws: dict = {k: [] for k in stats}
        if n_patients >= 2:
            for W in _resample_weights(codes, n_boot, seed):
                for k, f in stats.items():
                    draws[k].append(f(W))
        elif n:
            notes.append("fewer than 2 patients: no confidence intervals")
    out: dict = {sec: {} for sec in SECTIONS if sec is not None}
    partial = []
    for sec, keys in SECTIONS.items():
        target = out if sec is None else out[sec]
        for key in keys:
            value = point.get((sec, key), math.nan)
            low, high, used = _interval(np.concatenate(draws.get((sec, key)) or [np.empty(0)]), alpha, n_boot / 2)
            if not math.isnan(value) and n_patients >= 2 and used < n_boot:
                partial.append(f"{sec + '.' if sec else ''}{key} {used}{' (too few: CI null)' if math.isnan(low) else ''}")
            target.update({key: value, f"{key}_ci_low": low, f"{key}_ci_high": high})
            if key == "sens_at_spec99_oracle":
                target["threshold"] = float(operating)
                target["spec99_threshold"] = float(threshold)
    if partial:
        notes.append(f"CIs from fewer than {n_boot} resamples (the metric was undefined in the others): "
                     + ", ".join(partial))
    y = c["label_covid"][rows]
    out["counts"] = {"n_images": int(n), "n_patients": n_patients, "n_covid": int((y == 1).sum()),
                     "n_negative": int((y == 0).sum())}
    out["notes"] = notes
    return out


def metrics_from_predictions(df: pd.DataFrame, threshold: float | None, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                             operating_threshold: float | None = None, notes: list[str] | tuple[str, ...] = ()) -> dict:
    """The metrics.json of DESIGN.md from predictions.csv rows (docs/CONTRACTS.md).

    Accuracies are at probability 0.5 over rows whose label is known; `covid.sens_at_spec99` applies
    the validation `threshold`, `sens_at_spec99_oracle` a threshold chosen on `df` itself; Dice / IoU
    average the per-image columns where not NaN. Every number has `_ci_low` / `_ci_high` beside it
    (percentile bootstrap over patients, thresholds held fixed), except `threshold`, an input.
    NaN where there is no ground truth (`cmtlib.fileio.write_json` writes null). Thresholds are never
    chosen here: they come from the run's threshold.json (cmtlib.metrics.operating.choose_thresholds).

    Args:
        df: predictions (labels as '1' / '0' / '' strings or floats with NaN).
        threshold: the paper's 99 %-specificity COVID threshold chosen on validation (None or NaN: none).
        operating_threshold: the run's frozen decision threshold (metrics.json's `covid.threshold`, with
            `covid.sensitivity` and `covid.specificity` at it); None = `threshold`.
        n_boot: bootstrap resamples (0: no intervals).
        seed: seeds the bootstrap.
        alpha: 0.05 for 95 % intervals.
        notes: what the caller knows about the thresholds (operating.threshold_notes), listed first.

    Returns:
        dict: covid, healthy, other, covid_as_unhealthy, lung, disease, calibration (each number with
        its CI), counts, notes, ci (how intervals were made), by_view and by_source (the same per group).
    """
    c = _columns(df)
    notes = list(notes)
    if threshold is None or math.isnan(threshold):
        threshold = math.nan
        notes.append("no validation threshold: covid.sens_at_spec99 is null")
    operating = threshold if operating_threshold is None or math.isnan(operating_threshold) else float(operating_threshold)
    rows = np.arange(len(df))
    out = _group(c, rows, threshold, n_boot, seed, alpha, operating)
    out["notes"] = notes + out["notes"]
    out["ci"] = {"level": 1 - alpha, "n_boot": n_boot, "seed": seed,
                 "method": "percentile bootstrap over patients, thresholds held fixed"}
    for by in ("view", "source"):
        groups = {}
        for name in sorted(set(c[by])):
            groups[name] = _group(c, rows[c[by] == name], threshold, n_boot, seed, alpha, operating)
            out["notes"] += [f"{by} {name}: {note}" for note in groups[name]["notes"]]
        out[f"by_{by}"] = groups
    return out
