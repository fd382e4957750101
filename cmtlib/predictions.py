"""predictions.csv rows (docs/CONTRACTS.md): a split's manifest columns beside a model's scores.

One builder for every producer of predictions: the validation pass that freezes a run's threshold
(cmtlib.engine), `cmt evaluate`, the embedding classifiers and the studies.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

META_COLUMNS = ("image_id", "patient_id", "source", "view", "offset_days", "sex", "age", "finding", "label_healthy", "label_covid", "label_other",
                "orig_height", "orig_width")
PRED_COLUMNS = ("p_healthy", "p_covid", "p_other", "pred_healthy", "pred_covid", "pred_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou")
# The in-distribution check (cmtlib.indist): 1 / 0 (empty where the run has no reference), the score
# (over 1 = flagged) and the reasons in words ('' when in distribution).
OOD_COLUMNS = ("in_distribution", "ood_score", "ood_reason")
SCORE_COLUMNS = ("p_healthy", "p_covid", "p_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou")


def decisions(p: np.ndarray, threshold: float) -> pd.array:
    """1 / 0 at `threshold`, empty (<NA>) where the probability or the threshold is missing."""
    missing = np.isnan(p) | math.isnan(threshold)
    return pd.array([pd.NA if m else int(v >= threshold) for v, m in zip(p, missing)], dtype="Int64")


def predictions_frame(index: pd.DataFrame, cols: dict[str, np.ndarray], threshold: float) -> pd.DataFrame:
    """predictions.csv rows from a split's index rows and a model's columns (cmtlib.inference: p_* and
    lung / disease dice and iou, NaN where absent; OOD_COLUMNS where the check ran, else empty);
    `pred_covid` at the operating `threshold`."""
    df = pd.DataFrame({c: index[c].to_numpy() if c in index.columns else "" for c in META_COLUMNS})
    df["p_healthy"], df["p_covid"], df["p_other"] = cols["p_healthy"], cols["p_covid"], cols["p_other"]
    df["pred_healthy"] = decisions(cols["p_healthy"], 0.5)
    df["pred_covid"] = decisions(cols["p_covid"], threshold)
    df["pred_other"] = decisions(cols["p_other"], 0.5)
    for k in ("lung_dice", "lung_iou", "disease_dice", "disease_iou"):
        df[k] = cols[k]
    n = len(df)
    df["in_distribution"] = decisions(np.asarray(cols.get("in_distribution", np.full(n, math.nan)), dtype=float), 0.5)
    df["ood_score"] = cols.get("ood_score", np.full(n, math.nan))
    df["ood_reason"] = cols.get("ood_reason", np.full(n, "", dtype=object))
    df["split"] = index["split"].to_numpy() if "split" in index.columns else ""
    df["cache_row"] = index["cache_row"].to_numpy() if "cache_row" in index.columns else np.arange(len(index))
    return df


def with_threshold(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The same predictions with `pred_covid` decided at `threshold`."""
    return df.assign(pred_covid=decisions(df["p_covid"].to_numpy(dtype=float), threshold))
