"""Figures return matplotlib Figures with the expected panels; tables hold the expected numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from cmtlib.explain import plots as P
from cmtlib.explain.overlays import OverlayCases
from cmtlib.metrics import reliability_curve


def _visible(fig):
    return [ax for ax in fig.axes if ax.axison or ax.images]


@pytest.fixture()
def predictions():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20), np.zeros(30)]
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 50), 0, 1)
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(50)], "label_covid": y, "label_healthy": 1 - y,
                         "p_covid": p, "p_healthy": 1 - p, "pred_covid": (p >= 0.6).astype(int),
                         "view": np.where(np.arange(50) % 3 == 0, "AP", "PA"), "source": "s"})


def test_roc_marks_the_operating_point(predictions):
    fig = P.roc_figure(predictions["label_covid"], predictions["p_covid"], threshold=0.6, name="CMTNet",
                       others={"floor": (predictions["label_covid"], np.r_[np.ones(20), np.zeros(30)] * 0.5)})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("CMTNet (AUC") and labels[1] == "floor (AUC 1.000)" and labels[2].startswith("threshold 0.6")
    assert fig.axes[1].get_xscale() == "log"


def test_confusion_matrices_counts_and_figure(predictions):
    m = P.confusion_matrices(predictions)
    y, pred = predictions["label_covid"].to_numpy(), predictions["pred_covid"].to_numpy()
    assert m["COVID-19"].tolist() == [[int(((y == 0) & (pred == 0)).sum()), int(((y == 0) & (pred == 1)).sum())],
                                      [int(((y == 1) & (pred == 0)).sum()), int(((y == 1) & (pred == 1)).sum())]]
    assert m["COVID-19"].sum() == 50 and m["healthy / unhealthy"].sum() == 50
    fig = P.confusion_figure(m, P.CONFUSION_LABELS)
    assert len(_visible(fig)) == 2
    by_view = P.confusion_matrices(predictions, by="view")
    assert set(by_view) == {"AP", "PA"} and sum(v.sum() for v in by_view.values()) == 50
    assert len(_visible(P.confusion_figure(by_view, ncols=1))) == 2
    table = P.group_confusion_table(predictions, "view")
    assert len(table) == 4 and table.loc[(table["view"] == "AP") & (table["task"] == "COVID-19"), "n"].item() == 17


def test_reliability_and_group_table(predictions):
    curve = reliability_curve(predictions["label_covid"], predictions["p_covid"])
    fig = P.reliability_figure(curve, 0.123)
    assert len(fig.axes) == 2 and "0.123" in fig.axes[0].get_title()
    metrics = {"by_view": {"AP": {"counts": {"n_images": 17, "n_covid": 7}, "covid": {"auc": 0.9, "auc_ci_low": 0.8, "auc_ci_high": 0.97}},
                           "PA": {"counts": {"n_images": 33, "n_covid": 13}, "covid": {"auc": None}}}}
    t = P.group_table(metrics, "view")
    assert t.loc[0, "COVID-19 AUC"] == "0.900 (0.800-0.970)" and t.loc[1, "COVID-19 AUC"] == "" and t.loc[1, "images"] == 33
    raw = P.group_table(metrics, "view", formatted=False)
    assert raw.loc[0, "COVID-19 AUC low"] == 0.8 and math.isnan(raw.loc[1, "COVID-19 AUC"])
    with pytest.raises(KeyError, match="by_source"):
        P.group_table(metrics, "source")


def test_embedding_figure_two_or_four_panels():
    frame = pd.DataFrame({"image_id": list("abcd"), "true": ["COVID-19", "non-COVID"] * 2, "predicted": ["COVID-19"] * 4,
                          "tsne_x": [0, 1, 2, 3.0], "tsne_y": [1, 0, 1, 0.0], "umap_x": np.nan, "umap_y": np.nan})
    assert len(P.embedding_figure(frame).axes) == 2
    assert len(P.embedding_figure(frame.assign(umap_x=frame["tsne_x"], umap_y=frame["tsne_y"])).axes) == 4


def test_overlay_figure_titles_are_image_ids():
    k = 4
    masks = np.zeros((k, 32, 32), bool)
    masks[:, 8:24, 8:24] = True
    cases = OverlayCases(pd.DataFrame({"class": ["healthy", "healthy", "COVID-19", "COVID-19"], "rank": ["best", "worst"] * 2,
                                       "image_id": ["nih:1", "nih:2", "ieee:3", "ieee:4"], "dice": [0.9, 0.5, 0.8, 0.4]}),
                         np.zeros((k, 32, 32), np.uint8), {"lung": masks, "disease": masks}, {"lung": np.ones(k, bool), "disease": np.ones(k, bool)},
                         {"lung": masks.astype(np.float32), "disease": np.zeros((k, 32, 32), np.float32)}, "lung")
    fig = P.overlay_figure(cases)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(fig.axes) == 4 and titles[0].startswith("nih:1\nhealthy, best: lung Dice 0.90")
    assert not any("/" in t or ".png" in t for t in titles)


def test_review_cam_and_shortcut_figures():
    t = pd.DataFrame({"group": ["0-3", "4-7"], "n": [3, 0], "errors": [2, 0], "error_rate": [2 / 3, np.nan]})
    assert len(P.error_rate_figure({"by day": t, "by view": t}).axes) == 2
    imgs = np.zeros((3, 16, 16), np.uint8)
    assert len(_visible(P.cases_figure(imgs, ["a", "b", "c"], ncols=2))) == 3
    maps = {"gradcam": np.random.default_rng(0).uniform(size=(3, 16, 16)), "eigencam": np.zeros((3, 16, 16))}
    lung = np.zeros((3, 16, 16), bool)
    lung[:, 4:12, 4:12] = True
    fig = P.cam_figure(imgs, maps, lung=lung, disease=lung, titles=["a", "b", "c"])
    assert len(fig.axes) == 3 * 3 and fig.axes[0].get_title() == "gradcam"
    summary = pd.DataFrame({f"{k}_{s}": [0.5, 0.7] for k in ("mass_in_lung", "pointing_game", "iou_disease") for s in ("mean", "sd")},
                           index=pd.Index(["gradcam", "eigencam"], name="method"))
    assert len(P.agreement_figure(summary).axes) == 3
    from test_audit_checks import _checks

    from cmtlib.explain.verdicts import data_verdict, network_verdict

    checks = _checks()
    checks["metadata"]["original size"]["within_class"].update(effect=None, ci_low=None, ci_high=None)
    fig = P.audit_figure({"network_verdict": network_verdict(checks), "data_verdict": data_verdict(checks)})
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(fig.axes) == 2 and labels[0] == "source" and "frame" in labels
    assert "not measured" in [x.get_text() for x in fig.axes[0].texts] and "0.30" in [x.get_text() for x in fig.axes[0].texts]


# ---- page 5 data: case selection, predicted masks, cache reading ---------------------------------

def _dice_predictions():
    return pd.DataFrame({
        "image_id": ["h1", "h2", "h3", "h4", "c1", "c2", "o1"],
        "label_healthy": [1, 1, 1, 1, 0, 0, 0], "label_covid": [0, 0, 0, 0, 1, 1, 0], "label_other": [0, 0, 0, 0, 0, 0, 1],
        "lung_dice": [0.875, 0.5, 0.75, 0.625, 0.9, np.nan, np.nan], "disease_dice": [np.nan] * 4 + [0.3, 0.6, np.nan],
        "cache_row": [0, 1, 2, 3, 4, 5, 6]})


def test_select_cases_best_median_worst():
    from cmtlib.explain.overlays import select_cases

    lung = select_cases(_dice_predictions(), "lung").set_index(["class", "rank"])
    assert lung.loc[("healthy", "best"), "image_id"] == "h1" and lung.loc[("healthy", "worst"), "image_id"] == "h2"
    assert lung.loc[("healthy", "median"), "image_id"] == "h4"  # 0.625 and 0.75 tie around 0.6875: the lower Dice
    assert lung.loc[("COVID-19", "best"), "image_id"] == "c1" and lung.loc[("COVID-19", "worst"), "image_id"] == "c1"
    assert "other disease" not in lung.index.get_level_values(0)  # no Dice: left out
    disease = select_cases(_dice_predictions(), "disease")
    assert set(disease["class"]) == {"COVID-19"} and disease.set_index("rank").loc["best", "image_id"] == "c2"
    with pytest.raises(KeyError, match="CONTRACTS"):
        select_cases(_dice_predictions().drop(columns="lung_dice"), "lung")


def _write_cache(folder, n=7, size=64):
    import json

    ids = _dice_predictions()["image_id"].tolist()[:n]
    lung = np.zeros((n, size, size), np.uint8)
    lung[:, 10:50, 8:56] = 1
    pd.DataFrame({"image_id": ids, "split": "test", "label_covid": "0", "has_lung": ["1"] * (n - 1) + ["0"], "has_disease": "0",
                  "cache_row": np.arange(n)}).to_csv(folder / "index.csv", index=False)
    np.save(folder / "images.npy", np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8))
    np.save(folder / "lung.npy", lung)
    np.save(folder / "disease.npy", np.zeros((n, size, size), np.uint8))
    (folder / "meta.json").write_text(json.dumps({"size": size, "n": n}))


def test_predict_masks_and_overlay_cases_from_a_cache(tmp_path):
    import torch

    from cmtlib.explain.overlays import load_images, overlay_cases, predict_masks
    from cmtlib.models.registry import create_model

    _write_cache(tmp_path)
    data = load_images(tmp_path, image_ids=["o1", "h1"])
    assert data.image_ids == ["o1", "h1"] and data.has_lung.tolist() == [False, True] and data.images.shape == (2, 64, 64)
    with pytest.raises(KeyError, match="nope"):
        load_images(tmp_path, image_ids=["nope"])
    torch.manual_seed(0)
    model = create_model("cmtnet", width=0.125, encoder_weights="none").train()
    masks = predict_masks(model, data.images, batch_size=1)
    assert set(masks) == {"lung", "disease"} and masks["lung"].shape == (2, 64, 64)
    assert 0 <= masks["lung"].min() and masks["lung"].max() <= 1 and model.training
    lung_only = create_model("cmtnet", tasks=["lung", "multilabel"], width=0.125, encoder_weights="none")
    assert set(predict_masks(lung_only, data.images)) == {"lung"}
    cases = overlay_cases(model, _dice_predictions(), tmp_path, task="lung")
    assert cases.cases["image_id"].tolist() == ["h1", "h4", "h2", "c1", "c1", "c1"]
    assert cases.images.shape == (6, 64, 64) and cases.predicted["disease"].shape == (6, 64, 64)
    assert len(_visible(P.overlay_figure(cases))) == 6


def test_evaluation_figures_entry_point(predictions):
    from cmtlib.metrics import metrics_from_predictions

    df = predictions.assign(patient_id=predictions["image_id"], label_other=0.0, p_other=0.1, lung_dice=np.nan, lung_iou=np.nan,
                            disease_dice=np.nan, disease_iou=np.nan)
    metrics = metrics_from_predictions(df, 0.6, n_boot=20)
    out = P.evaluation_figures(df, metrics)
    assert all(isinstance(out[k], Figure) for k in ("roc", "confusion", "confusion_by_view", "confusion_by_source", "reliability"))
    assert list(out["by_view"]["view"]) == ["AP", "PA"] and len(out["confusion_table_by_source"]) == 2
    y, p = P.known_covid(df.assign(label_covid=np.r_[np.nan, df["label_covid"][1:]]))
    assert len(y) == 49 and len(p) == 49


def test_panel_titles_are_cut_in_the_middle_so_ids_do_not_run_into_each_other():
    from cmtlib.plotting import fit_title

    long = "ieee8023:1-s2.0-S1341321X20301124-gr3_lrg"
    cut = fit_title(f"{long}\nhealthy", 26)
    first, second = cut.split("\n")
    assert len(first) == 26 and first.startswith("ieee8023:1-s") and first.endswith("-gr3_lrg") and "\u2026" in first
    assert second == "healthy" and fit_title("nih:00000001_000", 26) == "nih:00000001_000"
