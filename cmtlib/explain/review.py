"""Misclassification review (page 6): every wrong test decision with its metadata, error rates by
day since admission and by view, and the COVID-19 films called healthy (the paper's Fig. 9) with a
summary, computed from the data, of what they have in common.

Decisions: COVID-19 at the validation threshold (the ``pred_covid`` column of predictions.csv; or
``p_covid >= threshold`` when a threshold is passed or that column is absent), healthy / unhealthy
at ``p_healthy >= 0.5``. An image is reviewed for a task only where its label and score are known.
The confusion counts of page 3 (overall, by view, by source) come from the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

META = ("image_id", "source", "view", "offset_days", "sex", "age", "finding")
DAY_BINS = ("<0", "0-3", "4-7", "8-14", ">14", "unknown")
EARLY_DAYS = 3  # "the first 3 days after admission": offset_days 0..3 (the paper's "up to day 3")
SEX_WORDS = {"M": "male", "F": "female"}
MIN_CASES = 3  # fewer cases than this: the summary says there are too few to say anything


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    raw = df[col]
    if not pd.api.types.is_numeric_dtype(raw):
        raw = raw.astype(object).where(raw.notna() & (raw.astype(str).str.strip() != ""), None)
    return pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)


def _text(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series("unknown", index=df.index)
    return df[col].astype(object).where(df[col].notna(), "").astype(str).str.strip().replace("", "unknown")


def day_bins(offset_days) -> np.ndarray:
    """Bin days since admission: <0, 0-3, 4-7, 8-14, >14 (upper edges inclusive), unknown.

    Shape:
        (N,) numbers or strings ('' / NaN = unknown) -> (N,) labels from DAY_BINS.
    """
    d = _num(pd.DataFrame({"d": list(offset_days)}), "d")
    idx = np.searchsorted(np.array([0, 3, 7, 14]), d, side="left")  # bins (-inf, 0], (0, 3], (3, 7], ...
    idx = np.where(d == 0, 1, idx)  # day 0 belongs to 0-3
    labels = np.array(DAY_BINS[:5], dtype=object)[np.clip(idx, 0, 4)]
    return np.where(np.isnan(d), "unknown", labels).astype(object)


def decisions(predictions: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """Per row: covid_pred, healthy_pred (1.0 / 0.0 / NaN) and covid_error, healthy_error (bool)."""
    p_covid, p_healthy = _num(predictions, "p_covid"), _num(predictions, "p_healthy")
    if threshold is not None or "pred_covid" not in predictions.columns:
        t = math.nan if threshold is None else float(threshold)
        covid_pred = np.where(np.isnan(p_covid) | math.isnan(t), np.nan, (p_covid >= t).astype(float))
    else:
        covid_pred = _num(predictions, "pred_covid")
    healthy_pred = np.where(np.isnan(p_healthy), np.nan, (p_healthy >= 0.5).astype(float))
    y_covid, y_healthy = _num(predictions, "label_covid"), _num(predictions, "label_healthy")
    out = pd.DataFrame({"covid_pred": covid_pred, "healthy_pred": healthy_pred}, index=predictions.index)
    out["covid_known"] = ~np.isnan(y_covid) & ~np.isnan(covid_pred)
    out["healthy_known"] = ~np.isnan(y_healthy) & ~np.isnan(healthy_pred)
    out["covid_error"] = out["covid_known"] & (y_covid != covid_pred)
    out["healthy_error"] = out["healthy_known"] & (y_healthy != healthy_pred)
    return out


def _error_text(row) -> str:
    parts = []
    if row["covid_error"]:
        parts.append("COVID-19 missed" if row["covid_pred"] == 0 else "false COVID-19 alarm")
    if row["healthy_error"]:
        parts.append("unhealthy called healthy" if row["healthy_pred"] == 1 else "healthy called unhealthy")
    return "; ".join(parts)


def _test_rows(predictions: pd.DataFrame, split: str | None) -> pd.DataFrame:
    if split is None or "split" not in predictions.columns:
        return predictions
    rows = predictions[predictions["split"].astype(str) == split]
    if rows.empty:
        raise ValueError(f"no prediction rows with split={split!r} (splits: {sorted(predictions['split'].astype(str).unique())}); "
                         "pass split=None to review every row")
    return rows


def misclassified(predictions: pd.DataFrame, threshold: float | None = None, split: str | None = "test") -> pd.DataFrame:
    """Every image with a wrong COVID-19 or healthy / unhealthy decision, with its metadata.

    Returns:
        DataFrame: image_id, source, view, offset_days, day_bin, sex, age, finding, label_covid,
        label_healthy, p_covid, p_healthy, p_other, errors (e.g. "COVID-19 missed; unhealthy called
        healthy"), sorted by error then p_covid.
    """
    df = _test_rows(predictions, split)
    dec = decisions(df, threshold)
    wrong = dec["covid_error"] | dec["healthy_error"]
    out = pd.DataFrame({c: df[c] if c in df.columns else "" for c in META}, index=df.index)[wrong]
    out.insert(4, "day_bin", day_bins(out["offset_days"]) if len(out) else [])
    for c in ("label_covid", "label_healthy", "p_covid", "p_healthy", "p_other"):
        out[c] = _num(df, c)[wrong.to_numpy()]
    out["errors"] = [_error_text(r) for _, r in dec[wrong].iterrows()]
    return out.sort_values(["errors", "p_covid"], kind="mergesort").reset_index(drop=True)


def error_rates(predictions: pd.DataFrame, by: str = "offset_days", task: str = "any", threshold: float | None = None,
                split: str | None = "test") -> pd.DataFrame:
    """Error rate per group: day-since-admission bins (``by="offset_days"``) or any column (view, source).

    Args:
        task: ``covid``, ``healthy`` or ``any`` (an image counts once, wrong if either decision is).

    Returns:
        DataFrame: group, n (images with a known label and decision), errors, error_rate (NaN at n = 0).
    """
    if task not in ("covid", "healthy", "any"):
        raise ValueError(f"task must be 'covid', 'healthy' or 'any', got {task!r}")
    df = _test_rows(predictions, split)
    dec = decisions(df, threshold)
    tasks = ("covid", "healthy") if task == "any" else (task,)
    known = np.logical_or.reduce([dec[f"{t}_known"].to_numpy() for t in tasks])
    wrong = np.logical_or.reduce([dec[f"{t}_error"].to_numpy() for t in tasks])
    groups = day_bins(df["offset_days"] if "offset_days" in df.columns else [np.nan] * len(df)) if by == "offset_days" else _text(df, by).to_numpy()
    table = pd.DataFrame({"group": groups, "n": known.astype(int), "errors": (wrong & known).astype(int)})
    table = table.groupby("group", sort=False)[["n", "errors"]].sum()
    if by == "offset_days":  # every bin, so tables of different runs line up; "<0" only when used
        table = table.reindex(list(DAY_BINS), fill_value=0)
        table = table.drop(index="<0") if table.loc["<0", "n"] == 0 and "<0" not in groups else table
    else:
        table = table.loc[sorted(table.index, key=lambda g: (g == "unknown", -table.loc[g, "n"], g))]
    table = table.rename_axis("group").reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        table["error_rate"] = np.where(table["n"] > 0, table["errors"] / table["n"].where(table["n"] > 0, 1), np.nan)
    return table


def covid_called_healthy(predictions: pd.DataFrame, threshold: float | None = None, split: str | None = "test") -> pd.DataFrame:
    """COVID-19 films the healthy head called healthy (the paper's Fig. 9), with their metadata and
    ``also_missed_covid`` (the COVID-19 decision missed them too)."""
    df = _test_rows(predictions, split)
    dec = decisions(df, threshold)
    hit = (_num(df, "label_covid") == 1) & (dec["healthy_pred"].to_numpy() == 1)
    out = pd.DataFrame({c: df[c] if c in df.columns else "" for c in META}, index=df.index)[hit]
    out["day_bin"] = day_bins(out["offset_days"]) if len(out) else []
    out["p_covid"], out["p_healthy"] = _num(df, "p_covid")[hit], _num(df, "p_healthy")[hit]
    covid_pred = dec["covid_pred"].to_numpy()[hit]
    out["also_missed_covid"] = pd.array([pd.NA if np.isnan(v) else bool(v == 0) for v in covid_pred], dtype="boolean")
    return out.sort_values("p_healthy", ascending=False, kind="mergesort").reset_index(drop=True)


def _k_of_n(k: int, n: int) -> str:
    return f"all {n}" if k == n else ("none" if k == 0 else f"{k} of {n}")


def _share(k: int, n: int) -> str:
    return f"{100 * k / n:.0f} %" if n else "n/a"


def summarise_cases(cases: pd.DataFrame, reference: pd.DataFrame | None = None,
                    what: str = "COVID-19 films called healthy", min_cases: int = MIN_CASES,
                    reference_name: str = "all COVID-19 test films") -> str:
    """A plain-language summary, computed from the rows, of what ``cases`` have in common.

    Reports the share taken in the first EARLY_DAYS days after admission, the commonest view, source
    and sex, the median age and (when present) how many the COVID-19 decision also missed; with a
    ``reference`` (e.g. all COVID-19 test films) each share is set beside the reference's.
    With fewer than ``min_cases`` cases it says there are too few to say anything.
    """
    n = len(cases)
    if n == 0:
        return f"No {what}."
    if n < min_cases:
        ids = ", ".join(cases["image_id"].astype(str)) if "image_id" in cases.columns else ""
        return (f"Only {n} {what}{f' ({ids})' if ids else ''}: too few to say what they have in common "
                f"(at least {min_cases} are needed).")

    def versus(share_of) -> str:
        if reference is None or not len(reference):
            return ""
        k, m = share_of(reference)
        return f" (among {reference_name}: {k} of {m}, {_share(k, m)})" if m else ""

    def early(df):
        d = _num(df, "offset_days")
        return int(((d >= 0) & (d <= EARLY_DAYS)).sum()), int((~np.isnan(d)).sum())

    facts = [f"{n} {what}."]
    k, known = early(cases)
    if known == 0:
        facts.append("None has a day since admission recorded.")
    else:
        extra = f"; {n - known} {'has' if n - known == 1 else 'have'} no day recorded" if known < n else ""
        facts.append(f"{_k_of_n(k, known).capitalize()} {'was' if k == 1 else 'were'} taken in the first {EARLY_DAYS} days "
                     f"after admission{extra}{versus(early)}.")
    for col, noun, verb in (("view", "views", "are"), ("source", "", "come from"), ("sex", "", "are")):
        values = _text(cases, col)
        known_values = values[values != "unknown"]
        if known_values.empty:
            facts.append(f"No {col} is recorded.")
            continue
        top = known_values.value_counts().sort_index().sort_values(ascending=False, kind="mergesort").index[0]
        k = int((values == top).sum())

        def same(df, col=col, top=top):
            v = _text(df, col)
            return int((v == top).sum()), len(v)

        what_top = f"{SEX_WORDS.get(top.upper(), top) if col == 'sex' else top} {noun}".strip()
        facts.append(f"{_k_of_n(k, n).capitalize()} {verb} {what_top}{versus(same)}.")
    age = _num(cases, "age")
    if (~np.isnan(age)).any():
        facts.append(f"Median age {np.nanmedian(age):.0f} ({int((~np.isnan(age)).sum())} of {n} known).")
    missed = cases["also_missed_covid"].astype("boolean") if "also_missed_covid" in cases.columns else pd.Series([], dtype="boolean")
    if missed.notna().any():
        k, m = int(missed.sum()), int(missed.notna().sum())
        facts.append(f"{_k_of_n(k, m).capitalize()} {'was' if k == 1 else 'were'} also scored below the COVID-19 threshold.")
    return " ".join(facts)


# ---- page 3 tables: confusion counts from the same decisions ----------------------------------

def confusion_matrices(predictions: pd.DataFrame, threshold: float | None = None, by: str | None = None,
                       task: str = "covid") -> dict:
    """2 x 2 counts from predictions.csv rows: without ``by`` {"COVID-19": ..., "healthy / unhealthy": ...};
    with ``by`` (view, source) one ``task`` matrix per group, "<group>" -> (2, 2).

    COVID-19 at the validation threshold (pred_covid, or p_covid >= threshold), healthy at p >= 0.5.
    """
    dec = decisions(predictions, threshold)

    def matrix(rows, t):
        col = {"covid": "label_covid", "healthy": "label_healthy"}[t]
        k = dec[f"{t}_known"].to_numpy() & rows
        y, p = _num(predictions, col)[k].astype(int), dec[f"{t}_pred"].to_numpy()[k].astype(int)
        return np.bincount(2 * y + p, minlength=4).reshape(2, 2)

    everything = np.ones(len(predictions), bool)
    if by is None:
        return {"COVID-19": matrix(everything, "covid"), "healthy / unhealthy": matrix(everything, "healthy")}
    groups = _text(predictions, by)
    return {str(g): matrix((groups == g).to_numpy(), task) for g in groups.value_counts().index}


def group_confusion_table(predictions: pd.DataFrame, by: str = "view", threshold: float | None = None) -> pd.DataFrame:
    """Per group and task (COVID-19, healthy): n, tn, fp, fn, tp, sensitivity, specificity."""
    rows = []
    for task in ("covid", "healthy"):
        for g, m in confusion_matrices(predictions, threshold, by, task).items():
            (tn, fp), (fn, tp) = m
            rows.append({by: g, "task": "COVID-19" if task == "covid" else "healthy", "n": int(m.sum()), "tn": tn, "fp": fp,
                         "fn": fn, "tp": tp, "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
                         "specificity": tn / (tn + fp) if tn + fp else math.nan})
    return pd.DataFrame(rows)


def known_covid(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(y, p_covid) of the rows whose COVID-19 label and score are both known.

    Shape:
        returns (M,) int and (M,) float, M <= len(predictions).
    """
    y, p = _num(predictions, "label_covid"), _num(predictions, "p_covid")
    keep = ~np.isnan(y) & ~np.isnan(p)
    return y[keep].astype(int), p[keep]


@dataclass
class Review:
    """Page 6: the tables and the computed summary."""

    misclassified: pd.DataFrame
    by_day: pd.DataFrame
    by_view: pd.DataFrame
    covid_as_healthy: pd.DataFrame
    summary: str


def review(predictions: pd.DataFrame, threshold: float | None = None, split: str | None = "test",
           task: str = "any", min_cases: int = MIN_CASES) -> Review:
    """Page 6 entry point: misclassified films, error rates by day bin and view, COVID-19 called healthy."""
    cases = covid_called_healthy(predictions, threshold, split)
    test = _test_rows(predictions, split)
    reference = test[_num(test, "label_covid") == 1]
    return Review(misclassified(predictions, threshold, split),
                  error_rates(predictions, "offset_days", task, threshold, split),
                  error_rates(predictions, "view", task, threshold, split),
                  cases, summarise_cases(cases, reference, min_cases=min_cases))


def case_titles(cases: pd.DataFrame, columns: Sequence[str] = ("view", "day_bin")) -> list[str]:
    """Figure titles: image_id, then the given metadata (never paths)."""
    out = []
    for _, r in cases.iterrows():
        bits = [f"{c.replace('day_bin', 'day')} {r[c]}" for c in columns if c in cases.columns and str(r[c]) not in ("", "nan")]
        out.append(str(r["image_id"]) + ("\n" + ", ".join(bits) if bits else ""))
    return out
