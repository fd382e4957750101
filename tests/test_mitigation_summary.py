"""The mitigation summary's measures on a hand-made results frame (one row per judged film and run)."""

import numpy as np
import pandas as pd
import pytest

from cmtlib.experiments.mitigation import parse_fold
from cmtlib.report.pages import mitigation as M


def _films(variant, seed, flag_holdout_covid, flag_large_neg):
    """4 held-out COVID-19 films (large), 4 held-out negatives (large), 4 thumbnails negative in test."""
    rows = []
    for i in range(4):
        rows.append(dict(image_id=f"h{i}", patient_id=f"p{i}", source="a", label_covid="1", set="holdout", orig_height=1000, orig_width=800,
                         p_covid=0.9 if i < flag_holdout_covid else 0.1, p_covid_degraded=0.9 if i < flag_holdout_covid else 0.1))
        rows.append(dict(image_id=f"n{i}", patient_id=f"q{i}", source="a", label_covid="0", set="holdout", orig_height=900, orig_width=900,
                         p_covid=0.9 if i < flag_large_neg else 0.05, p_covid_degraded=0.1))
        rows.append(dict(image_id=f"t{i}", patient_id=f"r{i}", source="b", label_covid="0", set="test", orig_height=64, orig_width=64,
                         p_covid=0.01, p_covid_degraded=np.nan))
    df = pd.DataFrame(rows)
    return df.assign(variant=variant, fold="f", seed=seed, threshold=0.5, train_s=10.0, lung_dice_test=0.8, pooled_auc_test=0.9,
                     audit_full=0.9, audit_lungs_blanked=0.5, audit_lungs_only=0.85)


def test_measures_count_films_at_each_runs_threshold_and_average_seeds():
    # seed 0 flags 2 of 4 held-out COVID films, seed 1 flags 4 of 4: mean 0.75. One large negative flagged in both.
    res = pd.concat([_films("base", 0, 2, 1), _films("base", 1, 4, 1)], ignore_index=True)
    sens = M._per_seed(M.MEASURES["held-out COVID-19 films flagged (sensitivity)"])(res)
    assert sens == pytest.approx(0.75)
    spec_large = M._per_seed(M.MEASURES["large films (short side >= 224 px), COVID-negative left unflagged"])(res)
    assert spec_large == pytest.approx(3 / 4)
    assert M._per_seed(M.MEASURES["thumbnails (<= 64 px), COVID-negative left unflagged"])(res) == 1.0
    table = M.summary_table(res, n_boot=50)
    assert table.loc["held-out COVID-19 films flagged (sensitivity)", "base"].startswith("0.75 [")
    assert table.loc["runs (folds x seeds)", "base"] == "1 x 2" and table.loc["lung Dice (internal test)", "base"].startswith("0.80")


def test_differences_are_paired_against_the_first_variant():
    res = pd.concat([_films("base", 0, 1, 2), _films("better", 0, 3, 0)], ignore_index=True)
    diff = M.difference_table(res, n_boot=50)
    assert list(diff.columns) == ["better - base"]
    assert diff.loc["held-out COVID-19 films flagged (sensitivity)", "better - base"].startswith("0.50 [")
    assert diff.loc["large films (short side >= 224 px), COVID-negative left unflagged", "better - base"].startswith("0.50 [")


def test_folds_parse_with_or_without_a_name():
    f = parse_fold("italy:location~italy;source=ieee8023", 1)
    assert f.name == "italy" and f.filters == ["location~italy", "source=ieee8023"]
    g = parse_fold("source=figure1", 2)
    assert g.name == "fold2" and g.filters == ["source=figure1"]


def test_the_mitigations_a_run_used_are_named_in_words():
    from cmtlib.configs import switches_on

    assert switches_on({"lung_focus": False, "effective_px": 0, "balance_sources": False}) == []
    words = switches_on({"lung_focus": True, "effective_px": 64, "balance_sources": "true", "balance_cap": 20,
                         "covid_loss_within": True})
    # In field order: the model's switches, then training's; each description lives beside its field.
    assert len(words) == 4 and "64 px" in words[0] and words[1].startswith("lung focus") and "cap 20" in words[3]
