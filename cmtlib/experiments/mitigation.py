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
The matrix is a study (cmtlib.experiments.study): one task per run, then `judge_run` on it as a task
of its own; run again, it reuses the runs that finished.
Layout: <out>/runs/<variant>/<fold>-s<seed>/ (run folders, each with its judged.csv),
<out>/results.csv (one row per judged film and run), <out>/summary.json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.evaluate import evaluate_run
from cmtlib.experiments.external import HOLDOUT, ensure_external
from cmtlib.experiments.study import RunOutcome, run_study
from cmtlib.explain.overlays import load_images
from cmtlib.explain.shortcut import blanking_aucs
from cmtlib.fileio import atomic_path
from cmtlib.params import Params, load_params
from cmtlib.run import Evaluation, Run, write_csv

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


def fold_params(params: Params, fold: Fold) -> Params:
    """A variant's params with the fold's films held out entirely (the `holdout` data key)."""
    return dataclasses.replace(params, data=dataclasses.replace(params.data, holdout=list(fold.filters)))


def judge_run(run_dir: str | Path) -> dict:
    """A study's analysis of one finished run (cmtlib.experiments.study): its judged films, the
    internal test and the held-out fold, with scores, decisions and the run's figures, written to
    <run>/judged.csv; returns {"judged": that file, "films": how many}. Evaluations already made
    are reused."""
    run = Run.open(run_dir)
    p = load_params(run.config_path)  # the run's own params: its holdout names the fold
    ensure_external(p, run.path)
    degraded = run.external(f"holdout-{DEGRADE_PX}px")
    if not degraded.evaluated:
        evaluate_run(run.path, split="holdout", out_dir=degraded.path, degrade_px=DEGRADE_PX)
    rows = _judged(run.refresh(), degraded.refresh())
    blanking = _blanking(run)
    seconds = sum(run.info.seconds_per_epoch) or None
    rows = rows.assign(train_s=seconds, lung_dice_test=(run.metrics or {}).get("lung", {}).get("dice"),
                       pooled_auc_test=(run.metrics or {}).get("covid", {}).get("auc"), **{f"audit_{k}": v for k, v in blanking.items()})
    write_csv(rows, run.judged_path)
    return {"judged": str(run.judged_path), "films": len(rows)}


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


def run_matrix(variants: list[tuple[str, Params]], folds: list[Fold], seeds: Iterable[int], out: Path, scheduler: str = "",
               jobs: int = 0, on_done: Callable[[RunOutcome], None] | None = None) -> tuple[pd.DataFrame, list[RunOutcome]]:
    """Every variant x fold x seed as a study (module docstring): one task per run, one `judge_run`
    task per finished run. Returns the judged films of every run that finished, one row per film and
    run (also <out>/results.csv, rewritten as runs end), and every run's outcome."""
    where = {f"{name}/{fold.name}": (name, fold.name) for name, _ in variants for fold in folds}
    configs = [(f"{name}/{fold.name}", fold_params(params, fold)) for name, params in variants for fold in folds]
    finished: list[RunOutcome] = []

    def tell(outcome: RunOutcome) -> None:
        if outcome.done and outcome.analysis:
            finished.append(outcome)
            _write_results(out, finished, where)
        if on_done is not None:
            on_done(outcome)

    outcomes = run_study(configs, out, seeds=list(seeds), analysis=judge_run, scheduler=scheduler, jobs=jobs, on_done=tell)
    return _write_results(out, [o for o in outcomes if o.done and o.analysis], where), outcomes


def _write_results(out: Path, outcomes: list[RunOutcome], where: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """<out>/results.csv: the judged films of these runs, labelled with variant, fold and seed."""
    frames = [pd.read_csv(o.analysis["judged"], dtype={"image_id": str, "patient_id": str})
              .assign(variant=where[o.config][0], fold=where[o.config][1], seed=o.seed) for o in outcomes]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    with atomic_path(out / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    return results
