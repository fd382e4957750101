"""The result pages (notebooks 03-08): their glue in cmtlib.report.pages / explain_pages on hand-made
values, and (slow) the whole chain on params/smoke.yaml with each page's sections checked."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cmtlib.report.pages import common as CO
from cmtlib.report.pages import evaluation as EV
from cmtlib.report.pages import explain as E
from cmtlib.report.pages import review as RV
from cmtlib.errors import RunFolderError
from cmtlib.evaluate import evaluate_run
from cmtlib.run import Run, RunInfo
from cmtlib.runtime import set_threads

REPO = Path(__file__).resolve().parents[1]


def _metrics(n_negative=177):
    return {"covid": {"auc": 0.93, "auc_ci_low": 0.89, "auc_ci_high": 0.97, "sens_at_spec99": None, "threshold": 0.83},
            "covid_as_unhealthy": 0.96, "covid_as_unhealthy_ci_low": 0.92, "covid_as_unhealthy_ci_high": 1.0,
            "lung": {"dice": 0.95, "dice_ci_low": 0.949, "dice_ci_high": 0.955},
            "counts": {"n_images": 236, "n_patients": 177, "n_covid": 59, "n_negative": n_negative},
            "ci": {"n_boot": 1000}}


# ---- page 3 ------------------------------------------------------------------------------------

def test_metrics_table_has_plain_names_values_and_intervals():
    t = EV.metrics_table(_metrics()).set_index("measure")
    auc = t.loc["COVID-19 detection: area under the ROC curve"]
    assert auc["value"] == "0.930" and auc["95 % confidence interval"] == "0.890 to 0.970"
    sens = t.loc["COVID-19 detection: sensitivity at 99 % specificity (threshold chosen on validation)"]
    assert sens["value"].startswith("not available") and sens["95 % confidence interval"] == ""
    assert t.loc["COVID-19 films called unhealthy", "value"] == "0.960"  # a top-level key
    assert t.loc["Lung outline: Dice overlap", "95 % confidence interval"] == "0.949 to 0.955"
    assert len(t) == len(EV.METRICS) and not any("_" in m for m in t.index)
    assert EV.metrics_table(None)["value"].str.startswith("not available").all()


def test_threshold_sentences_and_the_fewer_than_100_negatives_note():
    text = EV.threshold_text({"covid_threshold": 0.83, "n_negative": 150, "threshold_rule": "specificity:0.95",
                              "val_specificity": 0.95, "val_sensitivity": 0.7, "spec99_threshold": 0.91})
    assert "0.83" in text and "5 % of the COVID-negative validation films" in text and "caught 70%" in text
    assert "held fixed" in text and "uses a threshold of its own (0.91)" in text
    assert "No COVID-19 threshold" in EV.threshold_text({"covid_threshold": None})
    assert EV.negatives_warnings(_metrics(), {"n_negative": 150}) == []
    few = EV.negatives_warnings(_metrics(n_negative=40), {"n_negative": 60})
    assert len(few) == 2 and all("the 1 % false-alarm rate cannot be estimated" in w for w in few)
    assert "validation split has only 60" in few[0] and "test split has only 40" in few[1]
    assert "236 test films from 177 patients: 59 COVID-19" in EV.counts_text(_metrics())


def test_notes_in_plain_words_and_bullets_escaped():
    notes = EV.plain_notes(["view AP: sens_at_spec99_oracle puts it above", "CIs: covid.auc 950 (too few: CI null)",
                           "previous various dice"])
    assert notes[0] == "view AP: sensitivity at 99 % specificity (threshold chosen on the test films) puts it above"
    assert notes[1] == "confidence intervals: COVID-19 AUC 950 (too few: no confidence interval)"
    assert notes[2] == "previous various Dice"  # whole words only
    assert CO.bullets_html(["a < b"]) == "<ul><li>a &lt; b</li></ul>"
    assert "Nothing." in CO.bullets_html([], empty="Nothing.")


def test_group_and_confusion_tables_use_plain_columns():
    m = {"by_view": {"AP": {"counts": {"n_images": 10, "n_covid": 4}, "covid": {"auc": 0.9, "auc_ci_low": 0.8, "auc_ci_high": 1.0}}}}
    t = EV.group_metrics_table(m, "view")
    assert list(t.columns[:3]) == ["view", "films", "COVID-19 films"] and t.loc[0, "COVID-19 AUC"] == "0.900 (0.800-1.000)"
    assert EV.group_metrics_table(m, "source").empty
    c = EV.confusion_table(pd.DataFrame({"view": ["AP"], "task": ["COVID-19"], "n": [3], "tn": [1], "fp": [0], "fn": [1], "tp": [1]}))
    assert list(c.columns) == ["view", "decision", "films", "true negatives", "false positives", "false negatives", "true positives"]


# ---- every page --------------------------------------------------------------------------------

def test_context_says_where_weights_and_data_come_from():
    synthetic = SimpleNamespace(data=SimpleNamespace(data_kind="synthetic"))
    real = SimpleNamespace(data=SimpleNamespace(data_kind="import"))
    assert "Synthetic chest X-ray phantoms" in CO.provenance_line(synthetic)
    line = CO.provenance_line(real, pd.DataFrame({"source": ["ieee8023", "nih", "ieee8023"]}))
    assert "Cohen" in line and "ChestX-ray14" in line and line.count("ieee8023") == 1
    run = SimpleNamespace(info=RunInfo(encoder_weights_source="random init (encoder_weights=none)"), predictions=None)
    rows = dict(CO.context_rows(synthetic, run))
    assert "random weights" in rows["network's starting weights"] and "phantoms" in rows["data"]


def test_cache_dir_explains_a_missing_cache(tmp_path):
    Run(tmp_path).write_info(RunInfo(data_cache=str(tmp_path / "gone")))
    with pytest.raises(FileNotFoundError, match="not on this machine"):
        Run(tmp_path).cache_dir()


def test_a_run_folder_of_another_format_is_refused_with_the_fix(tmp_path):
    """Run folders of earlier versions are not read through legacy paths: one clear error says to retrain."""
    (tmp_path / "run.json").write_text(json.dumps({"status": "finished", "covid_threshold": 0.5}))
    with pytest.raises(RunFolderError, match="earlier cmtlib \\(run format 1; this one reads 2\\): retrain it"):
        Run.open(tmp_path)
    with pytest.raises(RunFolderError, match="retrain it"):
        evaluate_run(tmp_path)


def test_set_threads_refuses_negative():
    set_threads(0)  # leaves the defaults
    with pytest.raises(ValueError, match=">= 0"):
        set_threads(-1)


# ---- pages 5 and 6 -----------------------------------------------------------------------------

def _predictions():
    return pd.DataFrame({
        "image_id": ["h1", "h2", "c1", "c2", "c3", "o1"], "source": "s", "view": ["PA", "AP", "AP", "AP", "PA", "PA"],
        "offset_days": [np.nan, np.nan, 1, 2, 10, 5], "sex": ["F", "M", "M", "F", "F", "M"], "age": [50, 60, 70.0, 40, 30, 20],
        "finding": ["No Finding", "No Finding", "COVID-19", "COVID-19", "COVID-19", "see /data/x/img.png"],
        "label_healthy": [1, 1, 0, 0, 0, 0], "label_covid": [0, 0, 1, 1, 1, 0], "label_other": [0, 0, 0, 0, 0, 1],
        "p_covid": [0.1, 0.2, 0.05, 0.9, 0.3, 0.8], "p_healthy": [0.9, 0.3, 0.8, 0.1, 0.7, 0.2], "p_other": 0.1,
        "pred_covid": [0, 0, 0, 1, 0, 1], "lung_dice": [0.9, 0.8, 0.95, np.nan, 0.7, 0.85],
        "disease_dice": [np.nan, np.nan, 0.5, 0.7, 0.1, np.nan], "split": "test", "path": "/secret/file.png"})


def test_dice_summary_per_class_without_empty_rows():
    t = RV.dice_summary(_predictions()).set_index(["outline", "class"])
    assert t.loc[("lungs", "healthy"), "films with a reference"] == 2
    assert t.loc[("lungs", "healthy"), "median Dice"] == pytest.approx(0.85)
    assert t.loc[("disease region", "COVID-19"), "median Dice"] == pytest.approx(0.5)
    assert t.loc[("disease region", "COVID-19"), "lowest Dice"] == pytest.approx(0.1)
    assert ("disease region", "healthy") not in t.index  # no reference: left out, not a row of dashes


def test_review_tables_are_plain_and_name_images_by_id_only():
    from cmtlib.explain.review import review

    r = review(_predictions())
    wrong = RV.misclassified_table(r.misclassified)
    assert list(wrong.columns[:2]) == ["image", "what went wrong"] and "path" not in wrong.columns
    assert set(wrong["image"]) == {"c1", "c3", "o1", "h2"}
    assert not wrong.astype(str).apply(lambda c: c.str.contains("/data|/secret|img.png")).any().any()
    assert wrong.set_index("image").loc["c1", "day since admission"] == "1"
    healthy = RV.called_healthy_table(r.covid_as_healthy)
    assert list(healthy["image"]) == ["c1", "c3"] and set(healthy["also below the COVID-19 threshold"]) == {"yes"}
    assert "finding" not in healthy.columns
    rates = RV.error_rate_table(r.by_view, "view")
    assert list(rates.columns) == ["view", "films", "wrong", "error rate"] and rates["error rate"].str.endswith("%").all()
    assert RV.review_table(pd.DataFrame({"label_covid": [1.0, 0.0, np.nan]}))["COVID-19 (truth)"].tolist() == ["yes", "no", "unknown"]


def test_cases_table_renames_and_handles_no_cases():
    cases = pd.DataFrame({"class": ["healthy"], "rank": ["best"], "image_id": ["h1"], "dice": [0.9], "cache_row": [3]})
    assert list(RV.cases_table(cases).columns) == ["class", "case", "image", "Dice"]
    assert RV.cases_table(pd.DataFrame()).empty


# ---- pages 4, 7 and 8 --------------------------------------------------------------------------

def test_cam_films_are_reproducible_covid_with_masks_first():
    index = pd.DataFrame({"label_covid": ["1"] * 6 + ["0"] * 6, "label_healthy": ["0"] * 6 + ["1"] * 3 + ["0"] * 3,
                          "label_other": ["0"] * 9 + ["1"] * 3})
    masked = np.array([True, False, True, True, False, True] + [False] * 6)
    pos = E.choose_cam_images(index, masked, 8, seed=0)
    assert len(pos) == 8 and len(set(pos)) == 8
    assert set(pos[:4]) <= {0, 2, 3, 5}  # half (rounded up) COVID-19 with a disease region
    rest = list(pos[4:])
    assert rest[0] in range(6, 9) and rest[1] in range(9, 12)  # then healthy, other disease in turn
    assert (E.choose_cam_images(index, masked, 8, seed=0) == pos).all()
    assert len(E.choose_cam_images(index, masked, 50)) == 12 and len(E.choose_cam_images(index, masked, 0)) == 0
    assert set(E.choose_cam_images(index, np.zeros(12, bool), 3)) <= set(range(12))


def test_cam_films_table_lists_the_rows_by_image_id():
    from cmtlib.explain.overlays import ImageSet

    disease = np.zeros((3, 4, 4), bool)
    disease[0, 1, 1] = True
    index = pd.DataFrame({"image_id": ["c1", "h1", "o1"], "label_covid": ["1", "0", "0"], "label_healthy": ["0", "1", ""],
                          "label_other": ["0", "0", ""]})
    films = ImageSet(np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 4), bool), disease, np.ones(3, bool),
                     np.array([True, True, False]), index)
    t = E.cam_films_table(films, pd.DataFrame({"image_id": ["o1", "c1"], "p_covid": [0.2, 0.9]}))
    assert t["image"].tolist() == ["c1", "h1", "o1"] and t["class"].tolist() == ["COVID-19", "healthy", "unknown"]
    assert t["reference disease region"].tolist() == ["yes", "none", "unknown"]
    assert t["COVID-19 probability"].tolist()[0] == 0.9 and math.isnan(t["COVID-19 probability"].tolist()[1])
    assert "COVID-19 probability" not in E.cam_films_table(films).columns


def test_class_frame_relabels_by_image_id():
    preds = pd.DataFrame({"image_id": ["a", "b", "c"], "label_covid": [1, 0, 0], "label_healthy": [0, 1, 0],
                          "label_other": [0, 0, 1], "pred_covid": [1, 0, 0], "p_healthy": [0.1, 0.9, 0.2], "p_other": [0.1, 0.1, 0.9]})
    frame = pd.DataFrame({"image_id": ["c", "a", "b"], "true": "x", "predicted": "y", "tsne_x": [0.0, 1, 2], "tsne_y": 0.0})
    out = E.class_frame(frame, preds)
    assert out["true"].tolist() == ["other disease", "COVID-19", "healthy"] and out["predicted"].tolist() == ["other disease", "COVID-19", "healthy"]
    assert out["tsne_x"].tolist() == [0.0, 1, 2]


def _per_image():
    return pd.DataFrame({"method": ["Grad-CAM", "Grad-CAM", "EigenCAM", "EigenCAM"], "image_id": ["a", "b", "a", "b"],
                         "mass_in_lung": [0.5, 0.7, 0.1, np.nan], "pointing_game": [1.0, np.nan, 0.0, np.nan],
                         "iou_disease": [0.2, np.nan, 0.0, np.nan], "lung_area": [0.3, 0.2, 0.3, 0.2]})


def test_agreement_table_and_the_uniform_reference():
    t = E.agreement_table(_per_image()).set_index("map")
    assert list(t.columns) == list(E.MEASURE_NAMES.values())
    assert t.loc["Grad-CAM", "share of the map inside the lungs"] == "0.60 ± 0.14 (n=2)"
    assert t.loc["EigenCAM", "hottest point inside the disease region"] == "0.00 (n=1)"
    assert E.uniform_share(_per_image()) == pytest.approx(0.25) and "25 %" in E.uniform_text(_per_image())
    assert "cannot be judged" in E.uniform_text(_per_image().drop(columns="lung_area"))
    assert E.named_maps({"gradcam++": 1, "model disease map": 2}) == {"Grad-CAM++": 1, "CMTNet's disease map": 2}
    assert E.cost_table({"Grad-CAM": 0.12345}).iloc[0, 1] == 0.123


def test_agreement_handed_from_page_7_to_page_8_only_for_the_same_run(tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert E.load_agreement(tmp_path / "rep", run_a) is None
    E.save_agreement(tmp_path / "rep", run_a, _per_image())
    back = E.load_agreement(tmp_path / "rep", run_a)
    pd.testing.assert_frame_equal(back, _per_image())
    assert E.load_agreement(tmp_path / "rep", run_b) is None  # another run's table is not used


def test_page_8_leads_with_the_network_verdict_and_keeps_the_twins_apart():
    from test_audit_checks import _checks

    from cmtlib.explain.verdicts import data_verdict, network_verdict
    from cmtlib.report.pages import audit as A

    checks = _checks() | {"n_test": 100, "n_train": 300, "seconds": 12.0}
    audit = {"checks": checks, "network_verdict": network_verdict(checks), "data_verdict": data_verdict(checks),
             "twins": {"border": {"mean_change": 0.31, "ci_low": 0.25, "ci_high": 0.37, "n": 40},
                       "view": {"mean_change": 0.01, "ci_low": -0.01, "ci_high": 0.03, "n": 50}}}
    text, kind = A.network_notice(audit)
    assert kind == "warning" and text.startswith("The network's COVID-19 score follows the view (AP or PA), by +0.25")
    assert A.data_notice(audit)[0].startswith("What the films carry: These films carry cues")
    net = A.network_table(audit).set_index("cue")
    assert net.loc["The film's frame (its edges)", "the score follows it"] == "yes"
    assert net.loc["The film's frame (its edges)", "change of the COVID-19 probability (95 % CI)"] == "+0.30 (+0.25 to +0.35)"
    assert net.loc["The source (hospital or scanner)", "the score follows it"] == "no"
    assert net.loc["The source (hospital or scanner)", "strength of its evidence"] == "moderate"
    assert net.loc["The film's frame (its edges)", "strength of its evidence"] == "strong" and "placebo" in A.strength_text()
    data = A.data_table(audit).set_index("cue")
    assert data.loc["The view (AP or PA)", "predicts the label"] == "yes" and data.loc["The view (AP or PA)", "check"] == "recorded metadata"
    twins = A.twins_table(audit).set_index("planted cue")
    # The view is named but its twins show it ignored: the table says the verdict disagrees with them.
    assert twins.loc["border", "what the twins show"] == "followed" and twins.loc["border", "verdict agrees with the twins"] == "yes"
    assert twins.loc["view", "what the twins show"] == "ignored" and twins.loc["view", "verdict agrees with the twins"] == "no"
    assert "kept apart from it" in A.twins_text(audit) and "no twins" in A.twins_text({"twins": None})
    assert A.twins_table({"twins": None, "network_verdict": audit["network_verdict"]}).empty
    assert A.blanking_table(audit)["COVID-19 AUC"].tolist() == [0.95, 0.5, 0.9]
    assert A.floors_table(audit)["COVID-19 AUC (95 % CI)"].iloc[0] == "0.95" and len(A.floors_table(audit)) == 6
    assert A.metadata_table(audit).set_index("cue").loc["The view (AP or PA)", "AUC of the label from the cue"] == "0.90 (0.85 to 0.94)"
    assert A.heat_map_table(audit)["region"].tolist() == ["outside the lungs", "frame", "corners"]
    assert "100 test films" in A.settings_text(audit)
    assert "Calibration (" in A.calibration_text() or "not been calibrated" in A.calibration_text()


# ---- the chain on the smoke params -------------------------------------------------------------

SECTIONS = {
    "03_evaluation": ["About this run", "Results on the test films", "The COVID-19 threshold", "ROC curve",
                      "Right and wrong decisions", "By view", "By source", "Calibration", "Notes from the evaluation"],
    "04_embeddings": ["About this run", "COVID-19 or not (the paper's Figure 10)", "Three classes", "How the maps were made"],
    "05_overlays": ["About this run", "How well the outlines match", "Lung outlines: best, median and worst film of each class",
                    "Disease regions: best, median and worst film of each class"],
    "06_misclassification": ["About this run", "Error rate by day since admission and by view",
                             "COVID-19 films called healthy (the paper's Figure 9)", "Every misclassified test film"],
    "07_cam": ["About this run", "Heat maps beside CMTNet's disease map", "How well the heat maps agree with the outlines",
               "What each map costs", "Baselines' Grad-CAMs beside CMTNet's"],
    "08_shortcut_audit": ["Verdict: what the network's score follows", "About this run", "The two verdicts at a glance",
                          "1. The network verdict, cue by cue", "2. The data verdict, cue by cue", "3. Checked against the twins",
                          "4. The evidence in detail"],
}


@pytest.mark.slow
def test_smoke_chain_renders_every_result_page_with_its_sections(tmp_path, monkeypatch):
    """The whole chain (train one epoch on 300 phantoms at 64 px, then every page): minutes on 2 cores."""
    from cmtlib.report.chain.runner import run_report

    monkeypatch.chdir(tmp_path)  # the smoke data and run land here, not in the repository
    index = run_report(REPO / "params" / "smoke.yaml", out=tmp_path / "report")
    report = index.parent
    timings = json.loads((report / "timings.json").read_text())["notebooks"]
    assert {k: v["status"] for k, v in timings.items()} == {k: "ok" for k in timings}
    for name, sections in SECTIONS.items():
        page = (report / f"{name}.html").read_text()
        headings = [html.unescape(h) for h in re.findall(r"<h2[^>]*>(.*?)</h2>", page)]
        assert [h for h in headings if h in sections] == sections, name
        assert "Not implemented yet" not in page and "Traceback" not in page, name
        assert "phantoms" in page and "random weights" in page, name  # data and weights said on every page
        assert str(tmp_path) not in page and ".png" not in page.replace("image/png", ""), name  # no file paths or names
        if name in ("05_overlays", "06_misclassification", "07_cam"):
            assert re.search(r"synth:P\d{4}", page), name  # films named by image_id
    assert "threshold" in (report / "03_evaluation.html").read_text()
    assert (report / "cam_agreement.csv").is_file()
    audit_page = (report / "08_shortcut_audit.html").read_text()
    assert "What the films carry" in audit_page and ("Calibration (" in audit_page or "not been calibrated" in audit_page)


def test_gradcam_columns_put_cmtnet_first_and_name_each_baseline():
    import numpy as np

    from cmtlib.report.pages.explain import gradcam_columns

    ours, other = np.zeros((2, 4, 4)), np.ones((2, 4, 4))
    cols = gradcam_columns({"Grad-CAM": ours, "ScoreCAM": other}, {"ResNet18 + FC": other})
    assert list(cols) == ["CMTNet Grad-CAM", "ResNet18 + FC Grad-CAM"]
    assert cols["CMTNet Grad-CAM"] is ours


def test_data_page_quarantine_counts_only_the_sources_of_its_own_data(tmp_path):
    """Per-collection imports beside a joined manifest: their quarantines count, but not one of a
    collection this data set does not hold (another import that happens to share the folder)."""
    from cmtlib.data.cache import build_cache
    from cmtlib.data.manifest import write_quarantine
    from cmtlib.data.split import split_manifest
    from cmtlib.data.synth import make_synthetic
    from cmtlib.report.pages.data import load_data

    manifest = make_synthetic(tmp_path / "synth", n=24, size=32, seed=0, workers=1)
    split = manifest.with_name("split.csv")
    split_manifest(manifest, split, val=0.2, test=0.2, seed=0, find_duplicates=False)
    write_quarantine([{"image_id": "synth:broken", "path": "/x/broken.png", "reason": "truncated"}],
                     manifest.with_name("mine.quarantine.csv"))
    write_quarantine([{"image_id": "chexpert:patient1_study1", "path": "/x/c.jpg", "reason": "file not found"}],
                     manifest.with_name("chexpert.quarantine.csv"))
    build_cache(split, size=32, out=tmp_path / "cache", workers=1)
    data = load_data(tmp_path / "cache")
    assert data.quarantine["image_id"].tolist() == ["synth:broken"]


def test_data_page_shows_fields_left_unknown_and_collections_not_imported(tmp_path):
    """The import's notes and its list of collections not imported reach the data page and the index facts,
    without file paths."""
    from cmtlib.data.cache import build_cache
    from cmtlib.data.manifest import NOT_IMPORTED_COLUMNS, NOTES_COLUMNS, not_imported_path, notes_path, write_listing
    from cmtlib.data.split import split_manifest
    from cmtlib.data.synth import make_synthetic
    from cmtlib.report.pages import data as data_page
    from cmtlib.report.pages import tables

    manifest = make_synthetic(tmp_path / "synth", n=24, size=32, seed=0, workers=1)
    split = manifest.with_name("split.csv")
    split_manifest(manifest, split, val=0.2, test=0.2, seed=0, find_duplicates=False)
    write_listing(pd.DataFrame([{"image_id": "synth:3", "column": "age", "value": "250", "reason": "outside 0-120 years"},
                                {"image_id": "synth:4", "column": "path", "value": "/secret/x.png", "reason": "leaves the folder"}]),
                  notes_path(split), NOTES_COLUMNS)
    write_listing(pd.DataFrame([{"collection": "covidx", "folder": "/data/figure1", "reason": "metadata.csv is cut off in /data/figure1/m.csv"}]),
                  not_imported_path(split), NOT_IMPORTED_COLUMNS)
    build_cache(split, size=32, out=tmp_path / "cache", workers=1)
    data = data_page.load_data(tmp_path / "cache")
    assert len(data.notes) == 2 and data.not_imported["collection"].tolist() == ["covidx"]
    notes = tables.notes_table(data.notes)
    assert notes["value found"].tolist() == ["250", "(a file name: not shown)"]
    shown = tables.not_imported_table(data.not_imported)
    assert shown.columns.tolist() == ["collection", "reason"] and "/data/figure1" not in shown.to_string()
    facts = data_page.data_facts(data.index, data.quarantine, data.manifest_hash, data.notes, data.not_imported)
    assert facts["notes_count"] == 2 and facts["not_imported"] == ["covidx"]
    caveats = data_page.data_caveats(data.index, 0, facts["notes_count"], facts["not_imported"])
    assert any("2 field(s)" in c for c in caveats) and any("could not be imported" in c and "covidx" in c for c in caveats)
