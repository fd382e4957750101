"""A smaller copy of a cache folder: the training films Mask R-CNN learns from (its loss needs both
outlines known), a quarter as many validation films, every test film."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cmtlib.data.cache import open_cache
from cmtlib.data.manifest import write_manifest
from cmtlib.fileio import atomic_path, write_json


def subset_cache(cache_dir: str | os.PathLike, out: str | os.PathLike, max_train: int, seed: int = 0) -> Path:
    """A copy of a cache folder with at most ``max_train`` training films (a seeded sample of those
    whose lung and disease masks are both known, the films Mask R-CNN learns from), a quarter as
    many validation films, and every test film; reused when already made with these settings."""
    out = Path(out)
    key = {"subset_of": str(Path(cache_dir).resolve()), "max_train": int(max_train), "seed": int(seed)}
    if (out / "meta.json").is_file() and all(json.loads((out / "meta.json").read_text()).get(k) == v for k, v in key.items()):
        return out
    index, images, lung, disease, meta = open_cache(cache_dir)
    rng = np.random.default_rng(seed)
    split = index["split"].to_numpy()
    both = (index["has_lung"] == "1").to_numpy() & (index["has_disease"] == "1").to_numpy()
    keep = [np.flatnonzero(split == "test")]
    for name, n in (("train", max_train), ("val", max(1, -(-max_train // 4)))):
        pool = np.flatnonzero((split == name) & both) if name == "train" else np.flatnonzero(split == name)
        keep.append(rng.choice(pool, size=min(n, len(pool)), replace=False) if n < len(pool) else pool)
    rows = np.sort(np.concatenate(keep))
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    for name, arr in (("images", images), ("lung", lung), ("disease", disease)):
        with atomic_path(out / f"{name}.npy") as tmp:
            np.save(tmp, np.asarray(arr[rows]))
    sub = index.iloc[rows].reset_index(drop=True)
    sub["cache_row"] = [str(i) for i in range(len(sub))]
    write_manifest(sub, out / "index.csv")
    (out / "quarantine.csv").write_text("image_id,path,reason\n", encoding="utf-8")
    pool = int(((split == "train") & both).sum())
    write_json(out / "meta.json", {**meta, "n": len(rows), **key, "train_pool": pool})  # last: a folder without it is incomplete
    return out
