"""Does the network read the lesion? The drop in its COVID-19 probability from a film to its twin.

A lesion twin is the same film with only the lesion removed (cmtlib.explain.truth), so the drop
p(film) - p(twin) is what the lesion alone contributes to the score: near 1 when the network reads
the lesion, near 0 when the score comes from elsewhere (other lung texture, the source's look, the
view). Films whose drop is below `NOT_READ` are named: the network does not read their lesion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from cmtlib.explain.shortcut import covid_scores
from cmtlib.explain.truth import TruthFilms
from cmtlib.metrics import bootstrap_ci

NOT_READ = 0.1  # a drop below this: removing the lesion barely moves the score
TARGET_MEDIAN_DROP = 0.5  # issue 19: the network reads the lesion when the median drop past day 3 is at least this


def reliance(model: nn.Module, films: TruthFilms, batch_size: int = 64) -> pd.DataFrame:
    """Per film: image_id, patient_id, early, p_film, p_twin and drop = p_film - p_twin."""
    p_film = covid_scores(model, films.images, batch_size)
    p_twin = covid_scores(model, films.twins, batch_size)
    return pd.DataFrame({"image_id": films.index["image_id"].to_numpy(), "patient_id": films.patients, "early": films.early,
                         "offset_days": films.index["offset_days"].to_numpy(), "p_film": p_film, "p_twin": p_twin, "drop": p_film - p_twin})


def reliance_summary(per_film: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Median drop (patient-bootstrap 95 % interval) over all, later and early films; the films not read.

    Returns:
        {group: {median, ci_low, ci_high, mean, n}} for all / later / early, plus `not_read`: the
        image_ids whose drop is below NOT_READ, and `reads_lesion`: the later films' median >= TARGET_MEDIAN_DROP.
    """
    out: dict = {}
    for group, rows in (("all", np.ones(len(per_film), bool)), ("later", ~per_film["early"].to_numpy(bool)),
                        ("early", per_film["early"].to_numpy(bool))):
        drop = per_film["drop"].to_numpy(float)[rows]
        if drop.size == 0:
            out[group] = {"median": np.nan, "ci_low": np.nan, "ci_high": np.nan, "mean": np.nan, "n": 0}
            continue
        ci = bootstrap_ci(np.median, drop, per_film["patient_id"].to_numpy()[rows], n_boot=n_boot, seed=seed)
        out[group] = {"median": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "mean": float(drop.mean()), "n": int(drop.size)}
    out["not_read"] = per_film.loc[per_film["drop"] < NOT_READ, "image_id"].astype(str).tolist()
    out["reads_lesion"] = bool(out["later"]["median"] >= TARGET_MEDIAN_DROP)
    return out
