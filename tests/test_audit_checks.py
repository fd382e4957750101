"""The shortcut audit's twin-free checks and verdicts, on arrays and stand-in networks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cmtlib.explain import cue_checks as cc
from cmtlib.explain import swaps as sw
from cmtlib.explain import verdicts as V
from cmtlib.explain.cue_twins import cue_of, twin_summary

pytest.importorskip("sklearn")
S = 40


def _lungs(n: int) -> np.ndarray:
    m = np.zeros((n, S, S), bool)
    m[:, 12:30, 8:18] = m[:, 12:30, 22:32] = True
    return m


def _films(y: np.ndarray, frame: np.ndarray, seed: int = 0) -> np.ndarray:
    """Noise films; the label darkens the lungs (the disease); `frame` paints a bright 2-px edge."""
    rng = np.random.default_rng(seed)
    x = rng.integers(90, 130, (len(y), S, S)).astype(float)
    x[_lungs(len(y))] -= 40 * np.repeat(y, _lungs(1).sum())
    x[frame.astype(bool), :2, :] = 250
    x[frame.astype(bool), -2:, :] = 250
    return np.clip(x, 0, 255).astype(np.uint8)


def frame_reader(images: np.ndarray) -> np.ndarray:
    """A network that follows the frame only: p = 0.9 with a bright top edge, 0.1 without."""
    return np.where(np.asarray(images)[:, 0, S // 2] > 200, 0.9, 0.1)


def lung_reader(images: np.ndarray) -> np.ndarray:
    """A network that reads the lungs only: darker lungs, higher p."""
    lung = _lungs(1)[0]
    return 1 - np.asarray(images)[:, lung].mean(axis=1) / 255


def _cohort(n: int = 80, tie: float = 0.8, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(float)
    frame = rng.random(n) < np.where(y == 1, (1 + tie) / 2, (1 - tie) / 2)
    return y, frame, np.array([f"p{i}" for i in range(n)])


def test_regions_frame_and_corners_do_not_overlap_and_outside_holds_both():
    frame, corners, whole = (sw.geometry(r, 50) for r in sw.REGIONS)
    assert not (frame & corners).any() and whole.all()
    assert frame[0, 25] and frame[25, 0] and not frame[0, 0] and corners[0, 0] and corners[49, 49]
    assert frame.sum() == 4 * (50 - 2 * 10) * round(0.05 * 50) and corners.sum() == 4 * 10 * 10
    with pytest.raises(KeyError, match="known"):
        sw.geometry("centre", 50)
    grown = sw.dilate(np.pad(np.ones((1, 2, 2), bool), ((0, 0), (24, 24), (24, 24))), share=0.04)  # 2 px at 50 px
    assert grown.sum() == 6 * 6


def test_donors_are_of_the_same_and_the_other_class_and_other_patients():
    y = np.array([0, 0, 1, 1, 1, 0])
    patients = np.array(["a", "a", "b", "c", "d", "e"])
    same, other = sw.donors(y, patients, seed=3)
    assert all(y[same] == y) and all(y[other] != y)
    assert all(patients[same] != patients) and all(patients[other] != patients)
    assert sw.donors(np.array([0, 1]), np.array(["a", "b"]))[0].tolist() == [-1, -1]  # no other film of the class


def test_histogram_matching_takes_the_donors_levels_away_from_the_lungs():
    rng = np.random.default_rng(0)
    x = rng.integers(50, 100, (2, S, S)).astype(np.uint8)
    donor = rng.integers(150, 250, (2, S, S)).astype(np.uint8)
    outside = ~_lungs(2)
    out = sw.match_histograms(x, donor, outside)
    for i in range(2):
        assert abs(np.median(out[i][outside[i]]) - np.median(donor[i][outside[i]])) <= 2
    order = np.argsort(x[0].ravel(), kind="stable")
    assert np.all(np.diff(out[0].ravel()[order].astype(int)) >= 0)  # monotone: structure kept


def test_fine_detail_swap_moves_noise_and_keeps_the_coarse_picture():
    rng = np.random.default_rng(0)
    smooth = np.tile(np.linspace(40, 200, S), (1, S, 1)).astype(np.uint8)
    noisy = np.clip(smooth + rng.normal(0, 25, (1, S, S)), 0, 255).astype(np.uint8)
    out = sw.swap_fine_detail(smooth, noisy)
    def fine(a):
        return np.abs(np.diff(a.astype(float), axis=2)).mean()
    assert fine(out) > 3 * fine(smooth)
    assert abs(out.astype(float).mean() - smooth.astype(float).mean()) < 2  # the mean (zero frequency) is the film's own


def test_swapping_the_frame_moves_a_frame_reader_by_the_tie_and_a_lung_reader_not():
    y, frame, patients = _cohort()
    x = _films(y, frame)
    lungs = _lungs(len(y))
    per = sw.swap_effects(frame_reader, x, lungs, y, patients, kinds=("frame", "corners"), seed=0)
    table = sw.summarise_swaps(per, n_boot=200).set_index("kind")
    # Only the donor's frame decides the swapped film's score: effect = 0.8 x P(same-class donor framed) - ...
    assert table.loc["frame", "effect"] == pytest.approx(0.8 * (frame[y == 1].mean() - frame[y == 0].mean()), abs=0.15)
    assert table.loc["frame", "ci_low"] > 0.3 and table.loc["corners", "effect"] == pytest.approx(0, abs=1e-9)
    lung_per = sw.summarise_swaps(sw.swap_effects(lung_reader, x, lungs, y, patients, seed=0), n_boot=200).set_index("kind")
    for kind in ("frame", "corners", "outside the lungs"):
        assert abs(lung_per.loc[kind, "effect"]) < 0.01  # the lungs never move


def test_balanced_mean_weighs_each_class_half():
    est, low, high = sw.balanced_mean([1, 1, 1, 0], [1, 1, 1, 0], ["a", "b", "c", "d"], n_boot=100)
    assert est == pytest.approx(0.5) and low <= est <= high
    assert math.isnan(sw.balanced_mean([1, 2], [1, 1], ["a", "b"])[0])


def test_cue_levels_of_the_original_size():
    index = pd.DataFrame({"orig_height": [64, 128, 128, ""], "orig_width": [64, 128, 100, 90], "source": ["a", "b", None, "a"]})
    train = np.ones(4, bool)
    assert cc.cue_levels(index, "original size", train).tolist() == ["64 px", "128 px", "128 px", "90 px"]
    assert cc.cue_levels(index, "source", train).tolist() == ["a", "b", "", "a"]
    many = pd.DataFrame({"orig_height": np.arange(100, 1100, 10), "orig_width": 50})
    levels = cc.cue_levels(many, "original size", np.ones(100, bool))
    assert len(set(levels)) == 4 and levels[0] == "<=347 px"
    assert set(cc.cue_levels(pd.DataFrame({"x": [1]}), "view", np.ones(1, bool))) == {""}


def test_data_tie_and_the_score_within_each_class():
    y, cue, patients = _cohort(200, tie=0.8, seed=2)
    levels = np.where(cue, "AP", "PA").astype(object)
    train = np.arange(200) < 100
    tie = cc.data_tie(levels, y, patients, train, ~train, n_boot=200)
    shares = cue[~train & (y == 1)].mean() - cue[~train & (y == 0)].mean()
    assert tie["auc"] == pytest.approx(0.5 + shares / 2, abs=1e-9) and tie["ci_low"] > 0.7 and tie["levels"] == 2
    follower = 0.2 + 0.3 * cue + 0.4 * y  # the label fixed, the cue adds 0.3
    w = cc.within_class(follower, levels, y, patients, train, ~train, n_boot=200)
    assert w["effect"] == pytest.approx(0.3) and w["ci_low"] == pytest.approx(0.3)
    by = w["by_class"]
    assert by["other"]["difference"] == pytest.approx(0.3) and by["other"]["n_cue"] + by["other"]["n_rest"] == 50
    if by["covid"]["n_rest"] < cc.MIN_GROUP:  # 90 % of COVID-19 films carry the cue: too few without it to compare
        assert math.isnan(by["covid"]["difference"])
    reader = 0.2 + 0.4 * y
    assert cc.within_class(reader, levels, y, patients, train, ~train)["effect"] == pytest.approx(0.0)
    one = cc.data_tie(np.full(200, "PA", dtype=object), y, patients, train, ~train)
    assert math.isnan(one["auc"]) and "one level" in one["note"]


def test_floors_find_a_frame_cue_and_not_a_lung_disease():
    y, frame, _ = _cohort(160, seed=4)
    x = _films(y, frame, seed=5)
    field = cc.lung_field(_lungs(80))
    found = cc.floors(x[:80], y[:80], x[80:], y[80:], field)
    assert found["frame"]["auc"] > 0.8 and found["whole film"]["auc"] > 0.9 and found["lung field"]["auc"] > 0.9
    assert found["corners"]["auc"] > 0.8  # the painted edges run through the corners too: the regions overlap in what they see
    clean = _films(y, np.zeros(160, bool), seed=6)
    none = cc.floors(clean[:80], y[:80], clean[80:], y[80:], field)
    assert abs(none["frame"]["auc"] - 0.5) < 0.2 and none["lung field"]["auc"] > 0.9
    assert cc.floor_association(frame_reader(x[80:]), found["frame"]["p_test"], y[80:]) > 0.3


def _checks(frame_effect=0.3, view_tie=0.9, view_within=0.25, frame_floor=0.95):
    swaps = [{"kind": k, "effect": 0.0, "ci_low": -0.02, "ci_high": 0.02, "n": 100} for k in V.REGIONS + V.LOOKS]
    swaps[0].update(effect=frame_effect, ci_low=frame_effect - 0.05, ci_high=frame_effect + 0.05)
    swaps[2].update(effect=frame_effect, ci_low=frame_effect - 0.05, ci_high=frame_effect + 0.05)  # outside holds the frame
    meta = {c: {"tie": {"auc": 0.5, "ci_low": 0.45, "ci_high": 0.55, "n": 100, "levels": 2, "rates": {"a": 0.3, "b": 0.3}, "note": ""},
                "within_class": {"effect": 0.2, "ci_low": 0.1, "ci_high": 0.3, "by_class": {}, "note": ""},
                "probe": {"accuracy": 0.9, "majority_rate": 0.5, "classes": 2}} for c in V.METADATA}
    meta["view"]["tie"].update(auc=view_tie, ci_low=view_tie - 0.05, ci_high=view_tie + 0.04, rates={"AP": 0.7, "PA": 0.1})
    meta["view"]["within_class"].update(effect=view_within, ci_low=view_within - 0.1)
    floors = {r: {"auc": 0.5, "ci_low": 0.42, "ci_high": 0.58, "area": 0.1, "association": 0.0} for r in cc.FLOOR_REGIONS}
    floors["frame"].update(auc=frame_floor, ci_low=frame_floor - 0.05)
    return {"model_auc": 0.95, "swaps": swaps, "metadata": meta, "floors": floors,
            "blanking": {"auc_full": 0.95, "auc_lungs_blanked": 0.5, "auc_outside_blanked": 0.9},
            "heat_map": {"frame": {"share": 0.3, "area": 0.1}, "corners": {"share": 0.1, "area": 0.16},
                         "outside the lungs": {"share": 0.5, "area": 0.7}}}


def test_the_verdicts_name_what_the_checks_show():
    checks = _checks()
    data, net = V.data_verdict(checks), V.network_verdict(checks)
    assert data["named"] == ["view", "frame"]
    # The source and size differ within a class too (0.2), but the data does not tie them to the label.
    assert net["named"] == ["view", "frame"] and net["kind"] == "warning"
    assert net["words"].startswith("The network's COVID-19 score follows the view (AP or PA), by +0.25 (95 % CI 0.15 to 0.30); "
                                   "the film's frame (its edges), by +0.30 (95 % CI 0.25 to 0.35):")
    assert not net["cues"]["outside the lungs"]["named"]  # no more than the frame it holds
    frame = net["cues"]["frame"]
    assert frame["check"] == "swap" and {s["check"] for s in frame["support"]} == {"floor against the score", "heat map"}
    assert next(s for s in frame["support"] if s["check"] == "heat map")["agrees"]  # 3 times its area
    assert "cannot be followed as a shortcut here" in net["cues"]["source"]["words"]


def test_a_cue_in_the_data_that_the_network_ignores_is_said_so():
    checks = _checks(frame_effect=0.01, view_within=0.02)
    net = V.network_verdict(checks)
    assert net["named"] == [] and net["kind"] == "ok"
    assert "No cue was found" in net["words"] and "carry the view (AP or PA) and the film's frame (its edges), which predict" in net["words"]
    assert "With the lungs blanked out its AUC falls to 0.50: what it reads lies in the lungs." in net["words"]
    assert V.data_verdict(checks)["named"] == ["view", "frame"]


def test_outside_the_lungs_is_named_when_more_than_its_edges_moves_the_score():
    checks = _checks(frame_effect=0.0)
    checks["swaps"][2].update(effect=0.2, ci_low=0.12, ci_high=0.28)
    assert V.network_verdict(checks)["named"] == ["view", "outside the lungs"]


def test_twin_summary_and_cue_names():
    assert cue_of("cue:border") == "border" and cue_of("source") == "source" and cue_of("lesion") == ""
    per = pd.DataFrame({"cue": ["border"] * 4 + ["view"] * 2, "patient_id": list("abcdef"),
                        "change": [0.3, 0.2, 0.25, 0.25, 0.01, 0.03]})
    s = twin_summary(per, n_boot=100)
    assert s["border"]["mean_change"] == pytest.approx(0.25) and s["border"]["follows"] and s["border"]["n"] == 4
    assert s["view"]["ignores"] and not s["view"]["follows"]


def test_the_calibration_is_judged_by_the_twins_and_said_in_one_sentence():
    from cmtlib.experiments.audit_calibration import judge, summarise

    def result(network, data, change):
        return {"network": network, "data": data, "model_auc": 0.97,
                "twins": {"border": {"mean_change": change, "ci_low": change - 0.05, "ci_high": change + 0.05, "n": 100}}}

    rows = [judge("border", 0, result(["frame"], ["frame", "corners"], 0.3)), judge("border", 1, result([], ["frame"], 0.25)),
            judge("clean", 0, {"network": [], "data": [], "twins": None}), judge("clean", 1, {"network": ["view"], "data": [], "twins": None}),
            judge("border", 2, result([], ["corners"], 0.01)), judge("border", 3, result(["frame"], ["frame"], 0.1))]
    assert [r["outcome"] for r in rows] == ["hit", "miss", "correct silence", "false alarm", "correct silence",
                                            "undecided (twins between thresholds)"]
    s = summarise(rows)
    assert s["power"] == {"hits": 1, "runs": 2} and s["false_alarms"] == {"alarms": 1, "runs": 3, "clean_runs": 2}
    assert s["data"] == {"named": 3, "runs": 4} and s["kinds_with_power"] == [] and s["kinds_followed"] == ["border"]
    record = {"made": "2026-01-01", "setting": {"image_size": 88, "strength": 0.8, "seeds": [0, 1]},
              "thresholds": {"follows": 0.2, "ignores": 0.05}, "summary": s}
    text = V.calibration_sentence(record)
    assert "1 of 1 kinds were followed: border; missed at least once: border" in text and "opacities" not in text
    record["setting"]["faint_opacity"] = 0.4
    assert "COVID-19 opacities at 0.4 of their density" in V.calibration_sentence(record)
    assert "named the cue in 1 of 2 runs" in text and "named a cue in 1 of 3 runs" in text and "in 3 of 4 runs" in text
    assert "not been calibrated" in V.calibration_sentence(None)


def test_checks_that_could_not_be_measured_name_nothing_and_say_so():
    checks = _checks()
    checks["swaps"] = []
    for m in checks["metadata"].values():
        m["tie"].update(auc=None, ci_low=None, ci_high=None, note="one level only among the test films: the cue cannot be told apart here")
        m["within_class"].update(effect=None, ci_low=None, ci_high=None, note="no class has 5 test films on each side of the cue")
    for f in checks["floors"].values():
        f.update(auc=None, ci_low=None, ci_high=None, association=None)
    net, data = V.network_verdict(checks), V.data_verdict(checks)
    assert net["named"] == [] and data["named"] == []
    assert "not measured" in net["cues"]["frame"]["words"] and "could not be compared" in net["cues"]["view"]["words"]
    assert "not measured (one level only" in data["cues"]["source"]["words"] and "no floor" in data["cues"]["frame"]["words"]


def test_the_shipped_calibration_is_what_its_runs_say_and_every_page_can_cite_it():
    from cmtlib.experiments.audit_calibration import summarise

    record = V.calibration()
    assert record is not None, "cmtlib/explain/audit_calibration.json is missing: run cmt audit-calibration --update-package"
    assert summarise(record["runs"]) == record["summary"]
    assert record["setting"]["strength"] == 0.8
    assert record["thresholds"]["net_effect"] == V.NET_EFFECT, "the bar changed since the calibration: run it again"
    text = V.calibration_sentence(record)
    power = record["summary"]["power"]
    assert f"named the cue in {power['hits']} of {power['runs']} runs" in text
