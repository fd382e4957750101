"""The External validation page's tables and sentences, on hand-made predictions."""

import pandas as pd

from cmtlib.report.pages import external as X


def _preds(n_pos, n_neg, p_pos, p_neg, source="s"):
    rows = [{"image_id": f"{source}:p{i}", "patient_id": f"{source}:{i}", "source": source, "label_covid": "1", "p_covid": p_pos} for i in range(n_pos)]
    rows += [{"image_id": f"{source}:n{i}", "patient_id": f"{source}:x{i}", "source": source, "label_covid": "0", "p_covid": p_neg} for i in range(n_neg)]
    return pd.DataFrame(rows)


def _metrics(auc, sens, spec):
    return {"covid": {"auc": auc, "auc_ci_low": auc - 0.1, "auc_ci_high": auc + 0.05, "sensitivity": sens, "sensitivity_ci_low": sens - 0.1,
                      "sensitivity_ci_high": sens, "specificity": spec, "specificity_ci_low": spec - 0.2, "specificity_ci_high": spec,
                      "threshold": 0.5},
            "calibration": {"ece": 0.2}}


def test_verdicts_count_flagged_films_per_collection_at_the_frozen_threshold():
    both = pd.concat([_preds(3, 2, 0.9, 0.2, "alpha"), _preds(4, 0, 0.3, 0.0, "beta")], ignore_index=True)
    sets = [X.ExternalSet("holdout", both, _metrics(0.8, 0.43, 1.0))]
    lines = X.verdicts(sets, 0.5)
    assert lines[0].startswith("Films held out of this run's own data: 3 of 7 COVID-19 films are flagged and 0 of 2")
    assert any("(alpha): 3 of 3 COVID-19 films are flagged and 0 of 2 COVID-negative" in x for x in lines)
    assert any("(beta): 0 of 4 COVID-19 films are flagged at the threshold fixed in development (0.5)" in x for x in lines)
    assert X.verdicts(sets, None) == ["The run has no operating threshold, so no film is called COVID-19."]


def test_summary_puts_the_internal_test_first_then_each_set_and_its_collections():
    ext = pd.concat([_preds(2, 2, 0.9, 0.1, "alpha"), _preds(1, 1, 0.6, 0.7, "beta")], ignore_index=True)
    m = _metrics(0.75, 0.66, 0.5)
    m["by_source"] = {"alpha": _metrics(1.0, 1.0, 1.0), "beta": _metrics(0.0, 1.0, 0.0)}
    table = X.summary_table([X.ExternalSet("mine", ext, m)], _metrics(0.97, 0.9, 0.95), _preds(5, 5, 0.9, 0.1))
    assert table["films from"].tolist() == ["internal test films (same collections as training)", "external set mine",
                                             "  external set mine: alpha", "  external set mine: beta"]
    row = table.set_index("films from").loc["external set mine"]
    assert (row["films"], row["COVID-19"], row["COVID-negative"]) == (6, 3, 3)
    assert row["AUC"] == "0.750 (95 % CI 0.650 to 0.800)" and row["specificity at the threshold"].startswith("0.500")


def test_load_external_reads_the_run_folders_holdout_first(tmp_path):
    from cmtlib.run import Run

    run = Run(tmp_path)
    for name in ("zeta", "holdout"):
        run.external(name).write(predictions=_preds(1, 1, 0.9, 0.1), metrics=_metrics(1.0, 1.0, 1.0))
    (tmp_path / "external" / "unfinished").mkdir()  # no metrics.json: not an evaluation
    sets = X.load_external(run)
    assert [s.name for s in sets] == ["holdout", "zeta"] and sets[1].label == "external set zeta"
    assert [r["set"] for r in X.index_rows(run)] == ["films held out of this run's own data", "external set zeta"]
