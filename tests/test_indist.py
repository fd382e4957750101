"""The in-distribution check (issue 22): its distance and thresholds on numbers whose answer is known,
and, on the smoke run (params/smoke.yaml), odd inputs built here (masks, noise, a photo, negatives,
rotated and lateral-like films, blank images, 16-px thumbnails, ...) each flagged by `cmt predict`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmtlib.indist import (
    SHARE,
    VERDICT_NA,
    VERDICT_OUT,
    Descriptors,
    Gaussian,
    Reference,
    conformal_threshold,
    describe,
    fit,
    judge,
    ledoit_wolf,
    turned,
)
from cmtlib.inference import infer
from cmtlib.models.registry import create_model
from cmtlib.predict import NOT_JUDGED, predict_files
from cmtlib.predictions import OOD_COLUMNS, predictions_frame
from cmtlib.run import Run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from odd_inputs import ISSUE_KINDS, odd_inputs


# ---- the distance and the thresholds ------------------------------------------------------------------
def test_ledoit_wolf_matches_sklearn():
    LedoitWolf = pytest.importorskip("sklearn.covariance").LedoitWolf
    rng = np.random.default_rng(0)
    for n, p in ((60, 8), (20, 40)):  # more films than features, and fewer
        x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p))
        cov, shrinkage = ledoit_wolf(x)
        ref = LedoitWolf().fit(x)
        assert shrinkage == pytest.approx(ref.shrinkage_, abs=1e-10) and 0 < shrinkage < 1
        np.testing.assert_allclose(cov, ref.covariance_, atol=1e-10)


def test_the_distance_is_mahalanobis_and_a_broken_row_is_far():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(20000, 2)) * [1.0, 4.0]  # sd 1 and 4, uncorrelated: shrinkage near 0
    g = Gaussian.fit(np.vstack([rows, -rows]))  # mean exactly 0
    d = g.distance(np.array([[2.0, 0.0], [0.0, 8.0], [0.0, 2.0], [np.nan, 0.0]]))
    np.testing.assert_allclose(d[:3], [2.0, 2.0, 0.5], rtol=0.015)
    assert d[3] == np.inf


def test_the_score_threshold_is_the_conformal_order_statistic():
    scores = np.arange(1.0, 110.0)  # 109 validation films scoring 1..109
    assert conformal_threshold(scores, 0.02) == 108.0  # ceil(110 x 0.98) = 108: 1 of 109 above it, 2 in 110 for a new film
    assert conformal_threshold(np.arange(1.0, 41.0), 0.02) == 40.0  # too few films for 2 %: the largest
    assert conformal_threshold(np.array([np.nan, 3.0, np.inf, 1.0]), 0.5) == 3.0  # ceil(3 x 0.5) = 2nd of the 2 finite
    assert conformal_threshold(np.array([]), 0.02) == np.inf


LAYOUT_ROWS = (0.3, 0.2, 0.5, 0.8)  # mean brightness of the 4 x 4 layout's rows: dark lungs above a bright abdomen


def _films(rng, n, shift=0.0):
    """Descriptors of n films as the model would give them (features, lung map, appearance)."""
    stats = [rng.normal(m, 0.02, n) for m in (0.05, 0.3, 0.5, 0.7, 0.95, -3, -3, -2.5, -2.5)]
    layout = [rng.normal(m, 0.03, n) for m in LAYOUT_ROWS for _ in range(4)]
    return {"features": rng.normal(shift, 1, (n, 6)), "lungs": rng.normal(0.5, 0.05, (n, 4)),
            "lung_shape": np.column_stack([rng.normal(0.3, 0.02, n), rng.uniform(0.8, 1, n), rng.normal(0.45, 0.02, n)]),
            "appearance": np.column_stack(stats + layout)}


def test_thresholds_flag_the_stated_share_of_validation_films_and_far_films_with_reasons():
    rng = np.random.default_rng(2)
    ref, val = fit(_films(rng, 400), _films(rng, 500), np.full(400, 128.0), np.full(500, 128.0))
    assert ref.available and set(ref.thresholds) == {"features", "lungs", "appearance", "orientation"}
    assert ref.val_flagged == pytest.approx(1 - val.in_distribution.mean()) and abs(ref.val_flagged - SHARE) <= 2 / 500
    test = judge(ref, _films(rng, 1000), np.full(1000, 128.0))
    assert 0.005 < 1 - test.in_distribution.mean() < 0.05  # like the validation films: about the share set
    odd = _films(rng, 4)
    odd["features"][0] += 6  # far in the network's features only
    odd["lung_shape"][1, 0], odd["lungs"][1] = 0.0, 0.0  # no lungs
    sides = np.array([128.0, 128.0, 16.0, 128.0])  # the third: a 16-px file, like the training films otherwise
    odd["appearance"][3] = turned(odd["appearance"][3:4], 2)[0]  # the fourth: upside down, its brightness unchanged
    v = judge(ref, odd, sides)
    assert v.in_distribution.tolist() == [0.0, 0.0, 0.0, 0.0] and (v.score > 1).all()
    assert v.reasons[0] == "unlike the training films to the network"
    assert "lungs not found" in v.reasons[1] and "unlike the training films to the network" not in v.reasons[1]
    assert v.reasons[2] == "only 16 px on its shorter side, under half the smallest training film's (128 px)"
    assert "turned or upside down" in v.reasons[3]
    block = v.block(1, ref)
    assert block["verdict"] == VERDICT_OUT and block["in_distribution"] is False and "lungs not found" in block["reasons"]
    assert block["signals"]["lungs"]["distance"] >= block["signals"]["lungs"]["threshold"] == ref.thresholds["lungs"]


def test_a_turned_films_appearance_is_computed_without_a_pass():
    """turned() of a film's appearance equals the appearance of the film turned (what the orientation reads)."""
    rng = np.random.default_rng(6)
    film = torch.from_numpy(rng.uniform(0, 1, (1, 1, 32, 32)).astype(np.float32)).cumsum(2) / 32  # brighter downwards
    for k in (1, 2, 3):
        direct = describe({}, torch.rot90(film, k, dims=(2, 3)))["appearance"].numpy()
        np.testing.assert_allclose(turned(describe({}, film)["appearance"].numpy(), k), direct, atol=1e-5)
    assert not np.allclose(describe({}, film)["appearance"].numpy(), turned(describe({}, film)["appearance"].numpy(), 2))


def test_the_reference_round_trips_through_the_run_folder(tmp_path):
    rng = np.random.default_rng(3)
    ref, _ = fit(_films(rng, 200), _films(rng, 100), np.full(200, 100.0), np.full(100, 100.0))
    Run(tmp_path).write_indist(ref.to_arrays())
    back = Reference.from_arrays(Run(tmp_path).indist)
    assert back.thresholds == ref.thresholds and back.min_side == 100.0 and back.n_train == 200 and back.n_val == 100
    films = _films(rng, 50, shift=0.5)
    np.testing.assert_array_equal(judge(back, films).score, judge(ref, films).score)


def test_without_a_record_or_an_embedding_the_check_says_not_available():
    rng = np.random.default_rng(4)
    none = Reference.from_arrays(None)
    v = judge(none, _films(rng, 3))
    assert np.isnan(v.in_distribution).all() and v.block(0, none)["verdict"] == VERDICT_NA and "retrain" in v.block(0, none)["why"]
    films = _films(rng, 50)
    del films["features"]
    ref, _ = fit(films, films)
    assert not ref.available and "no embedding" in ref.why_not
    assert v.summary(none)["available"] is False and v.summary(none)["n_flagged"] is None


def test_predictions_carry_the_verdicts_or_leave_them_empty():
    import pandas as pd

    index = pd.DataFrame({"image_id": ["a", "b"], "split": ["test", "test"], "cache_row": [0, 1]})
    cols = {c: np.array([0.2, 0.7]) for c in ("p_healthy", "p_covid", "p_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou")}
    df = predictions_frame(index, {**cols, "in_distribution": np.array([1.0, 0.0]), "ood_score": np.array([0.5, 3.0]),
                                   "ood_reason": np.array(["", "lungs not found"], dtype=object)}, 0.5)
    assert df["in_distribution"].tolist() == [1, 0] and df["ood_reason"].tolist() == ["", "lungs not found"]
    empty = predictions_frame(index, cols, 0.5)
    assert set(OOD_COLUMNS) <= set(empty.columns) and empty["in_distribution"].isna().all() and empty["ood_score"].isna().all()


@pytest.mark.parametrize("name, config", [("cmtnet", {"tasks": ["disease", "multilabel"]}), ("resnet18", {}), ("unet", {"tasks": ["lung"]})])
def test_every_kind_of_model_is_described_from_its_own_outputs(name, config):
    """A model without a lung output is judged on its embedding and the film's appearance; one with it on its lungs too."""
    torch.manual_seed(0)
    model = create_model(name, width=0.125, encoder_weights="none", head_hidden=16, **config)
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.uniform(0.2, 0.8, (24, 3, 32, 32)).astype(np.float32))
    described = Descriptors()
    infer(model, [{"image": images[i:i + 8]} for i in range(0, 24, 8)], on_batch=described)
    films = described.host()
    with torch.no_grad():
        has_lung = "lung" in model.eval()(images[:2])
    assert set(films) == {"features", "appearance"} | ({"lungs", "lung_shape"} if has_lung else set())
    assert films["appearance"].shape == (24, 25) and films["features"].shape[0] == 24
    ref, _ = fit({k: v[:16] for k, v in films.items()}, {k: v[16:] for k, v in films.items()})
    assert ref.available and set(ref.gaussians) == ({"features", "lungs", "appearance"} if has_lung else {"features", "appearance"})
    blank = judge(ref, {k: v[:1] for k, v in films.items()} | {"appearance": np.zeros((1, 25))}, np.array([32.0]))
    assert blank.in_distribution[0] == 0.0


# ---- the smoke run ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """params/smoke.yaml trained once (one thread, its data under a temporary folder)."""
    from cmtlib.engine import train
    from cmtlib.evaluate import evaluate_run
    from cmtlib.params import load_params

    root = tmp_path_factory.mktemp("smoke")
    before, threads = os.environ.get("CMT_DATA_DIR"), torch.get_num_threads()
    os.environ["CMT_DATA_DIR"] = str(root / "data")
    try:
        run = train(load_params(REPO / "params" / "smoke.yaml", {"threads": 1, "run_dir": str(root / "run")}))
        evaluate_run(run, n_boot=20)
    finally:
        os.environ.pop("CMT_DATA_DIR") if before is None else os.environ.__setitem__("CMT_DATA_DIR", before)
        torch.set_num_threads(threads)
    return Run.open(run)


def _write(pairs, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for i, (kind, image) in enumerate(pairs):
        Image.fromarray(image).save(folder / f"{i:03d}-{kind}.png")
        kinds[f"{i:03d}-{kind}"] = kind
    return kinds


def test_each_odd_input_is_flagged_on_the_smoke_run(smoke, tmp_path):
    from cmtlib.data.loader import open_cache_folder

    cache = open_cache_folder(smoke.cache_dir())
    films = [cache.images[r] / 255.0 for r in cache.rows("test")[:6]]
    masks = [cache.lung[r] for r in cache.rows("test")[:2]]
    kinds = _write(odd_inputs(films, masks, size=128, seed=0, n_standalone=2), tmp_path / "odd")
    assert set(ISSUE_KINDS) <= set(kinds.values())
    results = predict_files(smoke.path, [tmp_path / "odd"], tmp_path / "out")
    assert len(results) == len(kinds)
    missed = []
    for r in results:
        stem = Path(r["input"]).stem
        if "error" in r:  # read_image refuses an image of one value: never judged either
            assert kinds[stem] in ("black", "white") and "same value" in r["error"]
            continue
        data = json.loads(Path(r["json"]).read_text())
        if data["in_distribution"]["in_distribution"] is not False:
            missed.append((kinds[stem], data["in_distribution"]["score"]))
            continue
        assert data["decision"] == {"covid_suspected": None, "judged": False, "text": NOT_JUDGED}
        assert 0 <= data["probabilities"]["covid"] <= 1 and data["in_distribution"]["reasons"]
    assert missed == []


def test_the_smoke_runs_own_films_are_judged_and_the_validation_share_holds(smoke, tmp_path):
    val = smoke.predictions_val
    assert abs((val["in_distribution"] == 0).mean() - Reference.from_arrays(smoke.indist).val_flagged) < 1e-9
    assert (val["in_distribution"] == 0).mean() <= SHARE + 1 / len(val)
    test = smoke.predictions
    flagged = test[test["in_distribution"] == 0]
    assert (flagged["ood_score"] > 1).all() and (flagged["ood_reason"] != "").all()
    kept = test[test["in_distribution"] == 1]
    assert (kept["ood_score"] <= 1).all() and kept["ood_reason"].isna().all() | (kept["ood_reason"] == "").all()
    summary = smoke.metrics["in_distribution"]
    assert summary["n"] == len(test) and summary["n_flagged"] == len(flagged) and summary["share_set"] == SHARE


def test_judge_anyway_decides_a_flagged_film_and_still_reports_the_verdict(smoke, tmp_path):
    Image.fromarray(odd_inputs([], [], size=96, seed=1)[0][1]).save(tmp_path / "mask.png")  # a lung mask
    (plain,) = predict_files(smoke.path, [tmp_path / "mask.png"], tmp_path / "a")
    (anyway,) = predict_files(smoke.path, [tmp_path / "mask.png"], tmp_path / "b", judge_anyway=True)
    assert plain["in_distribution"] is False and plain["covid_suspected"] is None
    data = json.loads(Path(anyway["json"]).read_text())
    assert data["decision"]["judged"] is True and data["decision"]["covid_suspected"] == (data["probabilities"]["covid"] >= data["threshold"])
    assert data["decision"]["text"].startswith("COVID-19") and data["in_distribution"]["verdict"] == VERDICT_OUT


def test_a_run_without_the_record_says_not_available_and_decides(smoke, tmp_path):
    from cmtlib.evaluate import evaluate_run

    stored = smoke.path / "indist.npz"
    stored.rename(tmp_path / "saved.npz")
    try:
        Image.fromarray(odd_inputs([], [], size=96, seed=1)[0][1]).save(tmp_path / "mask.png")
        (r,) = predict_files(smoke.path, [tmp_path / "mask.png"], tmp_path / "out")
        data = json.loads(Path(r["json"]).read_text())
        assert data["in_distribution"]["verdict"] == VERDICT_NA and "no record of its training films" in data["in_distribution"]["why"]
        assert data["decision"]["judged"] is True and data["decision"]["covid_suspected"] is not None
        metrics = evaluate_run(smoke.path, n_boot=10, out_dir=tmp_path / "eval")
        assert metrics["in_distribution"]["available"] is False
        frame = Run(tmp_path / "eval").predictions
        assert frame["in_distribution"].isna().all() and frame["ood_score"].isna().all()
    finally:
        (tmp_path / "saved.npz").rename(stored)


def test_the_command_says_how_many_were_not_judged(smoke, tmp_path, capsys):
    from cmtlib.cli import main

    Image.fromarray(odd_inputs([], [], size=96, seed=2)[0][1]).save(tmp_path / "mask.png")
    assert main(["predict", str(smoke.path), str(tmp_path / "mask.png"), "--out", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out
    assert "1 image(s) predicted" in said
    assert "1 outside what the run was trained on: not judged (--judge-anyway decides them all the same)" in said
    main(["predict", str(smoke.path), str(tmp_path / "mask.png"), "--out", str(tmp_path / "b"), "--judge-anyway"])
    assert "1 outside what the run was trained on: judged anyway (--judge-anyway)" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "mask.json").read_text())["decision"]["judged"] is True
