"""The heat-map study (issue 19): which map shows the lesion the network reads?

On phantoms with truth (cmtlib.explain.truth), for each run: reliance (film -> lesion twin), every
CAM method of `METHODS` at every layer of `LAYERS` measured against the lesion on every COVID-19 test
film with one (cmtlib.explain.map_truth), the faithfulness of the maps at `ROAD_LAYERS` against a
random ordering (ROAD; cmtlib.explain.faithfulness), and the randomisation check of the same maps.
CMTNet's own disease map (the decoder's output, not an explanation of the classifier) is measured
beside them. `explain_run` is the per-run analysis (a study task); it keeps its tables in the run's
explanations/ folder and reuses them while the run's best checkpoint is older. `pool` puts the runs of
several seeds together (films of one patient resampled together across seeds) and `choose` names the
maps that clear every target.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.errors import ConfigError
from cmtlib.explain.cam import compute_cams, disease_maps
from cmtlib.explain.checks import DISEASE, map_label  # CMTNet's own disease map: shown beside, never chosen
from cmtlib.explain.faithfulness import faithfulness, faithfulness_summary, passes_randomisation, randomisation_check
from cmtlib.explain.map_truth import TARGETS, score_maps, summarise, value
from cmtlib.explain.reliance import reliance, reliance_summary
from cmtlib.explain.truth import TruthFilms, truth_films
from cmtlib.fileio import read_json, write_json
from cmtlib.run import Run, write_csv

METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam")
LAYERS = ("last", "block2", "block3", "block4", "fused")  # CMTNet's last block is block 5 (H/16)
ROAD_LAYERS = ("last", "fused")  # faithfulness and randomisation: ROAD costs seconds per film and map
ROAD_FILMS = 40  # later films whose maps ROAD scores, per run (a seeded sample when there are more)
RANDOMISATION_FILMS = 16
TABLES = ("reliance", "maps", "faithfulness", "randomisation")


def _later_sample(films: TruthFilms, n: int, seed: int) -> TruthFilms:
    later = np.flatnonzero(~films.early)
    if len(later) > n:
        later = np.sort(np.random.default_rng(seed).choice(later, n, replace=False))
    return films.take(later)


def _maps(model, films: TruthFilms, methods, layers) -> dict[str, np.ndarray]:
    maps = {map_label(m, layer): compute_cams(model, films.images, (m,), layer=layer)[m] for m in methods for layer in layers}
    own = disease_maps(model, films.images)
    if own is not None:
        maps[DISEASE] = own
    return maps


def measure_run(run: Run, methods=METHODS, layers=LAYERS, road_layers=ROAD_LAYERS, road_films: int = ROAD_FILMS,
                seed: int = 0) -> dict[str, pd.DataFrame]:
    """The four tables of a run (module docstring): reliance, maps, faithfulness, randomisation."""
    films = truth_films(run, "test")
    if films is None or not len(films):
        raise ConfigError(f"{run.path}: the heat-map study needs phantoms with truth (data_kind: synthetic) and COVID-19 test films "
                          "with a lesion; real collections get faithfulness and the randomisation check on page 7 instead")
    model, _ = run.load_model()
    per_map = score_maps(_maps(model, films, methods, layers), films)
    sample = _later_sample(films, road_films, seed)
    judged = {k: v for k, v in _maps(model, sample, methods, road_layers).items()}
    faith = faithfulness(model, sample.images, judged, sample.patients, seed=seed)
    faith.insert(1, "image_id", np.tile(sample.index["image_id"].to_numpy(), len(judged)))
    checks = []
    few = sample.take(np.arange(min(RANDOMISATION_FILMS, len(sample))))
    for method in methods:
        for layer in road_layers:
            table = randomisation_check(model, few.images, lambda m, x, a=method, b=layer: compute_cams(m, x, (a,), layer=b)[a], seed=seed)
            checks.append(table.assign(map=map_label(method, layer)))
    return {"reliance": reliance(model, films), "maps": per_map, "faithfulness": faith, "randomisation": pd.concat(checks, ignore_index=True)}


def explain_run(run_dir: str, road_films: int = ROAD_FILMS, seed: int = 0) -> dict:
    """The study's per-run analysis: measure (or reuse) the run's tables, return a short summary."""
    run = Run.open(run_dir)
    folder = run.explanations_dir
    done = folder / "summary.json"
    if not (done.is_file() and done.stat().st_mtime >= run.checkpoint("best").stat().st_mtime):
        tables = measure_run(run, road_films=road_films, seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            write_csv(table, folder / f"{name}.csv")
        write_json(done, run_summary(tables))
    return read_json(done)


def read_tables(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """A run's explanation tables (explain_run must have made them)."""
    folder = Run(run_dir).explanations_dir
    return {name: pd.read_csv(folder / f"{name}.csv", dtype={"image_id": str, "patient_id": str}) for name in TABLES}


def run_summary(tables: dict[str, pd.DataFrame], n_boot: int = 1000) -> dict:
    """One run in numbers: its reliance, and per map the later films' pointing and ratio, its ROAD gain
    and randomisation, and whether it clears every target."""
    rel = reliance_summary(tables["reliance"], n_boot=n_boot)
    summary = summarise(tables["maps"], n_boot=n_boot)
    faith = faithfulness_summary(tables["faithfulness"], n_boot=n_boot).set_index("map") if len(tables["faithfulness"]) else None
    maps = {}
    for name in dict.fromkeys(tables["maps"]["map"]):
        rand = tables["randomisation"][tables["randomisation"]["map"] == name]
        maps[name] = {"pointing": value(summary, name, "pointing"), "ratio": value(summary, name, "ratio"), "iou": value(summary, name, "iou"),
                      "road_gain": float(faith.loc[name, "gain"]) if faith is not None and name in faith.index else math.nan,
                      "faithful": bool(faith.loc[name, "faithful"]) if faith is not None and name in faith.index else None,
                      "randomisation": bool(passes_randomisation(rand)) if len(rand) else None}
    return {"reliance": {k: v for k, v in rel.items() if k != "not_read"}, "not_read": rel["not_read"], "maps": maps}


def pool(tables_by_run: dict[str, dict[str, pd.DataFrame]], n_boot: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Several runs' tables together (seeds of one configuration): each film row keeps its run; a patient's
    films are resampled together across runs. Returns summaries: maps (map_truth.summarise), faithfulness,
    randomisation (median rank correlation per map and step, over runs), reliance (per group)."""
    def stacked(name: str) -> pd.DataFrame:
        return pd.concat([t[name].assign(run=r) for r, t in tables_by_run.items()], ignore_index=True)

    rel, maps, faith, rand = (stacked(n) for n in ("reliance", "maps", "faithfulness", "randomisation"))
    reliance_rows = [{"group": g, **reliance_summary(rel, n_boot=n_boot, seed=seed)[g]} for g in ("all", "later", "early")]
    randomised = rand.groupby(["map", "step"], sort=False).agg(randomised=("randomised", "first"), median_spearman=("median_spearman", "median"),
                                                              n_runs=("run", "nunique")).reset_index()
    return {"maps": summarise(maps, n_boot=n_boot, seed=seed), "faithfulness": faithfulness_summary(faith, n_boot=n_boot, seed=seed),
            "randomisation": randomised, "reliance": pd.DataFrame(reliance_rows)}


def choose(pooled: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every measured map with the targets it clears (pointing and ratio on later films, ROAD gain's interval
    above 0, randomisation passed), best first: all targets cleared, then pointing, then ratio."""
    from cmtlib.explain.faithfulness import RANDOMISATION_BAR

    faith = pooled["faithfulness"].set_index("map")
    last_step = pooled["randomisation"].sort_values("step").groupby("map").tail(1).set_index("map")
    rows = []
    for name in dict.fromkeys(pooled["maps"]["map"]):
        row = {"map": name, **{m: value(pooled["maps"], name, m) for m in ("pointing", "ratio", "iou")},
               "road_gain": faith["gain"].get(name, math.nan), "road_ci_low": faith["ci_low"].get(name, math.nan),
               "randomised_spearman": last_step["median_spearman"].get(name, math.nan)}
        row["clears"] = [m for m, bar in TARGETS.items() if row[m] >= bar]
        row["clears"] += ["faithful"] if row["road_ci_low"] > 0 else []
        row["clears"] += ["randomisation"] if row["randomised_spearman"] < RANDOMISATION_BAR else []
        row["all_targets"] = name != DISEASE and len(row["clears"]) == len(TARGETS) + 2
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["all_targets", "pointing", "ratio"], ascending=False, kind="stable").reset_index(drop=True)
