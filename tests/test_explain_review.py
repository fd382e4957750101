"""Misclassification review on a hand-built predictions table with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cmtlib.explain import review as R

# id, label_covid, label_healthy, label_other, offset_days, view, p_covid, p_healthy (threshold 0.5)
ROWS = [
    ("c1", 1, 0, 0, "1", "AP", 0.2, 0.8),   # COVID missed + called healthy
    ("c2", 1, 0, 0, "2", "AP", 0.3, 0.7),   # COVID missed + called healthy
    ("c3", 1, 0, 0, "3", "PA", 0.9, 0.6),   # called healthy only
    ("c4", 1, 0, 0, "10", "AP", 0.1, 0.9),  # COVID missed + called healthy
    ("c5", 1, 0, 0, "5", "PA", 0.8, 0.2),   # right
    ("c6", 1, 0, 0, "", "AP", 0.9, 0.1),    # right
    ("h1", 0, 1, 0, "", "PA", 0.6, 0.8),    # false COVID alarm
    ("h2", 0, 1, 0, "", "PA", 0.1, 0.3),    # healthy called unhealthy
    ("o1", 0, 0, 1, "", "AP", 0.2, 0.1),    # right
    ("o2", 0, 0, 1, "", "", 0.1, 0.2),      # right
]


@pytest.fixture()
def predictions():
    df = pd.DataFrame(ROWS, columns=["image_id", "label_covid", "label_healthy", "label_other", "offset_days", "view", "p_covid", "p_healthy"])
    df["source"], df["sex"], df["age"], df["finding"], df["p_other"], df["split"] = "ieee8023", "F", 60, "x", 0.1, "test"
    df["pred_covid"] = (df["p_covid"] >= 0.5).astype(int)
    val = df.iloc[[0]].assign(image_id="v1", split="val")  # a validation row that must not be counted
    return pd.concat([df, val], ignore_index=True)


def test_day_bins():
    assert R.day_bins(["0", "3", "3.5", 7, 8, "14", "15", "", -2, np.nan]).tolist() == [
        "0-3", "0-3", "4-7", "4-7", "8-14", "8-14", ">14", "unknown", "<0", "unknown"]


def test_misclassified_rows_and_errors(predictions):
    m = R.misclassified(predictions)
    assert sorted(m["image_id"]) == ["c1", "c2", "c3", "c4", "h1", "h2"]
    err = dict(zip(m["image_id"], m["errors"]))
    assert err["c1"] == "COVID-19 missed; unhealthy called healthy"
    assert err["c3"] == "unhealthy called healthy"
    assert err["h1"] == "false COVID-19 alarm" and err["h2"] == "healthy called unhealthy"
    assert {"source", "view", "offset_days", "day_bin", "sex", "age", "finding", "p_covid", "p_healthy"} <= set(m.columns)
    assert "path" not in m.columns
    # a threshold passed explicitly overrides pred_covid: at 0.95 every COVID film is missed
    assert (R.misclassified(predictions, threshold=0.95)["errors"].str.contains("COVID-19 missed")).sum() == 6


def test_error_rates_by_day_and_view(predictions):
    by_day = R.error_rates(predictions, "offset_days").set_index("group")
    assert list(by_day.index) == ["0-3", "4-7", "8-14", ">14", "unknown"]
    assert by_day.loc["0-3", ["errors", "n"]].tolist() == [3, 3]
    assert by_day.loc["4-7", ["errors", "n"]].tolist() == [0, 1]
    assert by_day.loc["8-14", ["errors", "n"]].tolist() == [1, 1]
    assert by_day.loc[">14", "n"] == 0 and np.isnan(by_day.loc[">14", "error_rate"])
    assert by_day.loc["unknown", ["errors", "n"]].tolist() == [2, 5]
    by_view = R.error_rates(predictions, "view").set_index("group")
    assert list(by_view.index) == ["AP", "PA", "unknown"]
    assert by_view.loc["AP", ["errors", "n"]].tolist() == [3, 5]
    assert by_view.loc["PA", "error_rate"] == pytest.approx(3 / 4)
    covid_only = R.error_rates(predictions, "view", task="covid").set_index("group")
    assert covid_only.loc["AP", "errors"] == 3 and covid_only.loc["PA", "errors"] == 1


def test_covid_called_healthy_and_computed_summary(predictions):
    out = R.review(predictions)
    cases = out.covid_as_healthy
    assert sorted(cases["image_id"]) == ["c1", "c2", "c3", "c4"]
    assert cases["also_missed_covid"].sum() == 3
    s = out.summary
    assert s.startswith("4 COVID-19 films called healthy.")
    assert "3 of 4 were taken in the first 3 days after admission (among all COVID-19 test films: 3 of 5, 60 %)" in s
    assert "3 of 4 are AP views (among all COVID-19 test films: 4 of 6, 67 %)" in s
    assert "All 4 come from ieee8023" in s
    assert "3 of 4 were also scored below the COVID-19 threshold" in s
    assert "Median age 60" in s and "All 4 are female" in s
    no_decision = R.review(predictions.drop(columns="pred_covid"))  # no COVID decision: nothing said about it
    assert "threshold" not in no_decision.summary and no_decision.covid_as_healthy["also_missed_covid"].isna().all()


def test_review_reads_predictions_csv(predictions, tmp_path):
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    df = pd.read_csv(tmp_path / "predictions.csv", dtype=str, keep_default_na=False)  # every cell a string, '' = unknown
    out = R.review(df)
    assert len(out.misclassified) == 6 and out.by_day.set_index("group").loc["0-3", "errors"] == 3


def test_summary_too_few_and_none(predictions):
    two = R.covid_called_healthy(predictions).iloc[:2]
    text = R.summarise_cases(two)
    assert text.startswith("Only 2 COVID-19 films called healthy") and "too few" in text
    assert R.summarise_cases(two.iloc[:0]) == "No COVID-19 films called healthy."
    no_days = R.covid_called_healthy(predictions).assign(offset_days="")
    assert "None has a day since admission recorded." in R.summarise_cases(no_days)


def test_split_filter_errors(predictions):
    with pytest.raises(ValueError, match="split=None"):
        R.misclassified(predictions, split="holdout")
    assert len(R.misclassified(predictions, split=None)) == 7  # the val copy of c1 too


def test_case_titles_use_image_id_and_metadata(predictions):
    titles = R.case_titles(R.covid_called_healthy(predictions))
    assert titles[0].split("\n")[0] in {"c1", "c2", "c3", "c4"} and "day 0-3" in "".join(titles)
