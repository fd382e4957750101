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


def test_a_tiny_study_judges_each_run_reuses_it_and_marks_a_failed_one(tmp_path, monkeypatch):
    """`cmt mitigation` on tiny synthetic films (one run after another here): each run trained with
    the fold held out and judged by its own task; run again, the runs are reused; a variant that
    cannot train is marked on the page while the others are judged."""
    import json
    from pathlib import Path

    from cmtlib.experiments.study import StudyError
    from cmtlib.report.chain.mitigation import run_mitigation

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"base: {repo / 'params' / 'smoke.yaml'}\nsynth_n: 160\nsynth_size: 32\nimage_size: 32\nthreads: 1\n"
                     f"eval_batch_size: 32\nreports_dir: {tmp_path / 'reports'}\nrun_name: plain\n")
    (tmp_path / "broken.yaml").write_text("base: plain.yaml\nrun_name: broken\nmodel: no_such_model\n")
    with pytest.raises(StudyError, match=r"1 of 2 run\(s\) did not finish: broken/b-s0 \(failed: .*no_such_model"):
        run_mitigation([plain, tmp_path / "broken.yaml"], ["b:source=synth-b"], seeds=[0], out=tmp_path / "m", jobs=1)
    results = pd.read_csv(tmp_path / "m" / "results.csv")
    assert set(results["variant"]) == {"plain"} and set(results["fold"]) == {"b"} and set(results["seed"]) == {0}
    assert set(results["set"]) == {"test", "holdout"} and set(results.loc[results["set"] == "holdout", "source"]) == {"synth-b"}
    assert (tmp_path / "m" / "runs" / "plain" / "b-s0" / "judged.csv").is_file()
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert "broken/b-s0 failed" in summary["failed"] and list(summary["measures"]) == ["plain"]
    assert "runs that did not finish" in (tmp_path / "m" / "index.html").read_text()
    page = run_mitigation([plain], ["b:source=synth-b"], seeds=[0], out=tmp_path / "m", jobs=1)  # reused, judged again
    assert page.is_file() and pd.read_csv(tmp_path / "m" / "results.csv").equals(results[results["variant"] == "plain"].reset_index(drop=True))
