"""Segmentation overlays (page 5): best / median / worst cases by Dice per class, predicted masks.

Also the shared image access of the explain pages: ``load_images`` reads a cache folder's rows
(docs/CONTRACTS.md) into plain arrays, and ``predict_masks`` runs a model's segmentation outputs.
Cases are named by ``image_id`` only, never by file path or file name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from cmtlib.data.cache import open_cache
from cmtlib.inference import SEG_TASKS, image_batches, infer, model_device

CLASSES = ("healthy", "COVID-19", "other disease")
RANKS = ("best", "median", "worst")


@dataclass
class ImageSet:
    """Images and masks of some cache rows, as plain arrays (the explain pages' common input).

    Shape:
        images: (N, S, S) uint8; lung, disease: (N, S, S) bool (all False where unknown);
        has_lung, has_disease: (N,) bool; index: the N rows of the cache's index.csv (strings).
    """

    images: np.ndarray
    lung: np.ndarray
    disease: np.ndarray
    has_lung: np.ndarray
    has_disease: np.ndarray
    index: pd.DataFrame

    @property
    def image_ids(self) -> list[str]:
        return self.index["image_id"].astype(str).tolist()

    def labels(self, column: str = "label_covid") -> np.ndarray:
        """A label column as floats: 1.0, 0.0, NaN for unknown."""
        return pd.to_numeric(self.index[column].replace("", np.nan), errors="coerce").to_numpy(dtype=float)

    def take(self, positions) -> ImageSet:
        p = np.asarray(positions, dtype=int)
        return ImageSet(self.images[p], self.lung[p], self.disease[p], self.has_lung[p], self.has_disease[p],
                        self.index.iloc[p].reset_index(drop=True))


def load_images(cache_dir: str | os.PathLike, split: str | None = None, image_ids: Sequence[str] | None = None) -> ImageSet:
    """Rows of a cache folder: one split (``split``), given ``image_ids`` (in that order), or all.

    Raises:
        KeyError: an image_id that the cache does not hold (the message names them).
    """
    index, images, lung, disease, _ = open_cache(cache_dir)
    if image_ids is not None:
        pos = pd.Series(np.arange(len(index)), index=index["image_id"].astype(str))
        missing = [i for i in map(str, image_ids) if i not in pos.index]
        if missing:
            raise KeyError(f"{len(missing)} image_id(s) not in the cache {cache_dir}: {missing[:5]}; "
                           "was it built from the same manifest as the run?")
        rows = pos.loc[[str(i) for i in image_ids]].to_numpy()
    elif split is not None:
        rows = np.flatnonzero(index["split"].to_numpy() == split)
    else:
        rows = np.arange(len(index))

    def flag(column: str) -> np.ndarray:
        return (index[column].to_numpy()[rows] == "1") if column in index.columns else np.zeros(len(rows), bool)

    return ImageSet(np.asarray(images[rows]), np.asarray(lung[rows]).astype(bool), np.asarray(disease[rows]).astype(bool),
                    flag("has_lung"), flag("has_disease"), index.iloc[rows].reset_index(drop=True))


def predict_masks(model: nn.Module, images, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Segmentation probabilities (sigmoid of ``lung`` / ``disease``) for the outputs the model has,
    through cmtlib.inference (eval mode, no gradients; the model's mode is restored).

    Shape:
        images: (N, H, W) uint8 or float in [0, 1] (or (N, 1|3, H, W)).
        returns: {"lung": (N, H, W), "disease": (N, H, W)} float32, only keys the model outputs.
    """
    res = infer(model, image_batches(images, batch_size, model_device(model)), maps=SEG_TASKS)
    return {k: v.astype(np.float32) for k, v in res.maps.items()}


def true_class(df: pd.DataFrame) -> pd.Series:
    """One class per row from label_covid / label_healthy / label_other (COVID-19 first), or ''."""
    def one(c):
        return pd.to_numeric(df[c].replace("", np.nan), errors="coerce").eq(1) if c in df.columns else pd.Series(False, index=df.index)

    out = pd.Series("", index=df.index, dtype=object)
    for col, name in (("label_other", "other disease"), ("label_healthy", "healthy"), ("label_covid", "COVID-19")):
        out[one(col)] = name
    return out


def select_cases(predictions: pd.DataFrame, task: str = "lung", classes: Sequence[str] = CLASSES,
                 ranks: Sequence[str] = RANKS) -> pd.DataFrame:
    """Best, median and worst image by ``{task}_dice`` within each class (images with a Dice only).

    The median case is the image whose Dice is nearest the class median; among equally near ones, the
    one nearest the middle of the ranking, then the lower Dice.
    A class without any Dice (e.g. healthy for disease: its ground truth is empty) is left out.

    Returns:
        DataFrame: class, rank, image_id, dice, and cache_row when predictions has it.
    """
    col = f"{task}_dice"
    if col not in predictions.columns:
        raise KeyError(f"predictions lack {col}; see docs/CONTRACTS.md (predictions.csv)")
    df = predictions.assign(_class=true_class(predictions), _dice=pd.to_numeric(predictions[col], errors="coerce"))
    rows = []
    for cls in classes:
        g = df[(df["_class"] == cls) & df["_dice"].notna()].sort_values(["_dice", "image_id"], ascending=[False, True], kind="mergesort")
        if g.empty:
            continue
        d = g["_dice"].to_numpy()
        dist = np.abs(d - np.median(d))
        # Of the images nearest the median Dice, the one nearest the middle of the ranking, so that a
        # run of equal values (many Dice 0) does not make the median case the worst one; on a tie the lower Dice.
        ties, mid = np.flatnonzero(dist == dist.min()), (len(g) - 1) / 2
        pick = {"best": 0, "median": int(max(ties, key=lambda i: (-abs(i - mid), i))), "worst": len(g) - 1}
        for rank in ranks:
            r = g.iloc[pick[rank]]
            row = {"class": cls, "rank": rank, "image_id": str(r["image_id"]), "dice": float(r["_dice"])}
            if "cache_row" in g.columns:
                row["cache_row"] = int(r["cache_row"])
            rows.append(row)
    return pd.DataFrame(rows, columns=["class", "rank", "image_id", "dice"] + (["cache_row"] if "cache_row" in df.columns else []))


@dataclass
class OverlayCases:
    """Page 5: the selected cases with their images, true masks and predicted probabilities.

    Shape:
        images: (K, S, S) uint8; true: task -> (K, S, S) bool; known: task -> (K,) bool;
        predicted: task -> (K, S, S) float32 probabilities (tasks the model outputs).
    """

    cases: pd.DataFrame  # class, rank, image_id, dice (K rows)
    images: np.ndarray
    true: dict[str, np.ndarray]
    known: dict[str, np.ndarray]
    predicted: dict[str, np.ndarray]
    task: str


def overlay_cases(model: nn.Module, predictions: pd.DataFrame, cache_dir: str | os.PathLike, task: str = "lung",
                  batch_size: int = 8) -> OverlayCases:
    """Page 5 entry point: choose the cases (``select_cases``), read them from the cache folder by
    image_id and predict their lung and disease masks."""
    cases = select_cases(predictions, task)
    data = load_images(cache_dir, image_ids=cases["image_id"].tolist())
    predicted = predict_masks(model, data.images, batch_size) if len(cases) else {}
    return OverlayCases(cases, data.images, {"lung": data.lung, "disease": data.disease},
                        {"lung": data.has_lung, "disease": data.has_disease}, predicted, task)
