"""Films with known truth: what the explanation measures are scored against.

A run trained on synthetic phantoms (cmtlib.data.synth) has, beside its data, every film's full
lung and lesion masks and its lesion twin: the same film with only the lesion removed (docs/CONTRACTS.md,
"Synthetic truth, twins and cues"). `truth_films(run)` gives the run's COVID-19 films of one split
that have a lung-field lesion, at the run's image size, exactly as the model saw them (the cache's
rows), with the truth masks and the twins resized the way the cache resizes. A run on real
collections has no truth: None, and the pages say that lesion agreement cannot be measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cmtlib.data.cache import resize_image
from cmtlib.data.io import read_image, read_mask
from cmtlib.data.synth import read_truth, read_twins
from cmtlib.explain.overlays import load_images
from cmtlib.run import Run

EARLY_DAYS = 3  # COVID-19 opacities are faint up to day 3 after admission (cmtlib.data.synth.cohort)
INDEX_COLUMNS = ("image_id", "patient_id", "offset_days", "early", "lesion_area", "severity", "source", "view", "split")


@dataclass
class TruthFilms:
    """COVID-19 films with a lesion and their truth, at the run's image size.

    Shape:
        images, twins: (N, S, S) uint8 (twins: the same films with the lesion removed);
        lesion, lung: (N, S, S) bool; index: N rows (image_id, patient_id, offset_days, early,
        lesion_area at this size, severity, source, view, split).
    """

    images: np.ndarray
    twins: np.ndarray
    lesion: np.ndarray
    lung: np.ndarray
    index: pd.DataFrame

    def __len__(self) -> int:
        return len(self.images)

    @property
    def patients(self) -> np.ndarray:
        return self.index["patient_id"].astype(str).to_numpy()

    @property
    def early(self) -> np.ndarray:
        return self.index["early"].to_numpy(dtype=bool)

    def take(self, positions) -> TruthFilms:
        p = np.asarray(positions, dtype=int)
        return TruthFilms(self.images[p], self.twins[p], self.lesion[p], self.lung[p], self.index.iloc[p].reset_index(drop=True))


def read_resized(path: str, size: int) -> np.ndarray:
    """An image file (a twin) at the run's image size, resized the way the cache resizes."""
    image, _ = read_image(path)
    return resize_image(image, size)


def _mask(path: str, size: int) -> np.ndarray:
    with Image.open(path) as im:
        width, height = im.size
    return read_mask(path, (height, width), out_shape=(size, size))


def truth_films(run: Run, split: str = "test", cap: int = 0, seed: int = 0) -> TruthFilms | None:
    """The run's COVID-19 films of `split` with a lung-field lesion and a lesion twin, with their truth;
    `cap` > 0 keeps a seeded sample of that many (all when fewer). None when the run's data has no truth.

    The lesion mask is resized like the cache's masks (area, then half), so a lesion of a few pixels
    at the stored size may vanish at a small image size: such films are left out.
    """
    found = run_truth(run)
    if found is None:
        return None
    cache, truth, twins = found
    lesion_twins = twins[twins["removed"] == "lesion"].set_index("twin_of")["path"]
    truth = truth[(truth["split"] == split) & (truth["kind"] == "covid") & (truth["lesion"] != "")]
    truth = truth[truth["image_id"].isin(lesion_twins.index)].reset_index(drop=True)
    if cap and len(truth) > cap:
        truth = truth.sample(n=cap, random_state=seed).sort_index().reset_index(drop=True)
    films = load_images(cache, image_ids=truth["image_id"].tolist())
    size = films.images.shape[-1]
    if not len(truth):
        empty = np.zeros((0, size, size), bool)
        return TruthFilms(films.images, films.images, empty, empty, pd.DataFrame(columns=INDEX_COLUMNS))
    lesion = np.stack([_mask(p, size) for p in truth["lesion"]])
    lung = np.stack([_mask(p, size) for p in truth["lung"]])
    twin_images = np.stack([read_resized(lesion_twins[i], size) for i in truth["image_id"]])
    days = pd.to_numeric(films.index["offset_days"].replace("", np.nan), errors="coerce")
    index = pd.DataFrame({
        "image_id": truth["image_id"], "patient_id": films.index["patient_id"].astype(str).to_numpy(),
        "offset_days": days.to_numpy(), "early": (days <= EARLY_DAYS).to_numpy(),
        "lesion_area": lesion.mean(axis=(1, 2)), "severity": truth["severity"].to_numpy(),
        "source": truth["source"], "view": truth["view"], "split": split,
    })
    keep = np.flatnonzero(lesion.any(axis=(1, 2)))
    return TruthFilms(films.images, twin_images, lesion, lung, index).take(keep)


def run_truth(run: Run) -> tuple[Path, pd.DataFrame, pd.DataFrame] | None:
    """(the run's cache folder, truth.csv, twins.csv) of the data the run's cache was built from;
    None for real collections, or a cache carried without its manifest (a GPU machine)."""
    from cmtlib.fileio import read_json

    cache = run.cache_dir()
    manifest = Path(str((read_json(cache / "meta.json", {}) or {}).get("manifest", "")))
    if not manifest.is_file():
        return None
    truth, twins = read_truth(manifest), read_twins(manifest)
    return None if truth is None or twins is None else (cache, truth, twins)
