"""cmtlib.data.cache: folder format, masks from PNGs and boxes, quarantine, incremental rebuilds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cmtlib.data import cache as cache_module
from cmtlib.data.cache import CacheError, box_mask, build_cache, open_cache

REPO = Path(__file__).resolve().parents[1]
S = 32


def _film(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(150, 230, (h, w), dtype=np.uint8)
    img[h // 4:3 * h // 4, w // 6:5 * w // 6] //= 4  # dark lungs
    return img


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    """Six rows: boxes, known-empty disease, PNG masks (one of another aspect), an empty file."""
    d = tmp_path / "data"
    (d / "images" / "sub").mkdir(parents=True)
    (d / "masks").mkdir()
    Image.fromarray(_film(50, 100, 0)).save(d / "images" / "a.png")
    Image.fromarray(_film(64, 64, 1)).convert("RGB").save(d / "images" / "b.jpg", quality=95)
    Image.fromarray(_film(40, 60, 2)).save(d / "images" / "c.png")
    Image.fromarray(_film(80, 80, 3)).save(d / "images" / "d.png")
    (d / "images" / "e.png").write_bytes(b"")
    Image.fromarray(_film(48, 48, 5)).save(d / "images" / "sub" / "f.png")
    lung_c = np.zeros((40, 60), np.uint8)
    lung_c[:, :30] = 255  # left half
    Image.fromarray(lung_c).save(d / "masks" / "c_lung.png")
    Image.fromarray(np.zeros((40, 80), np.uint8)).save(d / "masks" / "c_disease.png")  # other aspect
    lung_d = np.zeros((40, 40), np.uint8)
    lung_d[20:, :] = 255  # bottom half, at half the image's size
    Image.fromarray(lung_d).save(d / "masks" / "d_lung.png")
    rows = [
        {"image_id": "t:a", "path": "images/a.png", "lung_boxes": "[[10, 5, 40, 45], [60, 5, 90, 45]]", "disease_boxes": "[[25, 0, 50, 25]]"},
        {"image_id": "t:b", "path": "images/b.jpg", "disease_boxes": "[]", "label_healthy": "1"},
        {"image_id": "t:c", "path": "images/c.png", "lung_mask": "masks/c_lung.png", "disease_mask": "masks/c_disease.png"},
        {"image_id": "t:d", "path": str(d / "images" / "d.png"), "lung_mask": "masks/d_lung.png"},
        {"image_id": "t:e", "path": "images/e.png"},
        {"image_id": "t:f", "path": "images/sub/f.png", "lung_boxes": "[[40, 0, 10, 20]]"},  # x1 < x0
    ]
    path = d / "manifest.csv"
    pd.DataFrame(rows).fillna("").to_csv(path, index=False)
    return path


def test_cache_folder_format_masks_and_quarantine(manifest, tmp_path):
    out = tmp_path / "cache"
    report = build_cache(manifest, size=S, out=out, workers=1)
    assert (report.n_manifest, report.n_cached, report.n_read, report.n_quarantined, report.n_masks_ignored) == (6, 5, 5, 1, 2)
    index, images, lung, disease, meta = open_cache(out)
    assert index["image_id"].tolist() == ["t:a", "t:b", "t:c", "t:d", "t:f"]
    assert index["cache_row"].tolist() == ["0", "1", "2", "3", "4"]
    assert index["label_healthy"].tolist() == ["", "1", "", "", ""]  # manifest columns kept, '' unknown
    assert index[["orig_height", "orig_width"]].iloc[0].tolist() == ["50", "100"]
    assert index["has_lung"].tolist() == ["1", "0", "1", "1", "0"]
    assert index["has_disease"].tolist() == ["1", "1", "0", "0", "0"]
    assert json.loads(index["read_info"].iloc[1])["format"] == "JPEG"
    assert images.shape == lung.shape == disease.shape == (5, S, S) and images.dtype == np.uint8
    assert meta["size"] == S and meta["n"] == 5 and meta["quarantined"] == 1

    # image a (100 x 50 px): lung boxes x 10-40 and 60-90, y 5-45, scaled by 0.32 and 0.64
    expected = np.zeros((S, S), np.uint8)
    expected[3:29, 3:13] = 1
    expected[3:29, 19:29] = 1
    np.testing.assert_array_equal(lung[0], expected)
    assert disease[0, :16, 8:16].all() and disease[0].sum() == 16 * 8
    assert disease[1].sum() == 0  # '[]': known empty, has_disease = 1
    assert lung[2, :, :16].all() and lung[2, :, 16:].sum() == 0  # c: left half
    assert lung[3, 16:].all() and lung[3, :16].sum() == 0  # d: rescaled mask, bottom half
    # the cached image keeps the film's dark lungs
    assert images[0, 12:20, 10:22].mean() < images[0, :4].mean() / 2

    q = pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)
    reasons = dict(zip(q["image_id"], q["reason"]))
    assert set(reasons) == {"t:c", "t:e", "t:f"}
    assert "file is empty (0 bytes)" in reasons["t:e"]
    assert reasons["t:c"].startswith("disease mask ignored (image kept)") and "another aspect ratio" in reasons["t:c"]
    assert reasons["t:f"].startswith("lung_boxes ignored (image kept)") and "x1 <= x0" in reasons["t:f"]
    assert "1 image(s) left out, 2 mask(s) ignored" in report.summary()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_parallel_build_matches_serial(manifest, tmp_path):
    build_cache(manifest, size=S, out=tmp_path / "one", workers=1)
    report = build_cache(manifest, size=S, out=tmp_path / "two", workers=2)
    assert report.workers == 2 and report.n_cached == 5
    for a, b in zip(open_cache(tmp_path / "one")[1:4], open_cache(tmp_path / "two")[1:4]):
        np.testing.assert_array_equal(a, b)


def test_incremental_rebuild_reuses_rows_and_rereads_changed(manifest, tmp_path):
    out = tmp_path / "cache"
    build_cache(manifest, size=S, out=out, workers=1)
    first = np.array(open_cache(out)[1])
    again = build_cache(manifest, size=S, out=out, workers=1)
    assert (again.n_reused, again.n_read, again.n_quarantined, again.n_masks_ignored) == (5, 0, 1, 2)
    np.testing.assert_array_equal(open_cache(out)[1], first)

    d = manifest.parent
    Image.fromarray(255 - _film(80, 80, 3)).save(d / "images" / "d.png")  # d's content changes
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df.loc[df["image_id"] == "t:b", "disease_boxes"] = "[[0, 0, 32, 32]]"  # b's boxes change
    df.to_csv(manifest, index=False)
    third = build_cache(manifest, size=S, out=out, workers=1)
    assert (third.n_reused, third.n_read) == (3, 2)
    index, images, _, disease, _ = open_cache(out)
    assert not np.array_equal(images[3], first[3]) and np.array_equal(images[0], first[0])
    assert disease[1, :16, :16].all()

    resized = build_cache(manifest, size=S + 8, out=out, workers=1)  # another size: nothing reused
    assert resized.n_reused == 0 and open_cache(out)[1].shape == (5, S + 8, S + 8)


def test_failed_build_leaves_previous_cache_intact(manifest, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    build_cache(manifest, size=S, out=out, workers=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    Image.fromarray(_film(80, 80, 9)).save(manifest.parent / "images" / "d.png")

    def broken(image, size):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(cache_module, "resize_image", broken)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_cache(manifest, size=S, out=out, workers=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_open_cache_detects_inconsistent_folder(manifest, tmp_path):
    out = tmp_path / "cache"
    build_cache(manifest, size=S, out=out, workers=1)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "n": 4}))
    with pytest.raises(CacheError, match="rebuild the cache"):
        open_cache(out)
    with pytest.raises(FileNotFoundError, match="cmt data cache"):
        open_cache(tmp_path / "nowhere")


def test_bad_arguments_say_what_to_fix(manifest, tmp_path):
    with pytest.raises(ValueError, match="at least 16 px"):
        build_cache(manifest, size=4, out=tmp_path / "c")
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"image_id": ["x", "x"], "path": ["a.png", "b.png"]}).to_csv(dup, index=False)
    with pytest.raises(ValueError, match=r"repeats image_id \['x'\]"):
        build_cache(dup, size=S, out=tmp_path / "c")


def test_box_mask_pixel_centres_and_thin_boxes():
    m = box_mask([[50, 20, 150, 80]], (100, 200), 32)  # scale x 0.16, y 0.32
    assert m[6:26, 8:24].all() and m.sum() == 20 * 16
    thin = box_mask([[100, 10, 100.5, 90]], (100, 200), 32)  # thinner than a cached pixel
    assert thin.sum() == 26 and thin[:, 16].sum() == 26
    with pytest.raises(ValueError, match="outside the 200x100 px image"):
        box_mask([[300, 10, 400, 20]], (100, 200), 32)


def test_benchmark_smoke():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_cache.py"), "--smoke"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "CPU(s)" in lines[0]
    header, row = lines[1].split(), lines[2].split()
    assert "cold_img_per_s" in header and row[header.index("cached")] == "6"
    assert float(row[header.index("cold_img_per_s")]) > 0
