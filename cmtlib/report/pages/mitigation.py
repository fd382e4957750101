"""The mitigation summary (`cmt mitigation`): each measure of cmtlib.experiments.mitigation per
variant, seeds averaged, with patient-bootstrap 95 % intervals, and paired differences to the first
variant. Pure: a results frame (one row per judged film and run) in, tables out."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from cmtlib.experiments.mitigation import LARGE_PX, THUMB_PX
from cmtlib.metrics import bootstrap_ci, within_group_auc

Measure = Callable[[pd.DataFrame], float]


def _rate(df: pd.DataFrame, rows: pd.Series, column: str, flagged: bool) -> float:
    """Share of `rows` scored at or above (flagged) or below their run's threshold."""
    part = df[rows & df[column].notna()]
    if part.empty:
        return math.nan
    hit = part[column].to_numpy(float) >= part["threshold"].to_numpy(float)
    return float(hit.mean() if flagged else (~hit).mean())


def _label(df: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(df["label_covid"], errors="coerce")


def _sides(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    h, w = pd.to_numeric(df["orig_height"], errors="coerce"), pd.to_numeric(df["orig_width"], errors="coerce")
    return np.fmin(h, w), np.fmax(h, w)


def _auc_within(df: pd.DataFrame) -> float:
    part = df[(df["set"] == "holdout") & _label(df).isin([0, 1]) & df["p_covid"].notna()]
    if part.empty or _label(part).nunique() < 2:
        return math.nan
    with np.errstate(all="ignore"):
        return within_group_auc(_label(part).astype(int), part["p_covid"].to_numpy(float), part["source"].fillna("").to_numpy())


def _per_seed(measure: Measure) -> Measure:
    """The measure on each seed's films (folds pooled), averaged over seeds."""
    def averaged(df: pd.DataFrame) -> float:
        values = [measure(g) for _, g in df.groupby("seed")]
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan
    return averaged


MEASURES: dict[str, Measure] = {
    "held-out COVID-19 films flagged (sensitivity)": lambda d: _rate(d, (d["set"] == "holdout") & (_label(d) == 1), "p_covid", True),
    f"the same films at {THUMB_PX} px, flagged": lambda d: _rate(d, (d["set"] == "holdout") & (_label(d) == 1), "p_covid_degraded", True),
    f"large films (short side >= {LARGE_PX} px), COVID-negative left unflagged": lambda d: _rate(d, (_label(d) == 0) & (_sides(d)[0] >= LARGE_PX), "p_covid", False),
    f"thumbnails (<= {THUMB_PX} px), COVID-negative left unflagged": lambda d: _rate(d, (_label(d) == 0) & (_sides(d)[1] <= THUMB_PX), "p_covid", False),
    "AUC within collections (held-out films)": _auc_within,
}
RUN_FIGURES = {"pooled AUC (internal test)": "pooled_auc_test", "lung Dice (internal test)": "lung_dice_test",
               "AUC, lungs blanked": "audit_lungs_blanked", "AUC, lungs only": "audit_lungs_only", "AUC, whole films (audit)": "audit_full",
               "training seconds per run": "train_s"}


def _fmt(ci) -> str:
    if ci is None or math.isnan(ci[0]):
        return "not available"
    return f"{ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}]" if not math.isnan(ci[1]) else f"{ci[0]:.2f}"


def summary_table(results: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """Rows: measures; columns: variants in the order they ran. Film measures: value [95 % CI]
    (patient bootstrap, seeds averaged); run figures: mean over runs [min, max]."""
    variants = list(dict.fromkeys(results["variant"]))
    table = {}
    for v in variants:
        d = results[results["variant"] == v]
        col = {}
        for name, measure in MEASURES.items():
            ci = bootstrap_ci(_per_seed(measure), d, d["patient_id"].fillna(d["image_id"]), n_boot=n_boot, seed=seed)
            col[name] = _fmt((ci.estimate, ci.low, ci.high))
        runs = d.drop_duplicates(["fold", "seed"])
        for name, column in RUN_FIGURES.items():
            x = pd.to_numeric(runs[column], errors="coerce").dropna()
            col[name] = _fmt((x.mean(), x.min(), x.max())) if len(x) else "not available"
        col["runs (folds x seeds)"] = f"{runs['fold'].nunique()} x {runs['seed'].nunique()}"
        table[v] = col
    return pd.DataFrame(table)


def difference_table(results: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """Each variant minus the first, per film measure: difference [95 % CI], paired (same films, same
    patient resamples). A CI that excludes 0 is a difference the data can show."""
    variants = list(dict.fromkeys(results["variant"]))
    ref = variants[0]
    rows = {}
    for v in variants[1:]:
        both = results[results["variant"].isin([ref, v])]
        col = {}
        for name, measure in MEASURES.items():
            m = _per_seed(measure)

            def diff(d: pd.DataFrame, m=m) -> float:
                return m(d[d["variant"] == v]) - m(d[d["variant"] == ref])

            ci = bootstrap_ci(diff, both, both["patient_id"].fillna(both["image_id"]), n_boot=n_boot, seed=seed)
            col[name] = _fmt((ci.estimate, ci.low, ci.high))
        rows[f"{v} - {ref}"] = col
    return pd.DataFrame(rows)
