"""Loader: batch contract, switches, oversampling, reproducible epochs, evaluation order.

`write_toy_cache` writes a small cache folder (docs/CONTRACTS.md) directly with numpy; other tests
import it (`from test_loader import write_toy_cache`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmtlib.data.loader import EvalBatches, TrainBatches, load_split, open_cache_folder
from cmtlib.runtime import DistInfo

CLASSES = {"healthy": ("1", "0", "0"), "covid": ("0", "1", "0"), "other": ("0", "0", "1")}


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows cycling healthy / covid / other / covid; splits 60 / 20 / 20 % by position."""
    kinds = ["healthy", "covid", "other", "covid"]
    rows = []
    for i in range(n):
        kind = kinds[i % 4]
        split = "train" if i % 10 < 6 else ("val" if i % 10 < 8 else "test")
        h, c, o = CLASSES[kind]
        rows.append({
            "image_id": f"toy:{i:04d}", "path": f"images/{i:04d}.png", "patient_id": f"toy:p{i:04d}", "source": "toy" if i % 2 else "toy2",
            "view": "PA" if i % 3 else "AP", "sex": "F" if i % 2 else "M", "age": str(30 + i % 50), "offset_days": "", "finding": kind,
            "license": "CC0", "label_healthy": h, "label_covid": c, "label_other": o, "lung_mask": "", "disease_mask": "",
            "lung_boxes": "", "disease_boxes": "", "split": split, "kind": kind,
        })
    return rows


def toy_arrays(rows: list[dict], size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learnable phantoms: two dark lung rectangles on a mid-grey body; COVID adds a bright blob in
    the left lung (the disease mask), other disease bright horizontal bands across both lungs."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    images = np.full((n, size, size), 150, np.uint8)
    lung = np.zeros((n, size, size), np.uint8)
    disease = np.zeros((n, size, size), np.uint8)
    for i, row in enumerate(rows):
        j = rng.integers(-size // 16, size // 16 + 1, size=2)
        y0, y1 = size // 5 + j[0], 4 * size // 5 + j[0]
        for x0, x1 in ((size // 8, 7 * size // 16), (9 * size // 16, 7 * size // 8)):
            lung[i, y0:y1, x0 + j[1] : x1 + j[1]] = 1
        images[i][lung[i] == 1] = 40
        if row["kind"] == "covid":
            cy, cx, r = (y0 + y1) // 2, size // 4 + j[1], size // 8
            yy, xx = np.ogrid[:size, :size]
            disease[i] = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lung[i] == 1)
            images[i][disease[i] == 1] = 230
        elif row["kind"] == "other":
            images[i, y0 : y1 : max(2, size // 16), :] = 210
        noise = rng.integers(0, 20, size=(size, size))
        images[i] = np.clip(images[i].astype(int) + noise, 0, 255).astype(np.uint8)
    return images, lung, disease


def write_toy_cache(out: Path, n: int = 40, size: int = 32, seed: int = 0, rows: list[dict] | None = None) -> Path:
    """A complete cache folder: index.csv, images/lung/disease .npy, meta.json, quarantine.csv."""
    out.mkdir(parents=True, exist_ok=True)
    rows = rows or toy_rows(n, seed)
    images, lung, disease = toy_arrays(rows, size, seed)
    index = pd.DataFrame(rows)
    index["cache_row"] = [str(i) for i in range(len(rows))]
    index["content_hash"] = [f"{i:016x}" for i in range(len(rows))]
    index["orig_height"] = index["orig_width"] = str(size)
    index["has_lung"] = "1"
    # Disease masks: known for COVID (drawn) and healthy (known empty); unknown for other disease.
    index["has_disease"] = ["0" if r["kind"] == "other" else "1" for r in rows]
    index["read_info"] = "{}"
    index.to_csv(out / "index.csv", index=False)
    for name, arr in (("images", images), ("lung", lung), ("disease", disease)):
        np.save(out / f"{name}.npy", arr)
    (out / "meta.json").write_text(json.dumps({"size": size, "n": len(rows), "manifest": "toy", "manifest_hash": "toyhash", "created": "", "cmtlib_version": "", "quarantined": 0}))
    (out / "quarantine.csv").write_text("image_id,path,reason\n")
    return out


@pytest.fixture
def cache(tmp_path):
    return open_cache_folder(write_toy_cache(tmp_path / "cache"))


def test_batch_contract(cache):
    data = load_split(cache, "train")
    batch = next(TrainBatches(data, 4, seed=1, rotate_deg=10, translate_px=10).epoch(0))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])  # grey repeated
    for key in ("lung", "disease"):
        assert batch[key].shape == (4, 1, 32, 32) and batch[key].dtype == torch.float32
        assert set(batch[key].unique().tolist()) <= {0.0, 1.0}
    assert batch["healthy"].dtype == torch.long and batch["covid"].dtype == torch.float32 and batch["row"].dtype == torch.long
    for key in ("has_lung", "has_disease", "has_healthy", "has_covid", "has_other"):
        assert batch[key].dtype == torch.bool and batch[key].shape == (4,)


def test_labels_and_switches_follow_the_index(tmp_path):
    rows = toy_rows(8)
    rows[0].update(label_healthy="", label_covid="", label_other="")  # unknown labels
    cache = open_cache_folder(write_toy_cache(tmp_path / "c", rows=rows))
    data = load_split(cache, None)
    batch = next(iter(EvalBatches(data, 8)))
    assert batch["row"].tolist() == list(range(8))
    assert batch["has_healthy"].tolist() == [False] + [True] * 7
    assert batch["healthy"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]  # unknown zero-filled
    assert batch["covid"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert batch["has_disease"].tolist() == [r["kind"] != "other" for r in rows]
    # Stored pixels come back unchanged without augmentation.
    assert torch.equal((batch["image"][:, 0] * 255).round().to(torch.uint8), torch.from_numpy(np.array(cache.images[:8])))
    assert torch.equal(batch["lung"][:, 0].to(torch.uint8), torch.from_numpy(np.array(cache.lung[:8])))


def test_covid_rows_appear_six_times_per_epoch(cache):
    data = load_split(cache, "train")
    n_covid = int(data.targets["covid"].sum())
    tb = TrainBatches(data, 2, seed=0, covid_oversample=6)
    assert tb.epoch_size == len(data) + 5 * n_covid and len(tb) == tb.epoch_size // 2
    counts = Counter(tb.epoch_order(3).tolist())
    covid = set(torch.nonzero(data.targets["covid"]).flatten().tolist())
    assert all(counts[i] == (6 if i in covid else 1) for i in range(len(data)))
    seen = Counter(int(r) for b in tb.epoch(3) for r in b["row"])  # drop_last leaves out at most one batch
    assert sum(seen.values()) == len(tb) * 2
    covid_rows = {int(data.targets["row"][i]) for i in covid}
    assert sum(seen[r] for r in covid_rows) >= 6 * len(covid_rows) - 1


def test_fractional_oversampling_adds_a_seeded_subset(cache):
    data = load_split(cache, "train")
    n_covid = int(data.targets["covid"].sum())
    tb = TrainBatches(data, 2, seed=0, covid_oversample=1.5)
    assert tb.epoch_size == len(data) + round(0.5 * n_covid)
    assert torch.equal(tb.epoch_order(1), tb.epoch_order(1)) and not torch.equal(tb.epoch_order(1), tb.epoch_order(2))


def test_epochs_repeat_for_a_seed_and_differ_between_epochs(cache):
    data = load_split(cache, "train")
    a = [b["image"] for b in TrainBatches(data, 4, seed=5, rotate_deg=10, translate_px=10).epoch(2)]
    b = [b["image"] for b in TrainBatches(data, 4, seed=5, rotate_deg=10, translate_px=10).epoch(2)]
    c = [b["image"] for b in TrainBatches(data, 4, seed=5, rotate_deg=10, translate_px=10).epoch(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_ranks_take_their_slice_of_the_same_global_batch(cache):
    data = load_split(cache, "train")
    one = next(TrainBatches(data, 4, seed=2, rotate_deg=10, translate_px=10).epoch(0))
    parts = [next(TrainBatches(data, 2, seed=2, rotate_deg=10, translate_px=10, dist=DistInfo(r, 2, r)).epoch(0)) for r in (0, 1)]
    assert torch.equal(torch.cat([p["row"] for p in parts]), one["row"])
    assert torch.allclose(torch.cat([p["image"] for p in parts]), one["image"])


def test_eval_batches_are_in_order_and_complete(cache):
    data = load_split(cache, "test")
    eb = EvalBatches(data, 3)
    rows = torch.cat([b["row"] for b in eb]).tolist()
    assert rows == cache.rows("test").tolist() and len(eb) == -(-len(rows) // 3)


def test_empty_training_split_is_refused(tmp_path):
    rows = [dict(r, split="test") for r in toy_rows(6)]
    cache = open_cache_folder(write_toy_cache(tmp_path / "c", rows=rows))
    with pytest.raises(ValueError, match="training split is empty"):
        TrainBatches(load_split(cache, "train"), 2)


def test_channels_last_batches(cache):
    batch = next(iter(EvalBatches(load_split(cache, "val"), 2, channels_last=True)))
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)


# ---- prepare_data: the data chain, built once per data parameters ------------------------------

def _params(tmp_path, **values):
    from cmtlib.params import load_params

    return load_params(None, {"run_dir": str(tmp_path / "run"), **values})


def test_synthetic_chain_is_built_once_and_shared(tmp_path, monkeypatch):
    from cmtlib.data.prepare import prepare_data

    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))
    synth = {"data_kind": "synthetic", "synth_n": 40, "synth_size": 32, "image_size": 32}
    cache = prepare_data(_params(tmp_path, **synth))
    assert cache.parent.parent == tmp_path / "data" and cache.name == "cache-32" and cache.parent.name.startswith("synthetic-")
    folder = open_cache_folder(cache)
    assert len(folder.index) == 40 and set(folder.index["split"]) == {"train", "val", "test"}
    assert all(Path(p).is_absolute() for p in pd.read_csv(cache.parent / "manifest.csv")["path"])
    stamp = (cache / "meta.json").stat().st_mtime_ns
    # Another model on the same data (an ablation run, a baseline) reuses split and cache.
    assert prepare_data(_params(tmp_path, width=0.5, epochs=3, **synth)) == cache
    assert (cache / "meta.json").stat().st_mtime_ns == stamp
    # Another size: a sibling cache of the same split; another seed: another data folder.
    other_size = prepare_data(_params(tmp_path, **{**synth, "image_size": 48}))
    assert other_size.parent == cache.parent and open_cache_folder(other_size).size == 48
    assert prepare_data(_params(tmp_path, **{**synth, "synth_seed": 1})).parent != cache.parent


def _png_manifest(tmp_path, with_split: bool) -> Path:
    from PIL import Image

    from cmtlib.data.manifest import write_manifest

    rows = toy_rows(20)
    images, _, _ = toy_arrays(rows, 40)
    (tmp_path / "src" / "images").mkdir(parents=True)
    for i, r in enumerate(rows):
        Image.fromarray(images[i]).save(tmp_path / "src" / r["path"])
        r["split"] = r["split"] if with_split else ""
    return write_manifest(pd.DataFrame(rows).drop(columns="kind"), tmp_path / "src" / "manifest.csv")


def test_a_split_manifest_is_cached_as_it_is(tmp_path, monkeypatch):
    from cmtlib.data.prepare import prepare_data

    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))
    manifest = _png_manifest(tmp_path, with_split=True)
    cache = prepare_data(_params(tmp_path, data_kind="manifest", data_root=str(manifest), image_size=32))
    folder = open_cache_folder(cache)
    assert folder.meta["manifest"] == str(manifest.resolve()) and not (cache.parent / "manifest.csv").exists()
    assert folder.index["split"].tolist() == [r["split"] for r in toy_rows(20)]


def test_an_unsplit_manifest_is_split_first(tmp_path, monkeypatch):
    from cmtlib.data.prepare import prepare_data

    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))
    manifest = _png_manifest(tmp_path, with_split=False)
    cache = prepare_data(_params(tmp_path, data_kind="manifest", data_root=str(manifest), image_size=32))
    folder = open_cache_folder(cache)
    assert len(folder.index) == 20 and set(folder.index["split"]) <= {"train", "val", "test"} and "train" in set(folder.index["split"])
    assert folder.meta["manifest"] == str(cache.parent / "manifest.csv")


def test_a_given_cache_is_used_directly_and_its_size_checked(tmp_path):
    from cmtlib.data.cache import CacheError
    from cmtlib.data.prepare import prepare_data

    cache = write_toy_cache(tmp_path / "carried", size=32)
    assert prepare_data(_params(tmp_path, cache_dir=str(cache), image_size=32)) == cache
    with pytest.raises(CacheError, match="image_size=32"):
        prepare_data(_params(tmp_path, cache_dir=str(cache), image_size=64))


def test_balanced_draws_make_every_collection_label_stratum_equally_common():
    from cmtlib.data.loader import mixed_label_rows, stratum_weights

    index = pd.DataFrame({"source": ["a"] * 60 + ["b"] * 30 + ["c"] * 10,
                          "label_covid": ["1"] * 50 + ["0"] * 10 + ["0"] * 30 + ["1"] * 5 + [""] * 5})
    w = stratum_weights(index, cap=20)
    share = pd.Series(w).groupby(index["source"] + "|" + index["label_covid"]).sum()
    # a|1 (50 films), b|0 (30), and the small strata a|0 (10), c|1 (5), c| (5) weighted as if they had 20.
    assert share["a|1"] == pytest.approx(1.0) and share["b|0"] == pytest.approx(1.0) and share["a|0"] == pytest.approx(0.5)
    assert share["c|1"] == pytest.approx(0.25)
    # Only collection a holds both known labels: the COVID-19 loss is kept for its films alone.
    assert mixed_label_rows(index).tolist() == [True] * 60 + [False] * 40


def test_train_batches_draw_by_the_weights_reproducibly(tmp_path):
    cache = open_cache_folder(write_toy_cache(tmp_path / "c", n=40, size=32))
    data = load_split(cache, "train")
    w = np.zeros(len(data))
    w[:3] = 1.0  # only the first three films may be drawn
    batches = TrainBatches(data, 4, seed=1, covid_oversample=3.0, weights=w)
    order = batches.epoch_order(0)
    assert len(order) == batches.epoch_size and set(order.tolist()) <= {0, 1, 2}
    assert torch.equal(order, TrainBatches(data, 4, seed=1, covid_oversample=3.0, weights=w).epoch_order(0))
