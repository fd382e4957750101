"""Embedding classifiers (paper Table IV's "CMTNet Embedding + SVM / RDF"): selection on validation,
scores in the predictions.csv shape, metrics, determinism, and the embeddings they read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cmtlib.experiments.embedding_classifiers import (
    EMBEDDING_CLASSIFIERS,
    KERNEL_NOTE,
    EmbeddingSplit,
    evaluated_embeddings,
    extract_embeddings,
    fit_embedding_classifier,
    run_embedding_classifiers,
    select_hyperparameters,
)
from cmtlib.metrics import metrics_from_predictions
from cmtlib.metrics.operating import choose_thresholds
from cmtlib.models.registry import create_model
from test_loader import write_toy_cache

KINDS = tuple(EMBEDDING_CLASSIFIERS)


def split(n: int, seed: int, shift: float = 4.0, d: int = 6, prefix: str = "") -> EmbeddingSplit:
    """Gaussian embeddings; COVID shifts the first dimension by `shift`, healthy (a third of the
    negatives) the second the other way; the rest is noise."""
    rng = np.random.default_rng(seed)
    covid = np.arange(n) % 3 == 0
    healthy = ~covid & (np.arange(n) % 3 == 1)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb[covid, 0] += shift
    emb[healthy, 1] -= shift
    index = pd.DataFrame({
        "image_id": [f"{prefix}{i}" for i in range(n)], "patient_id": [f"{prefix}p{i}" for i in range(n)],
        "source": "toy", "view": "PA", "label_covid": np.where(covid, "1", "0"), "label_healthy": np.where(healthy, "1", "0"),
        "label_other": np.where(~covid & ~healthy, "1", "0"), "split": prefix.rstrip(":"),
    })
    return EmbeddingSplit(emb, index)


@pytest.fixture(scope="module")
def data():
    return {"train": split(90, 0, prefix="train:"), "val": split(60, 1, prefix="val:"), "test": split(60, 2, prefix="test:")}


def test_the_gaussian_rbf_note_is_stated():
    assert "Gaussian" in KERNEL_NOTE and "RBF" in KERNEL_NOTE and "sigmoid" in KERNEL_NOTE
    assert "scikit-learn" in KERNEL_NOTE and "polynomial" in KERNEL_NOTE and "linear" in KERNEL_NOTE
    assert set(KINDS) == {"svm_sigmoid", "svm_rbf", "svm_poly", "svm_linear", "random_forest"}


@pytest.mark.parametrize("kind", KINDS)
def test_separable_embeddings_give_a_high_auc(kind, data):
    res = fit_embedding_classifier(kind, data["train"], data["val"], data["test"], "specificity:0.9", seed=0)
    assert res.val_auc >= 0.95 and res.search and res.params in [p["params"] for p in res.search]
    assert res.val_auc == max(p["val_auc"] for p in res.search)
    # It decides by the rule it was given, on its own validation scores, as every compared classifier does.
    assert res.threshold == choose_thresholds(res.val, "specificity:0.9")
    assert (res.test["pred_covid"] == (res.test["p_covid"] >= res.threshold["covid_threshold"]).astype(int)).all()
    metrics = metrics_from_predictions(res.test, res.threshold["spec99_threshold"], operating_threshold=res.threshold["covid_threshold"], n_boot=20)
    assert metrics["covid"]["auc"] >= 0.95
    assert metrics["covid"]["eer"] <= 0.1
    assert 0.0 <= metrics["covid"]["sens_at_spec99"] <= 1.0
    # One-vs-rest healthy / other scores and calibrated probabilities in the predictions.csv shape.
    assert list(res.test["image_id"]) == list(data["test"].index["image_id"])
    for col in ("p_covid", "p_healthy", "p_other"):
        p = res.test[col].to_numpy(dtype=float)
        assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all(), col
    assert metrics["healthy"]["accuracy"] >= 0.8 and metrics["covid"]["accuracy"] >= 0.85


def test_hyperparameters_are_chosen_on_validation():
    """Train: COVID separable along x2 with a margin, but the class means also differ along x1.
    A tiny C gives w ~ sum(y_i x_i) (the mean difference: mostly x1); a large C the max-margin
    direction (x2). A validation split labelled by x2 must choose the large C, one labelled by x1
    the small C."""
    rng = np.random.default_rng(0)
    n = 200
    y = np.arange(n) % 2
    x = np.stack([rng.normal(np.where(y == 1, 2.0, -2.0), 3.0), np.where(y == 1, 1.0, -1.0) + rng.normal(0, 0.1, n)], axis=1)
    xv = rng.normal(size=(n, 2))
    by_x2, by_x1 = (xv[:, 1] > 0).astype(int), (xv[:, 0] > 0).astype(int)
    grid = {"C": [1e-4, 100.0]}
    c_x2, auc_x2, search_x2 = select_hyperparameters("svm_linear", x, y, xv, by_x2, grid)
    c_x1, auc_x1, search_x1 = select_hyperparameters("svm_linear", x, y, xv, by_x1, grid)
    assert c_x2 == {"C": 100.0} and c_x1 == {"C": 1e-4}
    assert auc_x2 > search_x2[0]["val_auc"] and auc_x1 > search_x1[1]["val_auc"]


def test_selection_refuses_a_validation_split_with_one_class(data):
    x, idx = data["train"]
    with pytest.raises(ValueError, match="validation split needs COVID-positive and COVID-negative"):
        select_hyperparameters("svm_linear", x, np.arange(len(x)) % 2, x, np.zeros(len(x)), {"C": [1.0]})


def test_results_repeat_for_a_seed_and_files_are_written(data, tmp_path):
    a = run_embedding_classifiers(data, "specificity:0.95", kinds=("random_forest", "svm_rbf"), seed=3, n_boot=20, out_dir=tmp_path / "a")
    b = run_embedding_classifiers(data, "specificity:0.95", kinds=("random_forest", "svm_rbf"), seed=3, n_boot=20)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["classifier"]) == ["random_forest", "svm_rbf"]
    assert (a["covid_auc"] >= 0.95).all() and a["covid_auc_ci_low"].notna().all()
    sel = json.loads((tmp_path / "a" / "svm_rbf" / "selection.json").read_text())
    assert sel["note"] == KERNEL_NOTE and sel["params"] == json.loads(a.loc[1, "params"])
    preds = pd.read_csv(tmp_path / "a" / "svm_rbf" / "predictions.csv")
    assert len(preds) == 60 and {"p_covid", "pred_covid", "label_covid", "split"} <= set(preds.columns)
    assert json.loads((tmp_path / "a" / "random_forest" / "metrics.json").read_text())["covid"]["auc"] == pytest.approx(a.loc[0, "covid_auc"])


def test_unknown_labels_are_left_out_and_a_one_class_label_stays_empty(data):
    train = data["train"]
    index = train.index.copy()
    index.loc[:9, "label_covid"] = ""  # unknown: not used for fitting
    index["label_other"] = "0"  # one class only: no model, p_other empty
    res = fit_embedding_classifier("svm_linear", EmbeddingSplit(train.emb, index), data["val"], data["test"], "specificity:0.95")
    assert res.test["p_other"].isna().all() and res.test["p_covid"].notna().all()


def test_extract_embeddings_follow_the_cache_order(tmp_path):
    cache = write_toy_cache(tmp_path / "cache", n=20, size=32)
    torch.manual_seed(0)
    model = create_model("resnet18", width=1.0, encoder_weights="none", head_hidden=8)
    emb, index = extract_embeddings(model, cache, "val", "cpu", batch_size=3)
    assert emb.shape == (len(index), 512) and emb.dtype == np.float32 and len(index) == 4
    assert (index["split"] == "val").all()
    assert model.training  # extract_embeddings ran it in eval mode and gave it back as it was
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.load(cache / "images.npy")[index["cache_row"].astype(int).to_numpy()]).float().div(255)
        direct = model(x[:, None].expand(-1, 3, -1, -1))["embedding"].numpy()
    np.testing.assert_allclose(emb, direct, rtol=1e-4, atol=1e-5)


def test_evaluated_embeddings_group_rows_by_split(tmp_path, data):
    rows = pd.concat([data[s].index for s in ("train", "val", "test")], ignore_index=True)
    emb = np.concatenate([data[s].emb for s in ("train", "val", "test")])
    rows.to_csv(tmp_path / "predictions.csv", index=False)
    np.save(tmp_path / "embeddings.npy", emb)
    back = evaluated_embeddings(tmp_path)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(back[s].emb, data[s].emb)
        assert list(back[s].index["image_id"]) == list(data[s].index["image_id"])
    rows[rows["split"] != "test"].to_csv(tmp_path / "predictions.csv", index=False)
    np.save(tmp_path / "embeddings.npy", emb[: len(rows[rows["split"] != "test"])])
    with pytest.raises(ValueError, match="--split all"):
        evaluated_embeddings(tmp_path)
