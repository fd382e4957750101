"""Shortcut mitigations measured side by side on leave-one-collection-out folds (`cmt mitigation`).

Every variant (a params file, e.g. params/mitigation/*.yaml) is trained once per fold and seed, the
fold's films held out entirely (the `holdout` data key), and judged the way a collection the run
never saw would judge it:

    held-out COVID sensitivity     COVID-19 films of the held-out fold flagged at the run's frozen threshold
    ... at 64 px                   the same films reduced to 64 px and enlarged back (a thumbnail of them)
    specificity, large films       COVID-negative films of the judged films (held-out fold and internal
                                   test) whose original short side is at least LARGE_PX, at that threshold
    specificity, thumbnails        the same for films of at most THUMB_PX on their long side
    AUC within collections         AUC over positive-negative pairs from one collection only, on the
                                   held-out films (each scored by the run that never saw it): what a
                                   cue naming the collection cannot help
    pooled AUC, lung Dice          the internal test split
    lungs blanked / lungs only     COVID-19 AUC on the judged films with the lungs, or all but the
                                   lungs, blanked, the lungs being the network's own outline on every film

Films are the unit of the figures, patients of the 95 % intervals (bootstrap); seeds are averaged,
and differences to the first variant are paired (the same films, the same patient resamples).
Layout: <out>/runs/<variant>/<fold>-s<seed>/ (run folders), <out>/results.csv (one row per judged
film and run), <out>/summary.json.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.evaluate import evaluate_run
from cmtlib.experiments.external import HOLDOUT, ensure_external
from cmtlib.experiments.runs import ensure_run
from cmtlib.explain.overlays import load_images
from cmtlib.explain.shortcut import blanking_aucs
from cmtlib.fileio import atomic_path
from cmtlib.params import Params
from cmtlib.run import Evaluation, Run

LARGE_PX = 224  # a hospital film: at least this on its short side
THUMB_PX = 64  # a thumbnail: at most this on its long side
DEGRADE_PX = 64


@dataclass
class Fold:
    """One held-out fold: a name and its holdout filters."""

    name: str
    filters: list[str]


def parse_fold(text: str, n: int) -> Fold:
    """`name:filter;filter` or a bare `filter` (named fold<n>)."""
    name, sep, rest = str(text).partition(":")
    if sep and "=" not in name and "~" not in name:
        return Fold(name.strip(), [f.strip() for f in rest.split(";") if f.strip()])
    return Fold(f"fold{n}", [f.strip() for f in str(text).split(";") if f.strip()])


def run_one(params: Params, variant: str, fold: Fold, seed: int, out: Path) -> pd.DataFrame:
    """Train one variant on one fold with one seed (reusing a finished run) and return its judged
    films: the held-out fold and the internal test, with scores, decisions and the run's figures."""
    run_dir = out / "runs" / variant / f"{fold.name}-s{seed}"
    p = dataclasses.replace(params, data=dataclasses.replace(params.data, holdout=list(fold.filters)),
                            train=dataclasses.replace(params.train, seed=seed))
    t0 = time.perf_counter()
    run = ensure_run(p, run_dir)
    ensure_external(p, run.path)
    degraded = run.external(f"holdout-{DEGRADE_PX}px")
    if not degraded.evaluated:
        evaluate_run(run.path, split="holdout", out_dir=degraded.path, degrade_px=DEGRADE_PX)
    rows = _judged(run.refresh(), degraded.refresh())
    blanking = _blanking(run)
    seconds = sum(run.info.seconds_per_epoch) or (time.perf_counter() - t0)
    return rows.assign(variant=variant, fold=fold.name, seed=seed, train_s=seconds, lung_dice_test=(run.metrics or {}).get("lung", {}).get("dice"),
                       pooled_auc_test=(run.metrics or {}).get("covid", {}).get("auc"), **{f"audit_{k}": v for k, v in blanking.items()})


def _judged(run: Run, degraded: Evaluation) -> pd.DataFrame:
    """The run's judged films: internal test and held-out fold, with p_covid, the decision at the
    frozen threshold, and the held-out films' degraded score."""
    test = run.predictions.assign(set="test")
    holdout = run.external(HOLDOUT).predictions.assign(set="holdout")
    small = degraded.predictions[["image_id", "p_covid"]].rename(columns={"p_covid": "p_covid_degraded"})
    holdout = holdout.merge(small, on="image_id", how="left")
    keep = ["image_id", "patient_id", "source", "label_covid", "p_covid", "orig_height", "orig_width", "set", "p_covid_degraded"]
    out = pd.concat([test, holdout], ignore_index=True).reindex(columns=keep)
    out["threshold"] = run.operating_threshold
    return out


def _blanking(run: Run) -> dict:
    """Lungs-blanked / lungs-only AUC on the judged films, with the network's own lungs for every film."""
    model, _ = run.load_model()
    cache = run.cache_dir()
    films = [load_images(cache, split) for split in ("test", "holdout")]
    images = np.concatenate([f.images for f in films])
    y = np.concatenate([f.labels() for f in films])
    lung = np.concatenate([f.lung for f in films])
    has = np.concatenate([f.has_lung for f in films])
    b = blanking_aucs(model, images, lung, has, y, source="model")
    return {"full": b["auc_full"], "lungs_blanked": b["auc_lungs_blanked"], "lungs_only": b["auc_outside_blanked"]}


def run_matrix(variants: list[tuple[str, Params]], folds: list[Fold], seeds: Iterable[int], out: Path,
               progress: Callable[[str], None] = print) -> pd.DataFrame:
    """Every variant x fold x seed (module docstring); the judged films of all runs, one row per film
    and run, also written to <out>/results.csv after each run (an interrupted study resumes)."""
    frames = []
    for name, params in variants:
        for fold in folds:
            for seed in seeds:
                t0 = time.perf_counter()
                frames.append(run_one(params, name, fold, seed, out))
                progress(f"  {name}, {fold.name}, seed {seed}: {time.perf_counter() - t0:.0f} s")
                with atomic_path(out / "results.csv") as tmp:
                    pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    return pd.concat(frames, ignore_index=True)
