"""Embedding maps (page 4, the paper's Fig. 10): t-SNE and UMAP of the test embeddings, coloured by
true and by predicted label.

Labels: ``covid`` (the paper's COVID / Non-COVID; predicted at the validation threshold, the
``pred_covid`` column) or ``class`` (COVID-19 / healthy / other disease; predicted: COVID-19 where
pred_covid = 1, else healthy where p_healthy >= 0.5, else other disease; a model without a healthy
head: other disease where p_other >= 0.5, else healthy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmtlib.errors import MissingInputError
from cmtlib.run import Evaluation
from cmtlib.explain.overlays import true_class

UNKNOWN = "(unknown)"


def _matrix(emb) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values; drop those rows first")
    if len(x) < 3:
        raise ValueError(f"a 2-D map needs at least 3 embeddings, got {len(x)}")
    return x


def tsne(emb, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE (scikit-learn, PCA initialisation) to 2-D; the same seed gives the same map.

    The perplexity is clipped to (N - 1) / 3 for small N (t-SNE needs perplexity < N; a third
    keeps each point's neighbourhood well inside the data).

    Shape:
        emb: (N, D), N >= 3 -> (N, 2) float32.
    """
    from sklearn.manifold import TSNE

    x = _matrix(emb)
    p = float(min(perplexity, max(1.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=p, init="pca", random_state=seed).fit_transform(x).astype(np.float32)


def umap_embed(emb, seed: int = 0, n_neighbors: int = 15) -> np.ndarray | None:
    """UMAP (umap-learn) to 2-D, or None when umap-learn is not installed (the page says so).

    A seed makes umap-learn run single-threaded, so the same seed gives the same map.
    ``n_neighbors`` is clipped to N - 1.

    Shape:
        emb: (N, D), N >= 3 -> (N, 2) float32.
    """
    try:
        import umap
    except ImportError:
        return None
    x = _matrix(emb)
    reducer = umap.UMAP(n_components=2, n_neighbors=int(min(n_neighbors, len(x) - 1)), random_state=seed, n_jobs=1)
    return reducer.fit_transform(x).astype(np.float32)


def _numeric(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col].replace("", np.nan), errors="coerce").to_numpy(dtype=float)


def true_labels(predictions: pd.DataFrame, labels: str = "covid") -> np.ndarray:
    """True label names per row (module docstring); UNKNOWN where the label is unknown."""
    if labels == "covid":
        y = _numeric(predictions, "label_covid")
        return np.where(np.isnan(y), UNKNOWN, np.where(y == 1, "COVID-19", "non-COVID")).astype(object)
    if labels == "class":
        return true_class(predictions).replace("", UNKNOWN).to_numpy(dtype=object)
    raise ValueError(f"labels must be 'covid' or 'class', got {labels!r}")


def predicted_labels(predictions: pd.DataFrame, labels: str = "covid") -> np.ndarray:
    """Predicted label names per row (module docstring); UNKNOWN where there is no decision."""
    covid = _numeric(predictions, "pred_covid")
    if labels == "covid":
        return np.where(np.isnan(covid), UNKNOWN, np.where(covid == 1, "COVID-19", "non-COVID")).astype(object)
    if labels != "class":
        raise ValueError(f"labels must be 'covid' or 'class', got {labels!r}")
    ph, po = _numeric(predictions, "p_healthy"), _numeric(predictions, "p_other")
    rest = np.where(~np.isnan(ph), np.where(ph >= 0.5, "healthy", "other disease"),
                    np.where(~np.isnan(po), np.where(po >= 0.5, "other disease", "healthy"), UNKNOWN))
    return np.where(np.isnan(covid), UNKNOWN, np.where(covid == 1, "COVID-19", rest)).astype(object)


def load_run_embeddings(run_dir: str | os.PathLike, split: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """A run's evaluated embeddings and predictions (cmtlib.run.Evaluation), checked to be row-aligned.

    Returns:
        (embeddings (N, D) float32, predictions DataFrame of N rows), optionally one split only.
    """
    done = Evaluation(run_dir)
    found = done.embeddings()
    if found is None or done.predictions is None:
        raise MissingInputError(f"{done.path} holds no evaluated embeddings; run `cmt evaluate {done.path}` first (a model without an "
                                "`embedding` output writes none)")
    emb = found[0]
    pred = pd.read_csv(done.path / Evaluation.PREDICTIONS, dtype={"image_id": str, "source": str, "view": str}, keep_default_na=False,
                       na_values=[""])
    if len(emb) != len(pred):
        raise ValueError(f"{done.path}: {len(emb)} embeddings but {len(pred)} predictions; re-run `cmt evaluate`")
    if split is not None and "split" in pred.columns:
        keep = (pred["split"] == split).to_numpy()
        emb, pred = emb[keep], pred[keep].reset_index(drop=True)
    return emb, pred


@dataclass
class EmbeddingMaps:
    """Page 4: one row per image with its labels and 2-D coordinates (umap_* NaN without umap-learn)."""

    frame: pd.DataFrame  # image_id, true, predicted, tsne_x, tsne_y, umap_x, umap_y
    umap_available: bool
    note: str
    settings: dict


def embedding_maps(emb, predictions: pd.DataFrame, labels: str = "covid", seed: int = 0, perplexity: float = 30.0,
                   n_neighbors: int = 15, max_points: int | None = 5000) -> EmbeddingMaps:
    """Page 4 entry point: t-SNE and UMAP of the embeddings with true and predicted labels.

    Args:
        emb: (N, D) embeddings, rows in ``predictions`` order (a run's embeddings.npy).
        predictions: predictions.csv rows.
        labels: ``covid`` or ``class`` (module docstring).
        max_points: a seeded random subset above this many images (t-SNE grows as N log N).
    """
    if emb is None:
        raise ValueError("no embeddings: the model gives no `embedding` output, so there is nothing to map")
    x = np.asarray(emb)
    if len(x) != len(predictions):
        raise ValueError(f"{len(x)} embeddings but {len(predictions)} prediction rows; pass them row-aligned")
    keep = np.arange(len(x))
    if max_points is not None and len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
    x, pred = x[keep], predictions.iloc[keep].reset_index(drop=True)
    t = tsne(x, seed, perplexity)
    u = umap_embed(x, seed, n_neighbors)
    frame = pd.DataFrame({"image_id": pred["image_id"].astype(str) if "image_id" in pred.columns else np.arange(len(x)).astype(str),
                          "true": true_labels(pred, labels), "predicted": predicted_labels(pred, labels),
                          "tsne_x": t[:, 0], "tsne_y": t[:, 1],
                          "umap_x": u[:, 0] if u is not None else np.nan, "umap_y": u[:, 1] if u is not None else np.nan})
    note = "" if u is not None else "UMAP not shown: umap-learn is not installed (pip install umap-learn)."
    if len(keep) < len(predictions):
        note = (note + " " if note else "") + f"A random {len(keep)} of {len(predictions)} images are shown (seed {seed})."
    settings = {"seed": seed, "perplexity": float(min(perplexity, max(1.0, (len(x) - 1) / 3.0))),
                "n_neighbors": int(min(n_neighbors, len(x) - 1)), "n": len(x), "labels": labels}
    return EmbeddingMaps(frame, u is not None, note, settings)

