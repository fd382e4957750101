"""The explanation studies: the heat-map study's pooling and ranking, and the ablation's paired
comparison with the classification-only control, on hand-made tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cmtlib.experiments import heatmaps as H
from cmtlib.experiments.ablation import paired_differences
from cmtlib.explain.checks import DEFAULT_LABEL
from cmtlib.run import Run, write_csv


def tables(pointing_good: float, seed: int) -> dict[str, pd.DataFrame]:
    """One run's heat-map tables: 10 later films of 5 patients; map 'good' hits the lesion on a share
    `pointing_good` of them with 4x the uniform share, map 'bad' never; ROAD and randomisation made up."""
    ids = [f"f{i}" for i in range(10)]
    patients = [f"p{i // 2}" for i in range(10)]
    hits = (np.arange(10) < round(10 * pointing_good)).astype(float)
    maps = pd.concat([pd.DataFrame({"map": name, "image_id": ids, "patient_id": patients, "early": False, "pointing": hit,
                                    "share": 0.4 * ratio_scale, "uniform": 0.1, "ratio": 4.0 * ratio_scale, "iou": 0.2})
                      for name, hit, ratio_scale in (("good", hits, 1.0), ("bad", np.zeros(10), 0.25))], ignore_index=True)
    faith = pd.concat([pd.DataFrame({"map": name, "image_id": ids, "patient_id": patients, "road": road, "road_random": 0.0, "gain": road})
                       for name, road in (("good", 0.3 + 0.01 * np.arange(10)), ("bad", -0.05 + 0.01 * np.arange(10)))], ignore_index=True)
    rand = pd.DataFrame({"map": ["good", "good", "bad", "bad"], "step": [1, 2, 1, 2], "randomised": ["heads", "heads + block 1"] * 2,
                         "median_spearman": [0.5, 0.2, 0.9, 0.95], "mean_spearman": 0.0, "n": 10})
    rel = pd.DataFrame({"image_id": ids, "patient_id": patients, "early": False, "offset_days": 8, "p_film": 0.9, "p_twin": 0.1 + 0.01 * seed,
                        "drop": 0.8 - 0.01 * seed})
    return {"reliance": rel, "maps": maps, "faithfulness": faith, "randomisation": rand}


def test_seeds_are_pooled_and_the_maps_ranked_by_the_targets_they_clear():
    pooled = H.pool({"s0": tables(0.8, 0), "s1": tables(0.6, 1)}, n_boot=100)
    ranking = H.choose(pooled)
    good = ranking.set_index("map").loc["good"]
    assert good["pointing"] == pytest.approx(0.7) and good["ratio"] == pytest.approx(4.0)  # (8 + 6) hits of 20 films
    assert set(good["clears"]) == {"pointing", "ratio", "faithful", "randomisation"} and good["all_targets"]
    bad = ranking.set_index("map").loc["bad"]
    assert bad["clears"] == [] and not bad["all_targets"] and ranking["map"].iloc[0] == "good"
    rel = pooled["reliance"].set_index("group").loc["later"]
    assert rel["median"] == pytest.approx(0.795) and rel["n"] == 20


def _kept(folder, reliance_drop: float, pointing: np.ndarray, gain: float) -> str:
    """A run folder holding page 7's kept tables (cmtlib.explain.checks) for 6 later films."""
    run = Run(folder)
    run.explanations_dir.mkdir(parents=True)
    ids, patients = [f"f{i}" for i in range(6)], [f"p{i // 2}" for i in range(6)]
    write_csv(pd.DataFrame({"image_id": ids, "patient_id": patients, "early": False, "drop": reliance_drop}),
              run.explanations_dir / "page_reliance.csv")
    write_csv(pd.DataFrame({"map": DEFAULT_LABEL, "image_id": ids, "patient_id": patients, "early": False, "pointing": pointing}),
              run.explanations_dir / "page_maps.csv")
    write_csv(pd.DataFrame({"map": DEFAULT_LABEL, "image_id": ids, "patient_id": patients, "gain": gain}),
              run.explanations_dir / "page_faithfulness.csv")
    return str(run.path)


def test_each_configuration_is_compared_with_the_control_film_by_film(tmp_path):
    hit, miss = np.ones(6), np.r_[np.ones(2), np.zeros(4)]
    runs = {"all": {s: _kept(tmp_path / f"all-s{s}", 0.9, hit, 0.3) for s in (0, 1)},
            "control": {s: _kept(tmp_path / f"control-s{s}", 0.6, miss, 0.1) for s in (0, 1)}}
    table = paired_differences(runs, "control", n_boot=100).set_index("measure")
    assert list(table["configuration"].unique()) == ["all"] and (table["films"] == 12).all() and (table["seeds"] == 2).all()
    def row(word):
        return table[table.index.str.contains(word)].iloc[0]

    assert row("lesion's share")["difference"] == pytest.approx(0.3) and row("hottest point")["difference"] == pytest.approx(4 / 6)
    assert row("faithfulness")["difference"] == pytest.approx(0.2) and row("faithfulness")["ci_low"] == pytest.approx(0.2)
