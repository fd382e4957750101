"""Shortcut audit (page 8): does the COVID-19 score come from the lungs or from cues around them?

(a) Blanking: the model's COVID-19 AUC with the lungs blanked out vs with everything but the lungs
    blanked out. Lung mask: the ground truth where known, else the model's own lung prediction
    (p >= 0.5); images whose mask is empty are left out of all three AUCs. Blank = fill with the
    mean grey level of the image's pixels that are kept (``fill="mean"``, the default: no artificial
    black shape for the network to see, and nothing of the blanked region leaks in through the fill
    value) or with zero (``fill="zero"``). Blanked images lie off the training data, so a
    drop alone is weak evidence; a high AUC with the lungs gone is strong evidence of a shortcut.
(b) Linear probes on the embeddings for source, view and original resolution bucket (the long
    side before caching, from the cache index: thumbnails of 256 px or less, up to 1024, up to
    2048, larger): cross-validated logistic regression accuracy and AUC beside the majority-class
    rate. Caching resizes every film to one size, so a network that can still tell the original
    size (or the collection) has learnt cues that stand in for the label where these differ by class.
(c) Share of CAM mass outside the lungs (page 7's maps).
(d) A trivial floor: logistic regression on 32 x 32 thumbnails of the whole image, of the border
    only (a frame of FRAME of the side, lungs excluded) and of the lungs only, trained on the train
    split and scored on test. On mixed-source data the border alone can score high.
(e) A verdict in words from these numbers, with the thresholds below.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from cmtlib.explain.overlays import load_images, predict_masks
from cmtlib.inference import image_batches, infer, model_device
from cmtlib.metrics import roc_auc

# Verdict thresholds. HIGH_AUC: a floor or blanked-model AUC at or above this "separates the classes
# well". CLOSE: an AUC within this of the model's is "close to" it. PROBE_MARGIN: a probe whose
# accuracy beats the majority-class rate by this much "encodes" its target. CAM_OUTSIDE: a mean share
# of CAM mass outside the lungs at or above this is "mostly outside".
HIGH_AUC = 0.75
SOME_AUC = 0.6  # a border floor from here to HIGH_AUC carries "some" class signal, below it "little"
CLOSE = 0.05
PROBE_MARGIN = 0.15
CAM_OUTSIDE = 0.5
FRAME = 0.125  # border width as a share of the image side
THUMB = 32
# Long side in original pixels: <=256 (stored as a thumbnail, e.g. ChestX-ray14's 64-px copies, which
# are nearly all the healthy films of cxr-public), 257-1024, 1025-2048, >2048.
RESOLUTION_EDGES = (256, 1024, 2048)


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


def resolution_bucket(height, width, edges: Sequence[int] = RESOLUTION_EDGES) -> np.ndarray:
    """Bucket of the original long side (``<=256``, ``257-1024``, ``1025-2048``, ``>2048``); '' where unknown.

    Shape:
        (N,), (N,) -> (N,) strings.
    """
    long = np.fmax(pd.to_numeric(pd.Series(list(height)), errors="coerce").to_numpy(float),
                   pd.to_numeric(pd.Series(list(width)), errors="coerce").to_numpy(float))
    names = [f"<={edges[0]}"] + [f"{a + 1}-{b}" for a, b in itertools.pairwise(edges)] + [f">{edges[-1]}"]
    idx = np.searchsorted(np.asarray(edges), long, side="left")
    return np.where(np.isnan(long), "", np.array(names, dtype=object)[np.clip(idx, 0, len(names) - 1)]).astype(object)


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


def probe_table(emb, predictions: pd.DataFrame, index: pd.DataFrame | None = None,
                targets: Sequence[str] = ("source", "view", "resolution"), seed: int = 0) -> pd.DataFrame:
    """(b) for each target; ``resolution`` reads orig_height / orig_width from the cache ``index``
    (matched by image_id) or from ``predictions``. Folds group images by patient_id when present.

    Returns:
        DataFrame: target, n, n_classes, accuracy, majority_rate, auc, n_splits, note.
    """
    groups = predictions["patient_id"].astype(str).to_numpy() if "patient_id" in predictions.columns else None
    rows = []
    for target in targets:
        if target == "resolution":
            src = predictions
            if index is not None and {"orig_height", "orig_width"} <= set(index.columns):
                src = index.set_index(index["image_id"].astype(str)).reindex(predictions["image_id"].astype(str))
            values = (resolution_bucket(src["orig_height"], src["orig_width"]) if {"orig_height", "orig_width"} <= set(src.columns)
                      else np.full(len(predictions), ""))
        else:
            values = predictions[target].to_numpy() if target in predictions.columns else np.full(len(predictions), "")
        rows.append({"target": target, **linear_probe(emb, values, groups, seed=seed)})
    return pd.DataFrame(rows)


def cam_outside_lungs(per_image: pd.DataFrame) -> pd.DataFrame:
    """(c): mean share of each method's map outside the lungs (1 - mass_in_lung), from page 7's table,
    beside what a uniform map would put there (1 - the lungs' share of the image, same images).

    Returns:
        DataFrame: method, outside_mean, uniform_outside (NaN without ``lung_area``), n (images with a lung mask).
    """
    df = per_image.assign(outside=1.0 - per_image["mass_in_lung"])
    area = df["lung_area"] if "lung_area" in df.columns else pd.Series(np.nan, index=df.index)
    df["uniform"] = (1.0 - area).where(df["outside"].notna())
    g = df.groupby("method", sort=False)
    return pd.DataFrame({"outside_mean": g["outside"].mean(), "uniform_outside": g["uniform"].mean(), "n": g["outside"].count()}).reset_index()


def border_region(lung, frame: float = FRAME) -> np.ndarray:
    """A frame of ``frame`` x side on each edge of the image, lungs excluded.

    Shape:
        lung: (N, H, W) bool -> (N, H, W) bool.
    """
    lung = np.asarray(lung, dtype=bool)
    h, w = lung.shape[-2:]
    fh, fw = max(1, round(frame * h)), max(1, round(frame * w))
    edge = np.ones((h, w), bool)
    edge[fh:h - fh, fw:w - fw] = False
    return edge[None] & ~lung


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


def thumbnail_floor(train_images, train_y, test_images, test_y, train_lung, test_lung, size: int = THUMB,
                    frame: float = FRAME) -> dict:
    """(d): test AUC of logistic regression on thumbnails of the whole image, the border, the lungs.

    Shape:
        *_images: (N, H, W); *_y: (N,) 0/1 (NaN rows dropped); *_lung: (N, H, W) bool.

    Returns:
        dict: whole, border, lung (AUCs; NaN when a split lacks a class), n_train, n_test.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    parts = []
    for imgs, y, lung in ((train_images, train_y, train_lung), (test_images, test_y, test_lung)):
        y = np.asarray(y, dtype=float)
        k = ~np.isnan(y)
        parts.append((np.asarray(imgs)[k], y[k].astype(int), np.asarray(lung, dtype=bool)[k]))
    (xa, ya, la), (xb, yb, lb) = parts
    out: dict = {"n_train": len(ya), "n_test": len(yb)}
    both = 0 < ya.sum() < len(ya) and 0 < yb.sum() < len(yb)
    for name, region in (("whole", lambda lung: None), ("border", lambda lung: border_region(lung, frame)), ("lung", lambda lung: lung)):
        if not both:
            out[name] = math.nan
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(thumbnails(xa, region(la), size), ya)
        out[name] = roc_auc(yb, clf.predict_proba(thumbnails(xb, region(lb), size))[:, 1])
    return out


def _floor_words(model_auc: float, floors: dict) -> tuple[str, bool | None]:
    b, m = floors.get("border", math.nan), model_auc
    if math.isnan(b):
        return "", None
    if b >= HIGH_AUC and not math.isnan(m) and b >= m - CLOSE:
        return (f"The border-only floor reaches AUC {b:.2f}, close to the model's {m:.2f}: the images carry class cues outside "
                "the lungs, so a high AUC here does not show the model reads the lungs."), True
    if b >= HIGH_AUC:
        return (f"The border-only floor reaches AUC {b:.2f} (model {m:.2f}): the image border alone separates the classes "
                "well, so part of the model's AUC may come from outside the lungs."), True
    amount = "some" if b >= SOME_AUC else "little"
    return f"The border-only floor reaches AUC {b:.2f} (model {m:.2f}): the image border alone carries {amount} class signal.", False


def _blanking_words(blanking: dict | None) -> tuple[str, bool | None]:
    if not blanking or math.isnan(blanking.get("auc_lungs_blanked", math.nan)):
        return "", None
    full, lb, ob = blanking["auc_full"], blanking["auc_lungs_blanked"], blanking["auc_outside_blanked"]
    if full < HIGH_AUC:
        return (f"With a full-image AUC of only {full:.2f} the blanking test cannot tell which region the model reads "
                f"(lungs blanked {lb:.2f}, only lungs kept {ob:.2f})."), None
    if lb >= HIGH_AUC:
        words, flag = f"With the lungs blanked out the model still reaches AUC {lb:.2f} (full image {full:.2f}): it uses information outside the lungs.", True
    elif lb <= 1 - HIGH_AUC:
        words, flag = (f"With the lungs blanked out its AUC turns to {lb:.2f} (full image {full:.2f}), far below chance: the blanked "
                       "films still separate the classes, in reverse, so what lies outside the lungs moves its score by class."), True
    else:
        words, flag = f"With the lungs blanked out its AUC falls to {lb:.2f} (full image {full:.2f}).", False
    if ob >= full - CLOSE:
        return words + f" With only the lungs kept it holds its AUC ({ob:.2f}), as expected if it reads the lungs.", flag
    return words + (f" With only the lungs kept its AUC falls to {ob:.2f} (blanked images are unlike the training data, so "
                    "this drop alone is weak evidence)."), flag


def _probe_words(r) -> tuple[str, bool | None]:
    if math.isnan(r["accuracy"]):
        return "", None
    acc, base = r["accuracy"], r["majority_rate"]
    if acc - base >= PROBE_MARGIN:
        return (f"The embedding predicts the {r['target']} (accuracy {acc:.2f} vs {base:.2f} by always guessing the commonest): "
                f"it encodes the {r['target']}, which can stand in for the label where it differs between classes."), True
    return f"The embedding predicts the {r['target']} little better than guessing the commonest ({acc:.2f} vs {base:.2f}).", False


def _cam_words(cam_outside: pd.DataFrame | None) -> tuple[str, bool | None]:
    if cam_outside is None or not len(cam_outside) or not cam_outside["outside_mean"].notna().any():
        return "", None
    top = cam_outside.loc[cam_outside["outside_mean"].idxmax()]
    share, uniform = top["outside_mean"], top.get("uniform_outside", math.nan)
    than = "" if math.isnan(uniform) else f" (a uniform map would put {uniform:.0%} there)"
    if share >= CAM_OUTSIDE and not share < uniform:
        return f"{share:.0%} of the {top['method']} map's mass lies outside the lungs on average{than}.", True
    return f"No CAM method concentrates outside the lungs: at most {share:.0%} of a map's mass lies there ({top['method']}){than}.", False


def verdict(model_auc: float | None, floors: dict, blanking: dict | None = None, probes: pd.DataFrame | None = None,
            cam_outside: pd.DataFrame | None = None) -> str:
    """(e): the audit in plain words, from the numbers (thresholds: module constants).

    A check "points to cues outside the lungs" when: the border floor reaches HIGH_AUC; the model
    keeps HIGH_AUC with the lungs blanked (judged only when its full-image AUC reaches HIGH_AUC);
    or its AUC falls to 1 - HIGH_AUC or below (the blanked films still separate the classes, in
    reverse); a probe beats the majority rate by PROBE_MARGIN; a CAM method puts at least CAM_OUTSIDE of its
    mass outside the lungs and no less than a uniform map would.
    """
    m = math.nan if model_auc is None else float(model_auc)
    parts = [_floor_words(m, floors)]
    if not math.isnan(floors.get("whole", math.nan)):
        whole = f"Thumbnails of the whole image reach AUC {floors['whole']:.2f}, of the lungs alone {floors.get('lung', math.nan):.2f}."
        parts.append((whole, None))
    parts.append(_blanking_words(blanking))
    parts += [_probe_words(r) for _, r in (probes if probes is not None else pd.DataFrame()).iterrows()]
    parts.append(_cam_words(cam_outside))
    flags = [f for _, f in parts if f is not None]
    say = [w for w, _ in parts if w]
    if not say:
        return "No audit numbers were available (no labelled test images with both classes)."
    if flags:
        say.append("Overall: no check points to cues outside the lungs." if not any(flags) else
                   f"Overall: {sum(flags)} of {len(flags)} checks point to cues outside the lungs; read the AUC with that in mind.")
    return " ".join(say)


@dataclass
class ShortcutAudit:
    """Page 8: every part of the audit and the verdict."""

    blanking: dict
    probes: pd.DataFrame
    cam_outside: pd.DataFrame | None
    floors: dict
    verdict: str
    model_auc: float


def shortcut_audit(model: nn.Module, cache_dir: str | os.PathLike, embeddings=None, predictions: pd.DataFrame | None = None,
                   cam_per_image: pd.DataFrame | None = None, model_auc: float | None = None, fill: str = "mean",
                   test_split: str = "test", train_split: str = "train", max_train: int = 2000, batch_size: int = 16,
                   seed: int = 0) -> ShortcutAudit:
    """Page 8 entry point: (a)-(e) on a run's cache folder and artefacts.

    Args:
        embeddings, predictions: the run's embeddings.npy and predictions.csv (row-aligned) for the
            probes; None skips them.
        cam_per_image: page 7's ``CamComparison.per_image`` for (c); None skips it.
        model_auc: the model's test COVID-19 AUC (metrics.json covid.auc); default: blanking's full AUC.
        max_train: a seeded random subset of the train split above this many images (floors).
    """
    test = load_images(cache_dir, test_split)
    train = load_images(cache_dir, train_split)
    if len(train.images) > max_train:
        train = train.take(np.sort(np.random.default_rng(seed).choice(len(train.images), max_train, replace=False)))
    test_masks = lung_masks(model, test.images, test.lung, test.has_lung, batch_size)  # one pass, for (a) and the floors
    blanking = blanking_aucs(model, test.images, test.lung, test.has_lung, test.labels(), fill, batch_size, masks=test_masks)
    train_lungs = lung_masks(model, train.images, train.lung, train.has_lung, batch_size)[0]
    floors = thumbnail_floor(train.images, train.labels(), test.images, test.labels(), train_lungs, test_masks[0])
    probes = (probe_table(embeddings, predictions, test.index, seed=seed) if embeddings is not None and predictions is not None
              else pd.DataFrame(columns=["target", "n", "n_classes", "accuracy", "majority_rate", "auc", "n_splits", "note"]))
    cam_out = cam_outside_lungs(cam_per_image) if cam_per_image is not None else None
    auc = blanking["auc_full"] if model_auc is None else float(model_auc)
    return ShortcutAudit(blanking, probes, cam_out, floors, verdict(auc, floors, blanking, probes, cam_out), auc)
