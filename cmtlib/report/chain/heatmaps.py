"""`cmt heatmaps`: the heat-map study (issue 19) and its summary page.

Each seed of one configuration (phantoms with truth: params/phantoms/clean.yaml) is a run of a study
(cmtlib.experiments.study) whose analysis task measures every heat map against the lesion
(cmtlib.experiments.heatmaps.explain_run). The page pools the seeds (a patient's films resampled
together across seeds) and ranks the maps by the targets they clear. Layout:

    reports/heatmap-study/ (or --out)
        index.html            the ranking, reliance, each map against the lesion, faithfulness, randomisation
        summary.json          the same numbers and every run's outcome
        maps.csv, ranking.csv the pooled tables
        runs/<name>-s<seed>/  each run folder, its measures in explanations/
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cmtlib.experiments.heatmaps import choose, explain_run, pool, read_tables
from cmtlib.experiments.study import RunOutcome, check, run_study, study_folder
from cmtlib.fileio import write_json, write_text
from cmtlib.params import load_params
from cmtlib.report.chain.render import study_page
from cmtlib.report.pages.explain import method_name
from cmtlib.report.pages.tables import to_html
from cmtlib.run import write_csv


def ranking_table(ranking: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"map": ranking["map"].map(method_name), "hottest point inside the lesion": ranking["pointing"],
                         "share on the lesion, times an even map's": ranking["ratio"], "overlap (IoU)": ranking["iou"],
                         "ROAD gain over random": ranking["road_gain"], "its 95 % CI, low end": ranking["road_ci_low"],
                         "rank correlation with the randomised network": ranking["randomised_spearman"],
                         "targets cleared": ranking["clears"].map(", ".join), "every target": ranking["all_targets"].map({True: "yes", False: "no"})})


def measures_table(maps: pd.DataFrame) -> pd.DataFrame:
    """Each map's measures with intervals, later and early films, one row per map and group."""
    wide = maps.assign(text=[f"{m:.2f} ({lo:.2f} to {hi:.2f})" if pd.notna(m) and pd.notna(lo) else ("–" if pd.isna(m) else f"{m:.2f}")
                             for m, lo, hi in zip(maps["mean"], maps["ci_low"], maps["ci_high"])])
    table = wide.pivot_table(index=["map", "group"], columns="measure", values="text", aggfunc="first", sort=False).reset_index()
    table["map"] = table["map"].map(method_name)
    return table[[c for c in ("map", "group", "pointing", "ratio", "share", "uniform", "iou") if c in table.columns]]


def _sections(pooled: dict[str, pd.DataFrame], ranking: pd.DataFrame) -> list[dict]:
    rel = pooled["reliance"]
    return [
        {"heading": "Which map shows the lesion", "text": [], "table": to_html(ranking_table(ranking), digits=3),
         "caption": "On the films past day 3: hottest point inside the lesion (target >= 0.70), share of the map on the lesion as a "
                    "multiple of an even map's (target >= 3), faithfulness (ROAD: removing the pixels the map ranks highest "
                    "lowers the COVID-19 probability more than removing random ones; target: the 95 % interval above 0) and "
                    "the randomisation check (target: rank correlation with the map of a fully randomised network below 0.5). "
                    "ROAD and randomisation are measured at the last block and fused only."},
        {"heading": "Does the network read the lesion", "text": [], "table": to_html(rel.round(3)),
         "caption": "The drop of the COVID-19 probability from each film to its twin without the lesion; median with a 95 % "
                    "interval from resampling patients."},
        {"heading": "Every map against the lesion", "text": [], "table": to_html(measures_table(pooled["maps"])),
         "caption": "Mean with a 95 % interval from resampling patients (all seeds' films together)."},
        {"heading": "Faithfulness (ROAD)", "text": [], "table": to_html(pooled["faithfulness"].assign(map=pooled["faithfulness"]["map"].map(method_name))),
         "caption": "Per map: its ROAD score, a random ordering's, and the gain with its interval."},
        {"heading": "Randomisation check", "text": [], "table": to_html(pooled["randomisation"].assign(map=pooled["randomisation"]["map"].map(method_name))),
         "caption": "Median over seeds of the median rank correlation between the map of the trained network and of the network "
                    "with its weights replaced by random ones, from the top down."},
    ]


def write_page(folder: Path, outcomes: Sequence[RunOutcome], failed: str = "") -> Path:
    """Pool the finished runs' tables, write maps.csv, ranking.csv, summary.json and index.html."""
    done = [o for o in outcomes if o.done]
    sections, ranking = [], pd.DataFrame()
    if done:
        pooled = pool({o.name: read_tables(o.run_dir) for o in done})
        ranking = choose(pooled)
        write_csv(pooled["maps"], folder / "maps.csv")
        write_csv(ranking.assign(clears=ranking["clears"].map(";".join)), folder / "ranking.csv")
        sections = _sections(pooled, ranking)
    intro = [f"{len(done)} run(s) of the same configuration and data, each with its own training seed. Every CAM method at every "
             "layer explains the network's COVID-19 output on the COVID-19 test films whose lesion is known exactly (phantoms); "
             "CMTNet's disease map, the output of its disease outline, is measured beside them but never chosen."]
    html = study_page("study.html.j2", f"{folder.name}/index.html", _dt.datetime.now(), title=f"Heat-map study: {folder.name}",
                      intro=intro, sections=sections, failed=failed)
    write_json(folder / "summary.json", {"best": ranking.head(1).to_dict("records"), "failed": failed, "runs": [
        {k: v for k, v in dataclasses.asdict(o).items() if k != "metrics"} for o in outcomes]})
    return write_text(folder / "index.html", html)


def run_heatmap_study(params_file: str | Path, seeds: Sequence[int] | None = None, out: str | Path | None = None,
                      overrides: Sequence[str] = (), scheduler: str | None = None, jobs: int | None = None) -> Path:
    """Train (or reuse) one run per seed of `params_file`, measure its heat maps, write the page."""
    params = load_params(params_file, list(overrides))
    folder = study_folder(out or Path(params.report.reports_dir) / "heatmap-study")
    print(f"heat-map study folder: {folder}", flush=True)
    outcomes = run_study([(params.run_name, params)], folder, seeds=list(seeds) if seeds else None, analysis=explain_run,
                         scheduler=params.experiments.scheduler if scheduler is None else scheduler,
                         jobs=params.report.report_jobs if jobs is None else jobs)
    bad = [o for o in outcomes if not o.done]
    page = write_page(folder, outcomes, "; ".join(f"{o.name} {o.status}: {o.error.splitlines()[0] if o.error else ''}" for o in bad))
    check(outcomes, page)
    return page
