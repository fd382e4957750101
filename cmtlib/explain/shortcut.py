"""Building blocks of the shortcut audit (cmtlib.experiments.audit; the verdicts: cmtlib.explain.verdicts).

- Blanking: the model's COVID-19 AUC with the lungs blanked out and with everything but the lungs
  blanked out. Lung mask: the network's own outline on every film (`lung_masks`; the reference
  outline where known with ``source="reference"``); images whose mask is empty are left out. Blank
  = fill with the mean grey level of the image's pixels that are kept (``fill="mean"``, the default:
  no artificial black shape for the network to see, and nothing of the blanked region leaks in
  through the fill value) or with zero (``fill="zero"``). Blanked images lie off the training data,
  so a drop alone is weak evidence; a high AUC with the lungs gone is strong evidence of a shortcut.
- `linear_probe`: cross-validated logistic regression of a target (source, view, ...) from the
  embeddings, beside the majority-class rate.
- `thumbnails`: area-averaged thumbnails of images (of a region), the simple floors' input.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from cmtlib.explain.overlays import predict_masks
from cmtlib.inference import image_batches, infer, model_device
from cmtlib.metrics import roc_auc

THUMB = 32  # side of the floors' thumbnails


def blank(images, region, fill: str = "mean") -> np.ndarray:
    """Replace the pixels in ``region`` with the mean of the image's other pixels, or with zero.

    Shape:
        images: (N, H, W) uint8 or float; region: (N, H, W) bool. Returns images' shape and dtype.
    """
    x = np.asarray(images)
    r = np.asarray(region, dtype=bool)
    if r.shape != x.shape:
        raise ValueError(f"region {r.shape} must match images {x.shape}")
    if fill not in ("mean", "zero"):
        raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")
    if fill == "mean":  # the mean of the kept pixels: nothing of the blanked region leaks in through the fill
        kept = (~r).reshape(len(x), -1)
        total = (x.reshape(len(x), -1).astype(np.float64) * kept).sum(axis=1)
        value = (total / np.maximum(kept.sum(axis=1), 1))[:, None, None]
    else:
        value = np.zeros((len(x), 1, 1))
    out = np.where(r, value, x)
    return np.rint(out).astype(x.dtype) if x.dtype == np.uint8 else out.astype(x.dtype)


def blank_lungs(images, lung, fill: str = "mean") -> np.ndarray:
    """The images with the lungs blanked out (see ``blank``)."""
    return blank(images, lung, fill)


def blank_outside_lungs(images, lung, fill: str = "mean") -> np.ndarray:
    """The images with everything but the lungs blanked out (see ``blank``)."""
    return blank(images, ~np.asarray(lung, dtype=bool), fill)


def covid_scores(model: nn.Module, images, batch_size: int = 16) -> np.ndarray:
    """sigmoid(``multilabel``[:, 0]), the COVID-19 probability, in eval mode (cmtlib.inference; the
    encoder and heads only where the model allows it: the decoders' maps are not needed).

    Shape:
        images: (N, H, W) uint8 or float in [0, 1] -> (N,) float64.
    """
    res = infer(model, image_batches(images, batch_size, model_device(model)), heads_only=True)
    if len(res) and np.isnan(res.columns["p_covid"]).all():
        raise KeyError("the model returns no `multilabel` (COVID-19) output to audit")
    return res.columns["p_covid"]


MASK_SOURCES = ("model", "reference")


def lung_masks(model: nn.Module | None, images, lung, has_lung, batch_size: int = 16, source: str = "model") -> tuple[np.ndarray, np.ndarray]:
    """The lung masks the audit blanks with.

    source "model" (the default): the network's own lung output (p >= 0.5) for EVERY film. One mask
    source for all films: reference outlines exist only for some collections, so mixing them with
    predicted ones would make the mask's shape itself a collection cue. "reference": the reference
    outline where known, the network's elsewhere (the older behaviour). Without a lung output the
    reference outlines are used where known.

    Returns:
        (masks (N, H, W) bool, predicted (N,) bool: True where the mask is the model's); masks stay
        empty where unknown and the model has no ``lung`` output.
    """
    if source not in MASK_SOURCES:
        raise ValueError(f"mask source must be one of {', '.join(MASK_SOURCES)}, got {source!r}")
    masks = np.asarray(lung, dtype=bool).copy()
    need = np.ones(len(masks), bool) if source == "model" else ~np.asarray(has_lung, dtype=bool)
    predicted = np.zeros(len(masks), bool)
    if need.any() and model is not None:
        probs = predict_masks(model, np.asarray(images)[need], batch_size).get("lung")
        if probs is not None:
            masks[need] = probs >= 0.5
            predicted[need] = True
    return masks, predicted


def blanking_aucs(model: nn.Module, images, lung, has_lung, y, fill: str = "mean", batch_size: int = 16, source: str = "model",
                  masks: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """(a): COVID-19 AUC on the full images, with the lungs blanked, with all but the lungs blanked
    (lungs from one mask source for every film: `lung_masks`; `masks` passes its result for these
    images when the caller has it already)."""
    y = np.asarray(y, dtype=float)
    keep = ~np.isnan(y)
    images = np.asarray(images)[keep]
    if masks is None:
        masks, predicted = lung_masks(model, images, np.asarray(lung)[keep], np.asarray(has_lung)[keep], batch_size, source)
    else:
        masks, predicted = np.asarray(masks[0])[keep], np.asarray(masks[1])[keep]
    nonempty = masks.any(axis=(1, 2))
    images, masks, yk = images[nonempty], masks[nonempty], y[keep][nonempty].astype(int)
    out = {"n": int(nonempty.sum()), "n_predicted_masks": int(predicted[nonempty].sum()),
           "n_left_out": int((~nonempty).sum()), "fill": fill, "mask_source": source}
    for key, x in (("auc_full", images), ("auc_lungs_blanked", blank_lungs(images, masks, fill)),
                   ("auc_outside_blanked", blank_outside_lungs(images, masks, fill))):
        out[key] = roc_auc(yk, covid_scores(model, x, batch_size)) if len(yk) and 0 < yk.sum() < len(yk) else math.nan
    return out


def linear_probe(emb, target, groups=None, n_splits: int = 5, seed: int = 0) -> dict:
    """(b): cross-validated logistic regression predicting ``target`` from the embeddings.

    Unknown targets ('' / NaN / 'unknown') and classes with fewer than 2 images are left out; folds are
    stratified (and grouped by patient when ``groups`` is given), at most as many as the rarest class.

    Returns:
        dict: n, n_classes, accuracy, majority_rate, auc (binary, or macro one-vs-rest), n_splits, note.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import (
        StratifiedGroupKFold,
        StratifiedKFold,
        cross_val_predict,
    )
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(emb, dtype=np.float64)
    t = pd.Series(list(target), dtype=object).fillna("").astype(str).str.strip()
    known = ~t.isin(["", "nan", "unknown"]).to_numpy()
    counts = t[known].value_counts()
    keep = known & t.isin(counts.index[counts >= 2]).to_numpy()
    out = {"n": int(keep.sum()), "n_classes": int((counts >= 2).sum()), "accuracy": math.nan, "majority_rate": math.nan,
           "auc": math.nan, "n_splits": 0, "note": ""}
    if out["n_classes"] < 2:
        out["note"] = f"only {out['n_classes']} class with 2 or more images: nothing to predict"
        return out
    xk, yk = x[keep], t[keep].to_numpy()
    g = None if groups is None else np.asarray(list(groups), dtype=object)[keep]
    # Every class needs an image (a patient, when grouped) in every fold.
    per_class = counts[counts >= 2] if g is None else pd.Series(g).groupby(yk).nunique()
    k = int(min(n_splits, per_class.min()))
    if k < 2:
        out["note"] = "a class has images of a single patient only: no patient-grouped cross-validation"
        return out
    cv = StratifiedKFold(k, shuffle=True, random_state=seed) if g is None else StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    proba = cross_val_predict(clf, xk, yk, cv=cv, groups=g, method="predict_proba")
    classes = np.unique(yk)
    out.update(accuracy=float((classes[proba.argmax(1)] == yk).mean()), majority_rate=float(counts[counts >= 2].max() / len(yk)),
               n_splits=k, auc=float(roc_auc_score(yk == classes[1], proba[:, 1]) if len(classes) == 2
                                     else roc_auc_score(yk, proba, multi_class="ovr", labels=classes)))
    return out


def thumbnails(images, region=None, size: int = THUMB) -> np.ndarray:
    """Area-averaged ``size`` x ``size`` thumbnails of the images, zero outside ``region``.

    Shape:
        images: (N, H, W) uint8 or float in [0, 1]; region: (N, H, W) bool or None -> (N, size * size).
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if np.asarray(images).dtype == np.uint8:
        x = x / 255.0
    if region is not None:
        x = x * torch.as_tensor(np.asarray(region, dtype=np.float32))
    return torch.nn.functional.adaptive_avg_pool2d(x[:, None], size).flatten(1).numpy().astype(np.float64)
