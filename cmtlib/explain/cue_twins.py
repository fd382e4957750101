"""The twins' truth of the shortcut audit: does the network's score follow a planted cue?

A cue twin is the same film with only one cue tied to the label removed (docs/CONTRACTS.md,
"Synthetic truth, twins and cues": the source re-drawn with the other site's look, the view re-drawn
PA, or a marker, text, size, border or tubes cue taken away). p(COVID-19 | film) - p(COVID-19 | twin)
is what the cue alone adds to the score: the causal effect the audit's network verdict is judged
against. The twins never make the verdict: they are its check, and only phantoms have them.

`cue_twin_films(run)` gives every film of one split that carries a tied cue, with its twin, at the
run's image size exactly as the model sees it (the cache's rows; twins resized the way the cache
resizes, as cmtlib.explain.truth does for lesion twins). `twin_truth` scores them; `twin_summary`
gives per cue the mean change over the films carrying it, with a patient-bootstrap interval, and
whether the network follows the cue (mean change >= FOLLOWS) or ignores it (< IGNORES).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from cmtlib.explain.overlays import load_images
from cmtlib.explain.shortcut import covid_scores
from cmtlib.explain.truth import read_resized, run_truth
from cmtlib.metrics import bootstrap_ci
from cmtlib.run import Run

# Issue 20: the twins show the network following a cue when its mean change is at least FOLLOWS, and
# ignoring it below IGNORES; between the two the twins do not decide (neither power nor false alarm).
FOLLOWS = 0.2
IGNORES = 0.05
# Which names of a verdict count as naming each planted kind. The verdicts name metadata cues by name
# and the others by where they lie or what they change: a marker and burned-in text sit in the corners;
# lines and tubes lie outside the lungs, across the frame and the corners too; the source is a scanner
# look (grey levels, fine detail); a film stored small has less fine detail.
OUTSIDE = ("outside the lungs", "frame", "corners")
NETWORK_NAMES = {"source": ("source", "grey levels", "fine detail"), "view": ("view",), "marker": ("corners",),
                 "text": ("corners",), "size": ("original size", "fine detail"), "border": ("frame",), "tubes": OUTSIDE}
DATA_NAMES = {"source": ("source",), "view": ("view",), "marker": ("corners",), "text": ("corners",),
              "size": ("original size",), "border": ("frame",), "tubes": OUTSIDE}


def cue_of(removed: str) -> str:
    """twins.csv `removed` -> the cue's name ('cue:border' -> 'border'); '' for a lesion twin."""
    return "" if removed == "lesion" else removed.removeprefix("cue:")


@dataclass
class CueTwins:
    """Films carrying a tied cue and their twins without it, at the run's image size.

    Shape:
        images, twins: (N, S, S) uint8; index: N rows (image_id, patient_id, cue, label_covid, split).
        A film carrying two cues appears once per cue.
    """

    images: np.ndarray
    twins: np.ndarray
    index: pd.DataFrame

    def __len__(self) -> int:
        return len(self.images)


def cue_twin_films(run: Run, split: str = "test", cues=None) -> CueTwins | None:
    """The films of `split` carrying a tied cue (of `cues`, default every one) with their twins; None
    when the run's data has no truth (real collections)."""
    found = run_truth(run)
    if found is None:
        return None
    cache, _, twins = found
    twins = twins.assign(cue=twins["removed"].map(cue_of))
    twins = twins[(twins["cue"] != "") & (twins["split"] == split)]
    if cues is not None:
        twins = twins[twins["cue"].isin(list(cues))]
    films = load_images(cache, image_ids=twins["twin_of"].tolist())
    size = films.images.shape[-1]
    twin_images = (np.stack([read_resized(p, size) for p in twins["path"]]) if len(twins)
                   else np.zeros((0, size, size), np.uint8))
    index = pd.DataFrame({"image_id": twins["twin_of"].to_numpy(), "patient_id": films.index["patient_id"].astype(str).to_numpy(),
                          "cue": twins["cue"].to_numpy(), "label_covid": films.labels(), "split": split})
    return CueTwins(films.images, twin_images, index)


def twin_truth(model: nn.Module, films: CueTwins, batch_size: int = 64) -> pd.DataFrame:
    """Per film and cue: image_id, patient_id, cue, label_covid, p_film, p_twin, change = p_film - p_twin."""
    p_film = covid_scores(model, films.images, batch_size) if len(films) else np.zeros(0)
    p_twin = covid_scores(model, films.twins, batch_size) if len(films) else np.zeros(0)
    return films.index.assign(p_film=p_film, p_twin=p_twin, change=p_film - p_twin)


def twin_summary(per_film: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per cue: mean change over the films carrying it (95 % patient-bootstrap interval), n, and
    `follows` (mean >= FOLLOWS), `ignores` (mean < IGNORES)."""
    out = {}
    for cue, rows in per_film.groupby("cue", sort=False):
        ci = bootstrap_ci("mean", rows["change"].to_numpy(float), rows["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
        out[str(cue)] = {"mean_change": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n": int(len(rows)),
                         "follows": bool(ci.estimate >= FOLLOWS), "ignores": bool(ci.estimate < IGNORES)}
    return out


def run_twin_truth(run: Run, split: str = "test", model: nn.Module | None = None) -> dict[str, dict] | None:
    """`twin_summary` of a run's films of `split` (None without truth)."""
    films = cue_twin_films(run, split)
    if films is None:
        return None
    if model is None:
        model, _ = run.load_model()
    return twin_summary(twin_truth(model, films))
