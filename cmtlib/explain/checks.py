"""The explanation checks of one run, as page 7 shows them and page 8's audit reads them.

With truth (phantoms): reliance (film -> lesion twin) and the default map and today's gradient
methods and EigenCAM at the last block, with CMTNet's own disease map beside them, measured against
the lesion on the COVID-19 test films that have one (a seeded sample of `TRUTH_FILMS`); on real collections there is no lesion truth
and the page says so. Either way: the default map's faithfulness (ROAD against a random ordering)
on up to `ROAD_FILMS` COVID-19 test films, and its randomisation check. `run_checks` measures once
and keeps the result in the run's explanations/ folder (page.json and CSV tables), reused while the
run's best checkpoint is older, so the audit page and a re-rendered page 7 do not pay twice.

The default map (`DEFAULT_MAP`: HiResCAM, fused over the two blocks before the last) is the one the
heat-map study chose (cmtlib.experiments.heatmaps; docs/explanations.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmtlib.explain.cam import compute_cams, disease_maps
from cmtlib.explain.faithfulness import faithfulness, faithfulness_summary, passes_randomisation, randomisation_check
from cmtlib.explain.map_truth import score_maps, shows_lesion, summarise
from cmtlib.explain.overlays import load_images
from cmtlib.explain.reliance import reliance, reliance_summary
from cmtlib.explain.truth import truth_films
from cmtlib.fileio import read_json, write_json
from cmtlib.run import Run, write_csv

DEFAULT_MAP = ("hirescam", "fused")  # (method, layer): chosen by the heat-map study
# The methods the page has always shown, measured at the last block against the truth; ScoreCAM (one
# encoder pass per channel and film) only on the few films the page draws.
TODAY = ("gradcam", "gradcam++", "eigencam", "layercam")
DISEASE = "disease decoder"
TRUTH_FILMS = 40  # COVID-19 test films with a lesion the page measures (a seeded sample when there are more)
ROAD_FILMS = 30
RANDOMISATION_FILMS = 12
PAGE_FILE = "page.json"
TABLES = ("reliance", "maps", "faithfulness", "randomisation")  # kept as explanations/page_<name>.csv


def map_label(method: str, layer: str) -> str:
    return f"{method} @ {layer}"


DEFAULT_LABEL = map_label(*DEFAULT_MAP)


def default_maps(model, images) -> np.ndarray:
    """The default map of each image's COVID-19 logit. (N, H, W) in [0, 1]"""
    method, layer = DEFAULT_MAP
    return compute_cams(model, images, (method,), layer=layer)[method]


@dataclass
class RunChecks:
    """What page 7 shows (None where the run has no truth)."""

    truth: bool
    reliance: pd.DataFrame | None  # per film (cmtlib.explain.reliance)
    maps: pd.DataFrame | None  # per map and film against the lesion (cmtlib.explain.map_truth)
    faithfulness: pd.DataFrame  # per film: the default map and a random ordering
    randomisation: pd.DataFrame  # per step of the cascade
    films: int  # films measured against truth (0 without truth)

    def summary(self, n_boot: int = 1000) -> dict:
        rel = reliance_summary(self.reliance, n_boot=n_boot) if self.reliance is not None else None
        maps = summarise(self.maps, n_boot=n_boot) if self.maps is not None else None
        faith = faithfulness_summary(self.faithfulness, n_boot=n_boot)
        return {"reliance": rel, "maps": maps, "faithfulness": faith, "randomisation_passed": passes_randomisation(self.randomisation)}


def _covid_films(run: Run, n: int, seed: int):
    """Up to n COVID-19 test films (a seeded sample), for runs without truth."""
    films = load_images(run.cache_dir(), "test")
    covid = np.flatnonzero(films.labels() == 1)
    if len(covid) > n:
        covid = np.sort(np.random.default_rng(seed).choice(covid, n, replace=False))
    return films.take(covid)


def measure(run: Run, seed: int = 0) -> RunChecks:
    """Measure the checks of the module docstring (seconds to a minute at the default report's size)."""
    model, _ = run.load_model()
    truth = truth_films(run, "test", cap=TRUTH_FILMS, seed=seed)
    rel = per_map = None
    if truth is not None and len(truth):
        rel = reliance(model, truth)
        maps = {DEFAULT_LABEL: default_maps(model, truth.images)}
        maps.update({map_label(m, "last"): compute_cams(model, truth.images, (m,))[m] for m in TODAY})
        own = disease_maps(model, truth.images)
        if own is not None:
            maps[DISEASE] = own
        per_map = score_maps(maps, truth)
        at = np.flatnonzero(~truth.early)[:ROAD_FILMS]
        later = truth.take(at)
        images, patients, ids, default = later.images, later.patients, later.index["image_id"].to_numpy(), maps[DEFAULT_LABEL][at]
    else:
        films = _covid_films(run, ROAD_FILMS, seed)
        images, patients, ids = films.images, films.index["patient_id"].astype(str).to_numpy(), np.asarray(films.image_ids)
        default = default_maps(model, images)
    faith = faithfulness(model, images, {DEFAULT_LABEL: default}, patients, seed=seed)
    faith.insert(1, "image_id", ids)
    rand = randomisation_check(model, images[:RANDOMISATION_FILMS], default_maps, seed=seed, original=default[:RANDOMISATION_FILMS])
    return RunChecks(truth is not None and len(truth) > 0, rel, per_map, faith, rand, len(truth) if truth is not None else 0)


def run_checks(run: Run, seed: int = 0) -> RunChecks:
    """The run's checks, measured once and kept in its explanations/ folder (module docstring)."""
    folder = run.explanations_dir
    done = folder / PAGE_FILE
    best = run.checkpoint("best")
    meta = read_json(done, {}) if done.is_file() else {}
    if best.is_file() and done.is_file() and done.stat().st_mtime >= best.stat().st_mtime and meta.get("map") == DEFAULT_LABEL and meta.get("seed") == seed:
        tables = [page_table(run, name) for name in TABLES]
        return RunChecks(meta["truth"], *tables, meta["films"])
    checks = measure(run, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        frame, path = getattr(checks, name), folder / f"page_{name}.csv"
        if frame is not None:
            write_csv(frame, path)
        else:
            path.unlink(missing_ok=True)  # a table of an earlier measurement must not be read with this one
    write_json(done, {"map": DEFAULT_LABEL, "seed": seed, "truth": checks.truth, "films": checks.films})
    return checks


def page_table(run: Run, name: str) -> pd.DataFrame | None:
    """One of the tables `run_checks` keeps (TABLES), None where it was not measured."""
    path = run.explanations_dir / f"page_{name}.csv"
    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str}) if path.is_file() else None


def default_passes(summary: dict) -> bool:
    """The default map clears every target that the run can measure."""
    maps = summary["maps"]
    located = maps is None or shows_lesion(maps, DEFAULT_LABEL)
    faith = summary["faithfulness"].set_index("map").loc[DEFAULT_LABEL]
    return bool(located and faith["faithful"] and summary["randomisation_passed"] and not math.isnan(faith["gain"]))
