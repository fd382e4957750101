"""Synthetic phantoms (cmtlib.data.synth): determinism, cohort shares, ground truth and anatomy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cmtlib.data.manifest import (
    check_manifest,
    parse_boxes,
    read_manifest,
    resolve_path,
)
from cmtlib.data.synth import make_synthetic
from cmtlib.data.synth.cohort import EARLY_DAYS, covid_severity, make_cohort
from cmtlib.data.synth.render import render

N, SIZE = 200, 96


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synth")
    manifest = make_synthetic(out, n=N, size=SIZE, seed=0, workers=1, progress=False)
    return manifest, read_manifest(manifest)


def _png(manifest: Path, cell: str) -> np.ndarray:
    return np.asarray(Image.open(resolve_path(manifest, cell)))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = _tree_bytes(make_synthetic(tmp_path / "a", n=24, size=64, seed=7, workers=1).parent)
    b = _tree_bytes(make_synthetic(tmp_path / "b", n=24, size=64, seed=7, workers=1).parent)
    c = _tree_bytes(make_synthetic(tmp_path / "c", n=24, size=64, seed=8, workers=1).parent)
    assert a == b
    assert a["manifest.csv"] != c["manifest.csv"]
    shared = set(a) & set(c) - {"manifest.csv"}
    assert shared and all(a[k] != c[k] for k in shared if k.startswith("images/"))


def test_worker_processes_give_the_same_bytes(tmp_path):
    # 50 films are two chunks, so two processes each render one.
    one = _tree_bytes(make_synthetic(tmp_path / "one", n=50, size=64, seed=1, workers=1).parent)
    two = _tree_bytes(make_synthetic(tmp_path / "two", n=50, size=64, seed=1, workers=2).parent)
    assert one == two


def test_manifest_is_valid_and_complete(synth):
    manifest, df = synth
    assert check_manifest(df) == []
    assert len(df) == N and df["image_id"].is_unique
    assert df["image_id"].str.match(r"^synth:P\d{4}-(d\d{2,}|v\d)$").all()
    assert df["patient_id"].str.match(r"^synth:P\d{4}$").all()
    assert (df["split"] == "").all()
    assert set(df["source"]) == {"synth-a", "synth-b"}
    assert set(df["view"]) == {"PA", "AP"}
    assert set(df["sex"]) == {"M", "F"}
    assert (df["license"] == "CC0 (synthetic)").all()
    # One label per image, never unknown.
    labels = df[["label_healthy", "label_covid", "label_other"]].astype(int)
    assert (labels.sum(axis=1) == 1).all()
    for cell in df["path"]:
        img = Image.open(resolve_path(manifest, cell))
        assert img.mode == "L" and img.size == (SIZE, SIZE)


def test_class_shares_and_early_covid_days(synth):
    _, df = synth
    shares = df[["label_healthy", "label_other", "label_covid"]].astype(int).mean()
    assert shares.to_numpy() == pytest.approx([0.40, 0.35, 0.25], abs=0.03)
    # Early days (faint opacities) stay a minority of COVID films, here and in a full-size cohort.
    covid = df[df["label_covid"] == "1"]
    assert (covid["offset_days"].astype(int) <= EARLY_DAYS).mean() <= 0.15
    big = [c for c in make_cohort(2000, 3) if c.kind == "covid"]
    early = np.mean([c.day <= EARLY_DAYS for c in big])
    assert 0.03 <= early <= 0.15
    # Healthy films have no day; the sick have one.
    assert (df.loc[df["label_healthy"] == "1", "offset_days"] == "").all()
    assert (df.loc[df["label_healthy"] == "0", "offset_days"] != "").all()


def test_views_lean_ap_when_sick_but_every_class_has_both(synth):
    _, df = synth
    ap = df.assign(ap=df["view"] == "AP").groupby("finding")["ap"].mean()
    by_label = {k: (df.loc[df[f"label_{k}"] == "1", "view"] == "AP").mean() for k in ("healthy", "covid", "other")}
    assert by_label["healthy"] < by_label["other"] < by_label["covid"]
    for k in ("healthy", "covid", "other"):
        assert set(df.loc[df[f"label_{k}"] == "1", "view"]) == {"PA", "AP"}
    assert len(ap) >= 6  # healthy, COVID and several other findings all present


def test_patients_have_several_films_on_distinct_days(synth):
    _, df = synth
    per_patient = df.groupby("patient_id").size()
    assert per_patient.max() <= 5 and (per_patient >= 2).sum() >= 10
    for _, g in df.groupby("patient_id"):
        for col in ("label_covid", "label_other", "source", "sex", "age"):
            assert g[col].nunique() == 1
        days = g["offset_days"]
        assert days.nunique() == len(g) or (days == "").all()


def test_mask_availability_and_known_empty_rules(synth):
    _, df = synth
    has_lung = df["lung_mask"] != ""
    assert has_lung.mean() == pytest.approx(0.70, abs=0.08)
    assert ((df["lung_boxes"] != "") == has_lung).all()
    healthy = df["label_healthy"] == "1"
    assert (df.loc[healthy, "disease_boxes"] == "[]").all() and (df.loc[healthy, "disease_mask"] == "").all()
    sick = df[~healthy]
    has_disease = sick["disease_mask"] != ""
    assert has_disease.mean() == pytest.approx(1 / 3, abs=0.1)
    # A sick film's disease ground truth is a mask with its boxes, or unknown (both empty).
    assert ((sick["disease_boxes"] != "") == has_disease).all()
    assert (sick.loc[has_disease, "disease_boxes"] != "[]").all()
    # Cardiomegaly has no lung-field lesion: unknown, never known-empty.
    cardio = sick[sick["finding"] == "Cardiomegaly"]
    assert len(cardio) and (cardio["disease_mask"] == "").all() and (cardio["disease_boxes"] == "").all()


def test_masks_are_binary_and_boxes_enclose_them(synth):
    manifest, df = synth
    for _, row in df[df["lung_mask"] != ""].head(40).iterrows():
        lung = _png(manifest, row["lung_mask"])
        assert set(np.unique(lung)) == {0, 255}
        boxes = parse_boxes(row["lung_boxes"])
        assert len(boxes) == 2 and boxes[0][0] < boxes[1][0]  # image-left lung first
        covered = np.zeros(lung.shape, bool)
        for x0, y0, x1, y1 in boxes:
            covered[int(y0):int(y1), int(x0):int(x1)] = True
        assert not (lung.astype(bool) & ~covered).any()
        # Lungs never touch the film's edge: the chest wall and shoulders surround them.
        edge = np.r_[lung[0], lung[-1], lung[:, 0], lung[:, -1]]
        assert not edge.any()
    for _, row in df[df["disease_mask"] != ""].iterrows():
        disease = _png(manifest, row["disease_mask"]).astype(bool)
        assert disease.any() and set(np.unique(_png(manifest, row["disease_mask"]))) == {0, 255}
        box = np.zeros(disease.shape, bool)
        for x0, y0, x1, y1 in json.loads(row["disease_boxes"]):
            box[int(y0):int(y1), int(x0):int(x1)] = True
        assert not (disease & ~box).any()
        if row["lung_mask"]:
            assert not (disease & ~_png(manifest, row["lung_mask"]).astype(bool)).any()


def test_lungs_lie_inside_the_body_and_are_darker_than_the_mediastinum(synth):
    manifest, df = synth
    diffs = []
    for _, row in df[df["lung_mask"] != ""].iterrows():
        img = _png(manifest, row["path"]).astype(float)
        lung = _png(manifest, row["lung_mask"]) > 0
        (r0, r1) = parse_boxes(row["lung_boxes"])
        # Mediastinum: between the lungs, over the upper two thirds of their height.
        top, bottom = int(max(r0[1], r1[1])), int(min(r0[3], r1[3]))
        band = img[top:top + 2 * (bottom - top) // 3, int(r0[2]) + 1:int(r1[0]) - 1]
        diffs.append(band.mean() - img[lung].mean())
    diffs = np.array(diffs)
    assert (diffs > 0).mean() >= 0.97 and np.median(diffs) > 50
    cases = make_cohort(N, 0)[:20]
    for case in cases:
        film = render(case, SIZE, 0)
        assert not (film.lung & ~film.body).any()
        assert film.image[film.lung].mean() > film.image[~film.body].mean() + 15  # lung is not air outside


def _ctr(lung: np.ndarray) -> float:
    """Cardiothoracic ratio from a lung mask: widest gap between the lungs (the heart) over the
    widest outer extent of the lungs (the chest), from 40 % to 80 % down the lungs (below, the
    domes cut the lungs' medial parts away)."""
    rows = np.flatnonzero(lung.any(axis=1))
    h = rows[-1] - rows[0]
    lower = lung[rows[0] + 4 * h // 10: rows[0] + 8 * h // 10]
    mid = lung.shape[1] // 2
    gaps, chest = [], []
    for r in lower:
        left, right = np.flatnonzero(r[:mid]), np.flatnonzero(r[mid:]) + mid
        if left.size and right.size:
            gaps.append(right[0] - left[-1])
            chest.append(right[-1] - left[0])
    return max(gaps) / max(chest)


def test_ap_films_show_a_larger_heart_than_pa(synth):
    manifest, df = synth
    healthy = df[(df["label_healthy"] == "1") & (df["lung_mask"] != "")]
    ctr = healthy.assign(ctr=[_ctr(_png(manifest, m) > 0) for m in healthy["lung_mask"]]).groupby("view")["ctr"].mean()
    assert ctr["AP"] > ctr["PA"] + 0.03
    assert 0.35 < ctr["PA"] < 0.55
    cardio = df[(df["finding"] == "Cardiomegaly") & (df["lung_mask"] != "")]
    if len(cardio):
        assert np.mean([_ctr(_png(manifest, m) > 0) for m in cardio["lung_mask"]]) > ctr["PA"] + 0.05


def test_covid_opacity_grows_with_the_day():
    case = next(c for c in make_cohort(60, 2) if c.kind == "covid")
    clear = render(dataclasses.replace(case, kind="healthy", label="healthy"), 128, 0)
    lung = clear.lung
    added, contrast = [], []
    for day in (1, 3, 5, 8, 12):
        sick = dataclasses.replace(case, day=day, severity=covid_severity(day, 0.9, 5.0))
        film = render(sick, 128, 0)
        diff = film.image.astype(float) - clear.image.astype(float)
        added.append(diff[lung].mean())               # opacity over the whole lung: extent x density
        contrast.append(diff[film.disease].mean())    # density inside the lesion
    assert all(np.diff(added) > 0) and all(np.diff(contrast) > 0)
    assert added[0] < 0.15 * added[-1]  # day 1 is faint: hard on purpose
    assert contrast[-1] > 20            # late opacities are plainly visible (gray levels)


def test_covid_lesion_contrast_rises_with_day_across_the_data_set():
    films = [(c.day, render(c, 64, 0)) for c in make_cohort(400, 4) if c.kind == "covid"]
    days = np.array([d for d, _ in films])
    contrast = np.array([f.image[f.disease].mean() - f.image[f.lung & ~f.disease].mean() for _, f in films])
    spearman = np.corrcoef(np.argsort(np.argsort(days)), np.argsort(np.argsort(contrast)))[0, 1]
    assert spearman > 0.4


def test_bad_arguments_say_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match="n must be a positive"):
        make_synthetic(tmp_path, n=0)
    with pytest.raises(ValueError, match="size must be an integer of at least 32"):
        make_synthetic(tmp_path, n=5, size=16)
    with pytest.raises(ValueError, match="seed must be a non-negative"):
        make_synthetic(tmp_path, n=5, seed=-1)
