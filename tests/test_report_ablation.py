"""`cmt ablation`'s summary page (the paper's Table V): six task subsets, named as the paper names them
with the tasks spelled out, COVID-19 sensitivity at 99 % specificity, AUC and EER with CIs, and lung /
disease Dice where the subset has that task. The engine is replaced by stand-in metrics."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from cmtlib.experiments import study
from cmtlib.report.chain import ablation

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "params" / "ablation").glob("*.yaml"))
NAMES = ["All 4 tasks", "Tasks 1 and 4", "Tasks 2 and 4", "Tasks 1, 2 and 4", "Tasks 1, 3 and 4", "Tasks 2, 3 and 4"]


def stand_in_metrics(tasks: list[str], k: int) -> dict:
    """Distinct numbers per configuration; Dice only for the outlines a subset trains."""
    def ci(v):
        return {"v": v, "lo": round(v - 0.05, 3), "hi": round(v + 0.02, 3)}

    out = {"covid": {}, "lung": {"dice": None}, "disease": {"dice": None}}
    for section, key, v in (("covid", "sens_at_spec99", 0.8 - k / 20), ("covid", "auc", 0.99 - k / 100), ("covid", "eer", 0.05 + k / 100),
                            ("lung", "dice", 0.95 if "lung" in tasks else None), ("disease", "dice", 0.5 if "disease" in tasks else None)):
        if v is not None:
            c = ci(v)
            out[section].update({key: c["v"], f"{key}_ci_low": c["lo"], f"{key}_ci_high": c["hi"]})
    return out


@pytest.fixture
def summary(tmp_path, monkeypatch):
    seen = []

    def train_run(params):  # in place of training and evaluation; one run after another here (jobs=1)
        seen.append(list(params.model.tasks))
        Path(params.train.run_dir).mkdir(parents=True)
        return stand_in_metrics(seen[-1], len(seen) - 1)

    monkeypatch.setattr(study, "train_run", train_run)
    monkeypatch.setattr(study, "prepare_data", lambda params: None)
    page = ablation.run_ablation(FILES, out=tmp_path / "abl", jobs=1)
    return page, json.loads((tmp_path / "abl" / "summary.json").read_text())["rows"]


def test_subset_names_follow_the_paper():
    assert [ablation.subset_name(t)[0] for t in (["lung", "disease", "healthy", "multilabel"], ["multilabel", "lung"], ["disease", "multilabel"],
                                                  ["lung", "disease", "multilabel"], ["lung", "healthy", "multilabel"],
                                                  ["disease", "healthy", "multilabel"], ["lung"])] == NAMES + ["Task 1"]
    assert ablation.subset_name(["lung", "multilabel"])[1] == "lung outline + COVID-19 and other-disease labels"


def test_six_rows_with_intervals_and_dice_where_the_subset_has_it(summary):
    _, rows = summary
    assert len(rows) == 6 and [r["subset"] for r in rows] == NAMES and all(r["status"] == "ok" for r in rows)
    assert rows[0]["tasks"] == "lung outline + disease region + healthy or not + COVID-19 and other-disease labels"
    assert rows[1]["sens"] == "0.750 (95 % CI 0.700 to 0.770)" and rows[1]["sens_value"] == pytest.approx(0.75)
    assert rows[5]["auc"] == "0.940 (95 % CI 0.890 to 0.960)" and rows[5]["eer_value_ci_high"] == pytest.approx(0.12)
    has_lung = ["lung" in r["tasks"] for r in rows]
    assert [r["lung_dice"].startswith("0.950 (95 % CI") for r in rows] == has_lung == [True, True, False, True, True, False]
    assert [r["lung_dice"] for r in rows if "lung" not in r["tasks"]] == ["no lung task"] * 2
    assert [r["disease_dice"] == "no disease task" for r in rows] == [False, True, False, False, True, False]


def test_the_page_says_what_every_row_was_trained_at(summary):
    page, _ = summary
    text = html.unescape(page.read_text())
    assert "Every configuration was trained at: synthetic phantoms, 88 px, 5 epochs, width 0.125, random start, seed 0" in text
    assert "the paper: 224 px images, 30 epochs" in text
    headers = re.findall(r"<th>(.*?)</th>", text)
    assert headers == ["tasks", "COVID-19 sensitivity at 99 % specificity", "COVID-19 AUC", "equal error rate", "lung Dice",
                       "disease Dice", "status", "time"]
    for name in NAMES:
        assert f"<strong>{name}</strong>" in text
    assert "no lung task" in text and "0.500 (95 % CI 0.450 to 0.520)" in text


def test_rows_trained_at_different_settings_each_show_theirs(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "train_run", lambda p: stand_in_metrics(["lung"], 0))
    monkeypatch.setattr(study, "prepare_data", lambda params: None)
    page = ablation.run_ablation(FILES[:2], out=tmp_path / "abl", overrides={"epochs": 6}, jobs=1)
    assert "Every configuration was trained at" in page.read_text()
    rows = [ablation.summary_row("a", "a.yaml", None, "ok", 1.0, ablation.load_all([FILES[0]], {"epochs": e})[0]) for e in (3, 6)]
    assert ablation.common_setting(rows) == "" and "3 epochs" in rows[0]["setting"]
    text = ablation.write_summary(tmp_path / "two", rows).read_text()
    assert "<th>trained at</th>" in text and "Every configuration was trained at" not in text and text.count("3 epochs") == 1


def test_with_seeds_each_row_is_the_mean_over_its_seeds_with_their_spread(tmp_path, monkeypatch):
    def train_run(params):  # COVID AUC 0.90, 0.92, 0.94 over seeds 0-2; the third seed of the second file fails
        if params.run_name == "t14-lung-multilabel" and params.train.seed == 2:
            raise RuntimeError("seed 2 diverged on purpose")
        return {"covid": {"auc": 0.90 + 0.02 * params.train.seed}, "lung": {"dice": 0.8}}

    monkeypatch.setattr(study, "train_run", train_run)
    monkeypatch.setattr(study, "prepare_data", lambda params: None)
    with pytest.raises(study.StudyError, match=r"1 of 6 run\(s\) did not finish: t14-lung-multilabel-s2 \(failed: RuntimeError: seed 2 diverged"):
        ablation.run_ablation(FILES[:2], out=tmp_path / "abl", seeds=[0, 1, 2], jobs=1)
    data = json.loads((tmp_path / "abl" / "summary.json").read_text())
    first, second = data["rows"]
    assert first["auc"] == "0.920 ± 0.020 over 3 seeds (0.900 to 0.940)" and first["auc_value"] == pytest.approx(0.92)
    assert first["status"] == "ok" and "seeds 0, 1, 2" in first["setting"]
    assert second["auc"] == "0.910 ± 0.014 over 2 seeds (0.900 to 0.920)" and second["status_class"] == "failed"
    assert second["status"] == "1 of 3 seeds did not finish" and "seed 2: RuntimeError: seed 2 diverged on purpose" in second["error"]
    assert [r["name"] for r in data["runs"]] == [f"{n}-s{s}" for n in ("t1234-all-tasks", "t14-lung-multilabel") for s in (0, 1, 2)]
    assert (tmp_path / "abl" / "params" / "t14-lung-multilabel-s2.yaml").is_file()
    text = html.unescape((tmp_path / "abl" / "index.html").read_text())
    assert "0.920 ± 0.020 over 3 seeds" in text and "seed 2 diverged on purpose" in text
