"""The outlines page (05) and the misclassification page (06): plain tables of Dice per class, the
cases shown, and the misclassified films (image ids and records only, no file paths)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from cmtlib.explain.overlays import CLASSES, true_class
from cmtlib.report.pages.tables import as_number, safe_table


def dice_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per class and task: films with a reference outline, median Dice and its quartiles, worst Dice."""
    cls = true_class(predictions)
    rows = []
    for task, name in (("lung", "lungs"), ("disease", "disease region")):
        col = f"{task}_dice"
        d = pd.to_numeric(predictions[col], errors="coerce") if col in predictions.columns else pd.Series(np.nan, index=predictions.index)
        for c in CLASSES:
            x = d[(cls == c) & d.notna()]
            rows.append({"outline": name, "class": c, "films with a reference": len(x),
                         "median Dice": x.median() if len(x) else np.nan,
                         "middle half of films": f"{x.quantile(0.25):.2f} to {x.quantile(0.75):.2f}" if len(x) else "",
                         "lowest Dice": x.min() if len(x) else np.nan})
    out = pd.DataFrame(rows)
    return out[out["films with a reference"] > 0].reset_index(drop=True)


def cases_table(cases: pd.DataFrame) -> pd.DataFrame:
    """overlay_cases' chosen cases: class, which case, image, Dice."""
    if cases is None or cases.empty:
        return pd.DataFrame(columns=["class", "case", "image", "Dice"])
    return cases.rename(columns={"rank": "case", "image_id": "image", "dice": "Dice"})[["class", "case", "image", "Dice"]]


REVIEW_COLUMNS = {"image_id": "image", "offset_days": "day since admission", "day_bin": "days group",
                  "label_covid": "COVID-19 (truth)", "label_healthy": "healthy (truth)", "p_covid": "COVID-19 probability",
                  "p_healthy": "healthy probability", "p_other": "other-disease probability", "errors": "what went wrong",
                  "also_missed_covid": "also below the COVID-19 threshold"}
# What each review table shows (a page is ~1000 px wide: the rest of review's columns are implied,
# e.g. the truth by 'what went wrong', or the same for every row, e.g. the finding of COVID-19 films).
MISCLASSIFIED_SHOWN = ("image_id", "errors", "source", "view", "offset_days", "sex", "age", "finding", "p_covid", "p_healthy")
CALLED_HEALTHY_SHOWN = ("image_id", "source", "view", "offset_days", "sex", "age", "p_covid", "p_healthy", "also_missed_covid")


def _yes_no(x: Any) -> str:
    v = as_number(x)
    return "unknown" if v is None else ("yes" if v == 1 else "no")


def review_table(df: pd.DataFrame, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """A review table (review.misclassified, review.covid_called_healthy) with plain column names
    and values: labels as yes / no, days and ages as whole numbers, no file paths; `columns` keeps
    those of review's columns (in that order) that the table has."""
    out = safe_table(df)
    if columns is not None:
        out = out[[c for c in columns if c in out.columns]]
    for col in ("label_covid", "label_healthy"):
        if col in out.columns:
            out[col] = out[col].map(_yes_no)
    if "also_missed_covid" in out.columns:
        out["also_missed_covid"] = out["also_missed_covid"].map(lambda v: "unknown" if pd.isna(v) else ("yes" if v else "no"))
    for col in ("offset_days", "age"):
        if col in out.columns:
            out[col] = out[col].map(lambda v: "" if as_number(v) is None else f"{as_number(v):.0f}")
    return out.rename(columns=REVIEW_COLUMNS)


def misclassified_table(df: pd.DataFrame) -> pd.DataFrame:
    return review_table(df, MISCLASSIFIED_SHOWN)


def called_healthy_table(df: pd.DataFrame) -> pd.DataFrame:
    return review_table(df, CALLED_HEALTHY_SHOWN)


def error_rate_table(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """review.error_rates with plain names; `what` names the group column (e.g. 'view')."""
    out = table.rename(columns={"group": what, "n": "films", "errors": "wrong", "error_rate": "error rate"})
    out["error rate"] = [("" if math.isnan(r) else f"{100 * r:.0f} %") for r in out["error rate"].astype(float)]
    return out
