"""Batches from a cache folder (docs/CONTRACTS.md), served from tensors resident on the device.

A split's uint8 images and masks are copied to the training device once; each step indexes a batch
there, converts it to float, augments it on the device (augment.py) and repeats the grey channel to
three. No DataLoader workers and no host-to-device copies per step, so the GPU is never starved
(the data path costs a gather, a grid_sample and a cast per batch).

Training epochs (the paper's COVID augmentation as oversampling): every training row appears once
per epoch, except COVID rows (label_covid = 1), which appear `covid_oversample` times (6 = the
paper's original + five augmented copies). An epoch therefore has
    n_train + (covid_oversample - 1) * n_covid
draws, shuffled by a permutation seeded from (seed, epoch), cut into global batches of
batch_size x world_size with the incomplete last batch dropped. Each draw gets its own random
rotation/translation, so the copies of one COVID image differ. A fractional oversampling factor
adds one extra copy of a seeded random subset of COVID rows each epoch.

All randomness of an epoch (the permutation and every step's augmentation parameters) comes from
torch.Generator objects seeded from (seed, epoch), so step s of epoch e is the same whether the run
was interrupted or not, and the same global batch is drawn for any number of processes (each rank
takes its slice of it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from cmtlib.errors import ConfigError
from cmtlib.data.augment import apply_affine, draw_affine
from cmtlib.data.cache import CacheError, open_cache
from cmtlib.runtime import DistInfo, generator

SWITCHES = ("has_lung", "has_disease", "has_healthy", "has_covid", "has_other")


@dataclass
class CacheFolder:
    """A cache folder opened read-only: the index and memory-mapped arrays (cmtlib.data.cache)."""

    path: Path
    index: pd.DataFrame  # all cells strings, '' = unknown
    images: np.ndarray  # uint8 (N, S, S), memory-mapped
    lung: np.ndarray
    disease: np.ndarray
    meta: dict

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def rows(self, split: str | None) -> np.ndarray:
        """Cache rows of a split (all rows when split is None), in cache order."""
        if split is None:
            return np.arange(len(self.index))
        if "split" not in self.index.columns:
            raise CacheError(f"{self.path}/index.csv has no split column; split the manifest (cmt data split) and rebuild the cache")
        return np.flatnonzero(self.index["split"].to_numpy() == split)


def open_cache_folder(path: str | os.PathLike) -> CacheFolder:
    """Open a cache folder written by `cmt data cache` (its parts are checked by open_cache)."""
    path = Path(path)
    index, images, lung, disease, meta = open_cache(path)
    return CacheFolder(path, index, images, lung, disease, meta)


def _labels(index: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(value 0/1 with unknown as 0, known mask) of a label column."""
    if column not in index.columns:
        raise CacheError(f"cache index lacks {column}; see DESIGN.md (Manifest)")
    cells = index[column].to_numpy()
    bad = sorted(set(cells) - {"", "0", "1"})
    if bad:
        raise CacheError(f"{column} has values {bad[:5]}; allowed 1, 0 or empty (unknown)")
    return (cells == "1").astype(np.int64), cells != ""


def _flags(index: pd.DataFrame, column: str) -> np.ndarray:
    if column not in index.columns:
        raise CacheError(f"cache index lacks {column} (0/1); rebuild the cache with the current cmtlib")
    return index[column].to_numpy() == "1"


@dataclass
class SplitData:
    """One split's images, masks, labels and switches as tensors on one device."""

    images: torch.Tensor  # uint8 (N, S, S)
    lung: torch.Tensor  # uint8 (N, S, S)
    disease: torch.Tensor  # uint8 (N, S, S)
    targets: dict[str, torch.Tensor]  # healthy long; covid, other float; has_* bool; row long: (N,)
    index: pd.DataFrame  # the split's rows of index.csv, in the same order

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])


def load_split(cache: CacheFolder, split: str | None, device: torch.device | str = "cpu") -> SplitData:
    """Copy a split (or every row, split=None) to `device` once."""
    rows = cache.rows(split)
    index = cache.index.iloc[rows].reset_index(drop=True)
    healthy, has_healthy = _labels(index, "label_healthy")
    covid, has_covid = _labels(index, "label_covid")
    other, has_other = _labels(index, "label_other")
    dev = torch.device(device)

    def put(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=dev, dtype=dtype)

    targets = {
        "healthy": put(healthy, torch.long),
        "covid": put(covid, torch.float32),
        "other": put(other, torch.float32),
        "has_lung": put(_flags(index, "has_lung"), torch.bool),
        "has_disease": put(_flags(index, "has_disease"), torch.bool),
        "has_healthy": put(has_healthy, torch.bool),
        "has_covid": put(has_covid, torch.bool),
        "has_other": put(has_other, torch.bool),
        "row": put(rows.astype(np.int64), torch.long),
    }
    # Fancy indexing a memmap reads just these rows; sorted rows keep the reads sequential.
    return SplitData(put(cache.images[rows], torch.uint8), put(cache.lung[rows], torch.uint8), put(cache.disease[rows], torch.uint8), targets, index)


def make_batch(data: SplitData, idx: torch.Tensor, affine: torch.Tensor | None = None, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """The batch dict of docs/CONTRACTS.md for positions `idx` (a long tensor on data.device).

    Shape:
        image (B, 3, S, S) float in [0, 1]; lung, disease (B, 1, S, S) float 0/1; labels and
        switches (B,).
    """
    image = data.images.index_select(0, idx).unsqueeze(1).float().div_(255.0)  # (B, 1, S, S)
    masks = torch.stack([data.lung.index_select(0, idx), data.disease.index_select(0, idx)], dim=1).float()  # (B, 2, S, S)
    if affine is not None:
        image, masks = apply_affine(image, masks, affine)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batch = {"image": image.expand(-1, 3, -1, -1).contiguous(memory_format=fmt), "lung": masks[:, :1], "disease": masks[:, 1:]}
    for key, value in data.targets.items():
        batch[key] = value.index_select(0, idx)
    return batch


def strata(index: pd.DataFrame) -> np.ndarray:
    """Each row's stratum for balanced sampling: its collection (source) and its COVID-19 label."""
    source = index["source"].astype(str) if "source" in index.columns else pd.Series("", index=index.index)
    return (source + "|" + index["label_covid"].astype(str)).to_numpy()


def stratum_weights(index: pd.DataFrame, cap: int = 20) -> np.ndarray:
    """Per-row draw weights under which every stratum (collection x COVID-19 label) is drawn equally
    often; a stratum of fewer than `cap` films is weighted as if it had `cap`, so two films are not
    repeated eighty times an epoch."""
    st = strata(index)
    counts = pd.Series(st).value_counts()
    return np.array([1.0 / max(int(counts[s]), cap) for s in st], dtype=np.float64)


def mixed_label_rows(index: pd.DataFrame, column: str = "label_covid") -> np.ndarray:
    """True for rows of collections whose known `column` labels take both values in these rows: where
    a label is constant within a collection, learning it teaches the collection, not the disease."""
    known = index[index[column] != ""]
    mixed = {s for s, v in known.groupby("source")[column] if v.nunique() > 1} if "source" in index.columns else set()
    return index["source"].isin(mixed).to_numpy() if "source" in index.columns else np.zeros(len(index), bool)


def keep_covid_loss_within(data: SplitData) -> int:
    """Switch the COVID-19 loss off (has_covid) for films of collections whose known COVID-19 labels
    take one value only in this split (TrainConfig.covid_loss_within); the number of films that keep it."""
    keep = torch.as_tensor(mixed_label_rows(data.index).copy()).to(data.device)
    data.targets["has_covid"] &= keep
    return int(data.targets["has_covid"].sum())


class TrainBatches:
    """Shuffled, oversampled, augmented training batches; `epoch(e)` iterates one epoch."""

    def __init__(
        self,
        data: SplitData,
        batch_size: int,
        *,
        seed: int = 0,
        covid_oversample: float = 1.0,
        rotate_deg: float = 0.0,
        translate_px: float = 0.0,
        dist: DistInfo = DistInfo(),
        channels_last: bool = False,
        weights: np.ndarray | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if covid_oversample < 1:
            raise ConfigError(f"covid_oversample must be >= 1 (1 = no oversampling, 6 = the paper), got {covid_oversample}")
        if len(data) == 0:
            raise CacheError("the training split is empty; split the manifest (cmt data split) so that some rows have split=train")
        self.data, self.batch_size, self.seed, self.dist = data, int(batch_size), int(seed), dist
        self.covid_oversample, self.rotate_deg, self.translate_px = float(covid_oversample), float(rotate_deg), float(translate_px)
        self.channels_last = channels_last
        # Draw weights per row (stratum_weights): an epoch draws epoch_size rows with replacement by them
        # instead of shuffling the split with COVID-19 oversampled.
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        covid = (data.targets["covid"] > 0.5) & data.targets["has_covid"]
        self.covid_positions = torch.nonzero(covid.cpu()).flatten()
        whole = math.floor(self.covid_oversample)
        self.n_extra = round((self.covid_oversample - whole) * len(self.covid_positions))
        self.epoch_size = len(data) + (whole - 1) * len(self.covid_positions) + self.n_extra
        self.global_batch = self.batch_size * dist.world_size
        if self.epoch_size < self.global_batch:
            raise ConfigError(f"an epoch has {self.epoch_size} draws, fewer than one batch of {self.global_batch}; lower batch_size")

    def __len__(self) -> int:
        """Steps per epoch (drop_last)."""
        return self.epoch_size // self.global_batch

    @property
    def images_per_epoch(self) -> int:
        return len(self) * self.global_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """(epoch_size,) positions into the split, COVID rows repeated, shuffled for this epoch (or drawn
        by the balancing weights)."""
        g = generator(self.seed, epoch, 1)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.epoch_size, replacement=True, generator=g)
        whole = math.floor(self.covid_oversample)
        parts = [torch.arange(len(self.data))] + [self.covid_positions] * (whole - 1)
        if self.n_extra:
            parts.append(self.covid_positions[torch.randperm(len(self.covid_positions), generator=g)[: self.n_extra]])
        pool = torch.cat(parts)
        return pool[torch.randperm(len(pool), generator=g)]

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        steps, gb, b, r = len(self), self.global_batch, self.batch_size, self.dist.rank
        order = self.epoch_order(epoch)[: steps * gb].view(steps, gb)[:, r * b : (r + 1) * b]  # (steps, B): this rank's slice
        affine = draw_affine(steps * gb, self.rotate_deg, self.translate_px, generator(self.seed, epoch, 2)).view(steps, gb, 3)[:, r * b : (r + 1) * b]
        augment = self.rotate_deg > 0 or self.translate_px > 0
        # One copy of the epoch's plan to the device; steps then run without host round trips.
        order = order.to(self.data.device, non_blocking=True)
        affine = affine.to(self.data.device, non_blocking=True)
        for s in range(steps):
            yield make_batch(self.data, order[s], affine[s] if augment else None, self.channels_last)


class EvalBatches:
    """In-order batches without augmentation or oversampling; the last batch may be smaller."""

    def __init__(self, data: SplitData, batch_size: int, channels_last: bool = False):
        if batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.channels_last = data, int(batch_size), channels_last

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.data)
        for start in range(0, n, self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, n), device=self.data.device)
            yield make_batch(self.data, idx, None, self.channels_last)
