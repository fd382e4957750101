"""The task ablation (the paper's Table V), and any list of configurations compared side by side: a
study (cmtlib.experiments.study) whose runs are only trained and evaluated, one per configuration
(and seed), into <folder>/runs/<name>[-s<seed>]/. The summary page is the report's
(cmtlib.report.chain.ablation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.experiments.study import RunOutcome, run_study, unique_names
from cmtlib.explain.checks import DEFAULT_LABEL, page_table, run_checks
from cmtlib.explain.map_truth import value
from cmtlib.metrics import bootstrap_ci
from cmtlib.params import Params
from cmtlib.run import Run


def config_names(all_params: Sequence[Params]) -> list[str]:
    """Each configuration's name: its run name, made unique in order (a second 'x' becomes 'x-2')."""
    return unique_names(p.run_name for p in all_params)


def run_configurations(all_params: Sequence[Params], names: Sequence[str], folder: Path, seeds: Sequence[int] | None = None,
                       scheduler: str = "", jobs: int = 0, on_done: Callable[[RunOutcome], None] | None = None,
                       explain: bool = False) -> list[RunOutcome]:
    """Train and evaluate every configuration (x seed) as one task each, with `explain` its explanation
    checks as a task of their own (`explain_checks`); one outcome per run, in order."""
    return run_study(list(zip(names, all_params)), folder, seeds=seeds, scheduler=scheduler, jobs=jobs, on_done=on_done,
                     analysis=explain_checks if explain else None)


# ---- explanations (cmt ablation --explain) ---------------------------------------------------

PAIRED = (("reliance", "drop", "the lesion's share of the COVID-19 probability (film minus its lesion twin)"),
          ("maps", "pointing", "the default heat map's hottest point inside the lesion"),
          ("faithfulness", "gain", "the default heat map's faithfulness (ROAD gain over random)"))


def explain_checks(run_dir: str | Path) -> dict:
    """A study's analysis of one run: its explanation checks (cmtlib.explain.checks), the films sampled
    with seed 0 whatever the run's seed, so every run of the study is judged on the same films."""
    checks = run_checks(Run.open(run_dir), seed=0)
    s = checks.summary()
    faith = s["faithfulness"].set_index("map").loc[DEFAULT_LABEL]
    maps = s["maps"]
    return {"truth": checks.truth, "reliance_later": s["reliance"]["later"]["median"] if s["reliance"] else None,
            "pointing_later": value(maps, DEFAULT_LABEL, "pointing") if maps is not None else None,
            "ratio_later": value(maps, DEFAULT_LABEL, "ratio") if maps is not None else None,
            "road_gain": float(faith["gain"]), "randomisation_passed": bool(s["randomisation_passed"])}


def _film_table(run_dir: str | Path, kind: str) -> pd.DataFrame | None:
    """One of a run's kept per-film check tables (reliance, maps, faithfulness), later films of the
    default map only."""
    df = page_table(Run(run_dir), kind)
    if df is None:
        return None
    if "map" in df.columns:
        df = df[df["map"] == DEFAULT_LABEL]
    if "early" in df.columns:
        df = df[~df["early"].astype(bool)]
    return df


def paired_differences(runs: dict[str, dict[int, str]], control: str, n_boot: int = 1000) -> pd.DataFrame:
    """Each configuration minus the control, film by film on the same films and seeds (the same
    data and split), for the measures in PAIRED: mean difference with a patient-bootstrap 95 % interval.

    Args:
        runs: configuration -> {seed: run folder} of the runs that finished.
        control: the configuration the others are compared with.
    """
    rows = []
    for config, by_seed in runs.items():
        if config == control:
            continue
        for kind, column, words in PAIRED:
            pairs = []
            for seed, run_dir in by_seed.items():
                mine, theirs = _film_table(run_dir, kind), _film_table(runs[control].get(seed, ""), kind) if seed in runs[control] else None
                if mine is not None and theirs is not None:
                    pairs.append(mine.merge(theirs[["image_id", column]], on="image_id", suffixes=("", "_control")).assign(seed=seed))
            both = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame()
            diff = (both[column] - both[f"{column}_control"]).to_numpy(float) if len(both) else np.zeros(0)
            ok = ~np.isnan(diff)
            ci = bootstrap_ci("mean", diff[ok], both["patient_id"].to_numpy()[ok], n_boot=n_boot) if ok.any() else None
            rows.append({"configuration": config, "measure": words, "difference": ci.estimate if ci else np.nan,
                         "ci_low": ci.low if ci else np.nan, "ci_high": ci.high if ci else np.nan, "films": int(ok.sum()),
                         "seeds": int(both["seed"].nunique()) if len(both) else 0})
    return pd.DataFrame(rows, columns=["configuration", "measure", "difference", "ci_low", "ci_high", "films", "seeds"])
