"""Heat maps measured against a known lesion (cmtlib.explain.truth): does each map point at it?

Per map and film (maps min-max normalised per film, as every page shows them):
    pointing   1 if the map's hottest pixel lies inside the lesion, else 0 (cam.pointing_game)
    share      the share of the map's total inside the lesion (cam.mass_in_mask)
    uniform    the lesion's share of the film: what a map spread evenly would get as `share`
    ratio      share / uniform: how many times more of the map lies on the lesion than chance
    iou        intersection over union of (map >= half its maximum) with the lesion (cam.iou_at)
Summaries give each measure's mean over films with a 95 % interval from resampling patients
(cmtlib.metrics.bootstrap_ci), over all films and split into early (day <= 3: faint opacities) and
later films. `TARGETS` are the bars a map must clear on the later films to be called one that shows
the lesion (issue 19; docs/explanations.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cmtlib.explain.cam import iou_at, mass_in_mask, normalise_maps, pointing_game
from cmtlib.explain.truth import TruthFilms
from cmtlib.metrics import bootstrap_ci

MEASURES = ("pointing", "share", "uniform", "ratio", "iou")
GROUPS = ("all", "later", "early")
# A map shows the lesion when, on the later films, its hottest point is inside the lesion on at least
# 70 % of them and at least 3 times the uniform share of it lies inside the lesion.
TARGETS = {"pointing": 0.70, "ratio": 3.0}


def score_maps(maps: dict[str, np.ndarray], films: TruthFilms) -> pd.DataFrame:
    """One row per map and film: image_id, patient_id, early, and the measures of the module docstring.

    Shape:
        maps: name -> (N, S, S) non-negative maps of the N films, in the films' order.
    """
    rows = []
    uniform = films.lesion.mean(axis=(1, 2))
    for name, m in maps.items():
        m = normalise_maps(m)
        if m.shape != films.lesion.shape:
            raise ValueError(f"map {name!r} has shape {m.shape}; the films' lesions are {films.lesion.shape}")
        share = mass_in_mask(m, films.lesion)
        rows.append(pd.DataFrame({
            "map": name, "image_id": films.index["image_id"].to_numpy(), "patient_id": films.patients, "early": films.early,
            "pointing": pointing_game(m, films.lesion), "share": share, "uniform": uniform,
            "ratio": share / np.where(uniform > 0, uniform, np.nan), "iou": iou_at(m, films.lesion),
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["map", "image_id", "patient_id", "early", *MEASURES])


def group_rows(per_film: pd.DataFrame, group: str) -> pd.Series:
    """Which rows belong to a group: all, later (day > 3) or early (day <= 3)."""
    if group == "all":
        return pd.Series(True, index=per_film.index)
    return per_film["early"].astype(bool) == (group == "early")


def summarise(per_film: pd.DataFrame, n_boot: int = 1000, seed: int = 0, measures=MEASURES) -> pd.DataFrame:
    """Mean and patient-bootstrap 95 % interval of each measure, per map and group.

    Returns:
        one row per map, group and measure: map, group, measure, mean, ci_low, ci_high, n (films where defined).
    """
    rows = []
    for name in dict.fromkeys(per_film["map"]):
        part = per_film[per_film["map"] == name]
        for group in GROUPS:
            sel = part[group_rows(part, group)]
            for measure in measures:
                values = sel[measure].to_numpy(dtype=float)
                ok = ~np.isnan(values)
                if ok.sum() == 0:
                    rows.append({"map": name, "group": group, "measure": measure, "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0})
                    continue
                ci = bootstrap_ci("mean", values[ok], sel["patient_id"].to_numpy()[ok], n_boot=n_boot, seed=seed)
                rows.append({"map": name, "group": group, "measure": measure, "mean": ci.estimate, "ci_low": ci.low,
                             "ci_high": ci.high, "n": int(ok.sum())})
    return pd.DataFrame(rows, columns=["map", "group", "measure", "mean", "ci_low", "ci_high", "n"])


def value(summary: pd.DataFrame, name: str, measure: str, group: str = "later", field: str = "mean") -> float:
    """One number of a summary (NaN when absent)."""
    hit = summary[(summary["map"] == name) & (summary["group"] == group) & (summary["measure"] == measure)]
    return float(hit[field].iloc[0]) if len(hit) else float("nan")


def shows_lesion(summary: pd.DataFrame, name: str) -> bool:
    """True when the map clears TARGETS on the later films."""
    return all(value(summary, name, m) >= bar for m, bar in TARGETS.items())
