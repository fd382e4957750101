"""t-SNE / UMAP maps of embeddings and the labels they are coloured by."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cmtlib.explain import embeddings as E

pytest.importorskip("sklearn")


def _emb(n=24, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return rng.normal(size=(n, d)) + 4.0 * y[:, None], y


def _predictions(y):
    n = len(y)
    return pd.DataFrame({"image_id": [f"syn:{i}" for i in range(n)], "label_covid": y.astype(float),
                         "label_healthy": (1 - y).astype(float), "label_other": np.zeros(n),
                         "pred_covid": np.r_[y[:-1], 1 - y[-1]], "p_healthy": (1 - y) * 0.9, "p_other": np.full(n, 0.1)})


def test_tsne_shape_determinism_and_small_n():
    x, y = _emb()
    a, b = E.tsne(x, seed=3), E.tsne(x, seed=3)
    assert a.shape == (24, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # well-separated clusters stay apart: each point's nearest neighbour shares its cluster
    d = ((a[:, None] - a[None]) ** 2).sum(-1) + np.eye(len(a)) * 1e9
    assert (y[d.argmin(1)] == y).mean() == 1.0
    assert E.tsne(x[:5], seed=0, perplexity=30).shape == (5, 2)  # perplexity clipped to (5 - 1) / 3
    with pytest.raises(ValueError, match="at least 3"):
        E.tsne(x[:2])


def test_umap_shape_and_determinism():
    pytest.importorskip("umap")
    x, _ = _emb(n=30)
    a, b = E.umap_embed(x, seed=1), E.umap_embed(x, seed=1)
    assert a.shape == (30, 2)
    np.testing.assert_allclose(a, b)


def test_umap_missing_returns_none(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)
    x, _ = _emb()
    assert E.umap_embed(x) is None


def test_labels_true_and_predicted():
    _, y = _emb(n=6)
    pred = _predictions(y)
    assert E.true_labels(pred).tolist() == ["non-COVID", "COVID-19"] * 3
    assert E.predicted_labels(pred).tolist()[-1] == "non-COVID"  # the last one is wrong on purpose
    cls = E.predicted_labels(pred, "class")
    assert cls.tolist()[:2] == ["healthy", "COVID-19"]
    pred.loc[0, "label_covid"] = np.nan
    pred.loc[0, "label_healthy"] = np.nan
    assert E.true_labels(pred)[0] == E.UNKNOWN
    no_healthy_head = pred.drop(columns="p_healthy").assign(p_other=0.7)
    assert E.predicted_labels(no_healthy_head, "class")[0] == "other disease"


def test_embedding_maps_without_umap(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)
    x, y = _emb()
    maps = E.embedding_maps(x, _predictions(y), seed=0)
    assert not maps.umap_available and "umap-learn" in maps.note
    assert list(maps.frame.columns) == ["image_id", "true", "predicted", "tsne_x", "tsne_y", "umap_x", "umap_y"]
    assert maps.frame["umap_x"].isna().all() and maps.frame["tsne_x"].notna().all()
    sub = E.embedding_maps(x, _predictions(y), max_points=10)
    assert len(sub.frame) == 10 and "10 of 24" in sub.note
    with pytest.raises(ValueError, match="row-aligned"):
        E.embedding_maps(x[:5], _predictions(y))


def test_load_run_embeddings(tmp_path):
    from cmtlib.run import Evaluation

    x, y = _emb(n=6)
    rows = _predictions(y).assign(split=["test"] * 4 + ["val"] * 2, cache_row=range(6))
    Evaluation(tmp_path).write(predictions=rows, embeddings=x.astype(np.float32))
    emb, pred = E.load_run_embeddings(tmp_path, split="test")
    assert emb.shape == (4, 8) and len(pred) == 4
    np.save(Evaluation(tmp_path).embeddings_path, x[:3])
    with pytest.raises(ValueError, match="re-run"):
        E.load_run_embeddings(tmp_path)
