"""Near-duplicate detection: synthetic copies and chains, and the real copies in cxr-public."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cmtlib.data import dupfeatures as F
from cmtlib.data import duplicates as D
from cmtlib.data.duplicates import EVIDENCE_COLUMNS, find_duplicates
from cmtlib.data.hashindex import HashIndex, popcount


def film(seed: int, size: int = 256) -> np.ndarray:
    """A chest-like film: one global layout for every seed (two dark lung fields, a bright
    mediastinum), per-seed fine structure (rib-like bands, mottling). float32 (size, size)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.8 - 0.1 * y
    for cx in (0.3, 0.7):
        img -= 0.45 * np.exp(-(((x - cx) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2))
    img += 0.25 * np.exp(-(((x - 0.5) / 0.07) ** 2))
    for _ in range(12):
        level, phase, width = rng.uniform(0.15, 0.9), rng.uniform(0, 2 * np.pi), rng.uniform(0.008, 0.02)
        img += 0.04 * np.exp(-((y - level - 0.06 * np.cos(2 * np.pi * (x - 0.5) + phase)) / width) ** 2)
    noise = rng.normal(size=(size // 4, size // 4)).astype(np.float32)
    img += 0.025 * np.asarray(Image.fromarray(noise, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    return np.clip(img, 0, 1).astype(np.float32)


def save(a: np.ndarray, path: Path, quality: int | None = None) -> Path:
    im = Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))
    if quality is None:
        im.save(path)
    else:
        im.save(path, format="JPEG", quality=quality)
    return path


def resized(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def test_phash_is_64_bit_and_stable_under_resampling():
    a = film(1)
    h_full = F._phash(a)
    h_small = F._phash(resized(a, 100, 100))
    assert isinstance(h_full, np.uint64) and int(h_full) < 2**63  # top bit is the unused 64th
    h_other = F._phash(film(2))
    distance = lambda x, y: int(popcount(np.array([x ^ y], dtype=np.uint64))[0])
    assert distance(h_full, h_small) <= 6 < D.HASH_MAX < distance(h_full, h_other)


def test_candidate_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(300, len(F.HASH_WINDOWS)), dtype=np.uint64)
    hashes[7, 3] = hashes[5, 0] ^ np.uint64(0b101)  # 5's full frame is 2 bits from 7's fourth window
    cand = F.candidate_pairs(hashes, 26)
    got = {(i, j): d for i, j, d in zip(cand.i.tolist(), cand.j.tolist(), cand.distance.tolist())}
    want = {(i, j): D.hash_distance(hashes[i], hashes[j]) for i in range(300) for j in range(i + 1, 300)}
    assert got == {k: d for k, d in want.items() if d <= 26}
    assert got[(5, 7)] == 2


def random_hashes(n: int, seed: int, near: int = 0, max_flips: int = 12) -> np.ndarray:
    """n random 63-bit codes; `near` of them replaced by copies of others with 0..max_flips bits flipped."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    for _ in range(near):
        i, j = rng.choice(n, 2, replace=False)
        codes[j] = codes[i] ^ np.bitwise_or.reduce(np.uint64(1) << rng.choice(63, rng.integers(0, max_flips + 1), replace=False).astype(np.uint64))
    return codes


@pytest.mark.parametrize("chunks", [None, 3, 4, 6, 11])
def test_hash_index_finds_exactly_the_pairs_within_the_radius(chunks):
    codes = random_hashes(3000, seed=1, near=400)
    brute = popcount(codes[:, None] ^ codes[None])                                   # (3000, 3000)
    index = HashIndex(codes, chunks=chunks)
    for radius in (0, 3, 10, 17):
        found = index.search(codes, radius, exclude=np.arange(len(codes)))
        q, o = np.nonzero(brute <= radius)
        want = {(a, b, int(brute[a, b])) for a, b in zip(q.tolist(), o.tolist()) if a != b}
        assert set(zip(found.query.tolist(), found.owner.tolist(), found.distance.tolist())) == want
        assert len(found.query) == len(want)  # each neighbour once
    assert len(want) > 400  # the planted neighbours (and their chains) are in it


def test_hash_index_k_nearest_are_the_nearest_with_ties_to_the_tiebreak_then_the_owner():
    codes = random_hashes(2000, seed=2, near=600, max_flips=6)
    brute = popcount(codes[:, None] ^ codes[None]).astype(int)
    np.fill_diagonal(brute, 99)
    tiebreak = lambda q, o: (q * 7 + o) % 5  # any function of the pair
    found = HashIndex(codes).search(codes, 10, k=3, exclude=np.arange(len(codes)), tiebreak=tiebreak)
    assert found.full == int(((brute <= 10).sum(1) >= 3).sum())
    for q in range(len(codes)):
        within = np.flatnonzero(brute[q] <= 10)
        want = sorted(within, key=lambda o: (brute[q, o], (q * 7 + o) % 5, o))[:3]
        assert sorted(found.owner[found.query == q].tolist()) == sorted(want)


def test_hash_index_owner_is_met_at_its_nearest_code():
    base = np.uint64(0b1011)
    codes = np.array([base, base ^ np.uint64(0b111), base ^ np.uint64(1), base ^ np.uint64(0b11) << np.uint64(20)], np.uint64)
    found = HashIndex(codes, owners=np.array([0, 1, 1, 2]), chunks=3).search(np.array([base]), 5, exclude=np.array([0]))
    assert list(zip(found.owner.tolist(), found.distance.tolist())) == [(1, 1), (2, 2)]


def test_candidate_pairs_bound_keeps_each_image_s_nearest():
    rng = np.random.default_rng(3)
    hashes = np.repeat(random_hashes(400, seed=3, near=300, max_flips=8)[:, None], len(F.HASH_WINDOWS), 1)
    hashes[:, 1:] ^= (np.uint64(1) << rng.integers(0, 63, size=(400, len(F.HASH_WINDOWS) - 1)).astype(np.uint64))
    full = F.candidate_pairs(hashes, 10)
    bounded = F.candidate_pairs(hashes, 10, per_image=2)
    pairs = set(zip(bounded.i.tolist(), bounded.j.tolist()))
    assert pairs <= set(zip(full.i.tolist(), full.j.tolist())) and len(pairs) < len(full)
    # directional distance: one image's full frame against the other's windows
    directional = popcount(hashes[:, None, :1] ^ hashes[None, :, :]).min(2).astype(int)     # (400, 400)
    np.fill_diagonal(directional, 99)
    for i in range(400):
        d = directional[i]
        nearest = np.flatnonzero(d <= 10)
        if len(nearest) == 0:
            continue
        second = np.sort(d[nearest])[min(1, len(nearest) - 1)]
        for j in nearest[d[nearest] < second]:  # strictly nearer than its 2nd: always kept
            assert (min(i, j), max(i, j)) in pairs
    assert bounded.at_bound == int(((directional <= 10).sum(1) >= 2).sum())


def test_a_copy_beats_films_that_only_share_the_anatomy():
    """40 films as near the original as its copy (2 bits in the full frame) but 2 bits off in every
    other window too, listed first; from the copy's side they are nearer still. The original keeps
    the copy because at one distance the films whose five windows agree best come first."""
    rng = np.random.default_rng(4)
    original = random_hashes(len(F.HASH_WINDOWS), seed=4)
    copy = original.copy()
    copy[0] ^= np.uint64(0b11) << np.uint64(30)
    others = np.array([np.r_[copy[:1], original[1:] ^ (np.uint64(0b11) << rng.integers(0, 61, len(original) - 1).astype(np.uint64))]
                       for _ in range(40)])
    hashes = np.vstack([others, original, copy])
    assert [F.hash_distance(original, h) for h in (copy, others[0], others[-1])] == [2, 2, 2]
    bounded = F.candidate_pairs(hashes, 10, per_image=3)
    assert (40, 41) in set(zip(bounded.i.tolist(), bounded.j.tolist()))


def test_trim_removes_letterbox_bars_only():
    a = film(2, 128)
    boxed = np.pad(a, ((0, 0), (20, 20)))  # black bars left and right
    assert F._trim(boxed).shape == a.shape
    assert F._trim(a).shape == a.shape


def test_equalise_keeps_equal_pixels_equal():
    a = np.array([[0.1, 0.1], [0.5, 0.9]], dtype=np.float32)
    e = F._equalise(a)
    np.testing.assert_allclose(e, [[0.25, 0.25], [0.625, 0.875]])


def test_copies_grouped_unrelated_apart(tmp_path):
    a, b = film(1), film(2)
    images = {
        "a": save(a, tmp_path / "a.png"),
        "a_small_jpeg": save(resized(a, 180, 180), tmp_path / "a_small.jpg", quality=70),
        "a_brighter": save(np.clip(a ** 0.8 + 0.05, 0, 1), tmp_path / "a_bright.png"),
        "a_recropped": save(a[10:-12, 8:-6], tmp_path / "a_crop.png"),
        "a_letterboxed": save(np.pad(resized(a, 200, 200), ((0, 0), (30, 30))), tmp_path / "a_box.png"),
        "b": save(b, tmp_path / "b.png"),
        "c": save(film(3), tmp_path / "c.png"),
    }
    result = find_duplicates(images, workers=1, progress=False)
    assert result.groups == [("a", "a_brighter", "a_letterboxed", "a_recropped", "a_small_jpeg")]
    ev = result.evidence
    assert list(ev.columns) == list(EVIDENCE_COLUMNS)
    dup = ev[ev["decision"] == "duplicate"]
    assert len(dup) == 10  # complete linkage: every pair of the five copies confirmed
    assert dup["correlation"].min() >= 0.9
    # Each copy is a hash candidate of the original; two copies of each other need not be (the
    # 4 %-cropped one and the letterboxed one are 10 apart) and were matched for the merge.
    assert dup.loc[dup["image_id_a"] == "a", "hash_distance"].max() <= D.HASH_MAX


def test_unrelated_films_rejected_even_when_every_pair_is_a_candidate(tmp_path):
    images = {f"f{s}": save(film(s), tmp_path / f"f{s}.png") for s in range(8)}
    result = find_duplicates(images, hash_max=64, max_candidates=None, workers=1, progress=False)
    assert result.groups == []
    assert len(result.evidence) == 28
    assert result.evidence["correlation"].max() < 0.4  # the threshold is 0.80
    assert result.evidence["decision"].str.startswith("not confirmed").all()


def test_chain_does_not_join_unrelated_ends(tmp_path):
    a, c = film(11), film(13)
    images = {"A": save(a, tmp_path / "a.png"), "B": save((a + c) / 2, tmp_path / "b.png"), "C": save(c, tmp_path / "c.png")}
    # A lowered threshold makes A~B and B~C links (a blend correlates about 0.7 with each end).
    result = find_duplicates(images, hash_max=64, min_correlation=0.6, workers=1, progress=False)
    ev = result.evidence.set_index(["image_id_a", "image_id_b"])
    assert ev.loc[("A", "B"), "correlation"] >= 0.6 and ev.loc[("B", "C"), "correlation"] >= 0.6
    assert ev.loc[("A", "C"), "correlation"] < 0.3
    assert len(result.groups) == 1 and len(result.groups[0]) == 2 and "B" in result.groups[0]
    kept_apart = ev[ev["decision"].str.startswith("kept apart")]
    assert len(kept_apart) == 1 and "A and C" in kept_apart["decision"].iloc[0]


def test_unreadable_image_is_skipped_with_a_note(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    images = {"good": save(film(1), tmp_path / "good.png"), "bad": tmp_path / "bad.png", "gone": tmp_path / "missing.png"}
    result = find_duplicates(images, workers=1, progress=False)
    assert set(result.unreadable) == {"bad", "gone"}
    notes = result.evidence.set_index("image_id_a")["decision"]
    assert notes["bad"].startswith("unreadable: ImageReadError") and "not a PNG, JPEG or DICOM" in notes["bad"]
    assert "file not found" in notes["gone"]
    assert result.groups == []


def test_each_stage_logs_a_line_with_counts_and_seconds(tmp_path, caplog):
    images = {f"f{s}": save(film(s % 4), tmp_path / f"f{s}.png") for s in range(6)}  # f0 ~ f4, f1 ~ f5
    with caplog.at_level(logging.INFO, logger="cmtlib.data.duplicates"):
        result = find_duplicates(images, workers=1, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "cmtlib.data.duplicates"]
    assert [line.split(":")[0] for line in lines] == ["features", "candidates", "confirmations", "groups"]
    assert all(re.search(r", \d+\.\d s$", line) for line in lines)
    assert lines[0].startswith("features: 6 images hashed, 0 unreadable")
    assert re.match(rf"candidates: {result.n_compared} pairs of 6 images within hash distance 10 \(at most 6 per image", lines[1])
    assert lines[2].startswith(f"confirmations: {result.n_compared} pairs compared in 1 process(es), 2 above the threshold")
    assert lines[3].startswith("groups: 2 group(s) of 4 images")
    assert result.groups == [("f0", "f4"), ("f1", "f5")] and set(result.stages) == {"features", "candidates", "confirmations", "groups"}


def test_bound_per_image_confirms_the_nearest_and_says_so(tmp_path):
    """Eight copies of one film (three of them re-encoded): with two candidates each, every copy is
    still confirmed against its nearest, and complete linkage checks the rest on demand."""
    a = film(5)
    images = {f"c{k}": save(a, tmp_path / f"c{k}.png") for k in range(5)}
    images.update({f"j{k}": save(a, tmp_path / f"j{k}.jpg", quality=60 + 10 * k) for k in range(3)})
    images["other"] = save(film(6), tmp_path / "other.png")
    result = find_duplicates(images, max_candidates=2, workers=1, progress=False)
    assert result.groups == [tuple(sorted(set(images) - {"other"}))]
    assert result.per_image == 2 and result.at_bound == 8 and result.n_compared < 8 * 7 // 2
    assert (result.evidence["decision"] == "duplicate").sum() == 8 * 7 // 2  # all pairs, by merge checks


def test_process_pool_gives_the_same_result(tmp_path):
    images = {f"f{s}": save(film(s % 13), tmp_path / f"f{s}.png") for s in range(30)}  # f0 ~ f13 ~ f26, ...
    serial = find_duplicates(images, workers=1, progress=False)
    pooled = find_duplicates(images, workers=2, progress=False)
    assert serial.groups == pooled.groups
    assert ("f0", "f13", "f26") in serial.groups and len(serial.groups) == 13
    pd.testing.assert_frame_equal(serial.evidence, pooled.evidence)


# ---------------------------------------------------------------- real copies in cxr-public

IEEE = "ieee8023_via_GeneralBlockchain_lungboxes/images/"
FIG1 = "agchung_Figure1/images/"
NIH64 = "nih_chestxray14/NIH1000_64px_from_dinbe0527/"
# Every copy of one picture in cxr-public that this method finds (checked by eye).
REAL_PAIRS = [
    (IEEE + "A7E260CE-8A00-4C5F-A7F5-27336527A981.jpeg", IEEE + "case_76_1-3.png"),   # patients 137, 202
    (IEEE + "9C34AF49-E589-44D5-92D3-168B3B04E4A6.jpeg", FIG1 + "COVID-00022.jpg"),
    (FIG1 + "COVID-00033.jpg", FIG1 + "COVID-00037.jpg"),
    ("nih_chestxray14/fullres_images/00000001_000.png", NIH64 + "train/1_abnormal/00000001_000.png"),
    (IEEE + "81ba2932af55c7663e9d87016776a6_jumbo-1.jpeg", IEEE + "3d4364c0e44859e86017ee1660112e_jumbo-1.jpeg"),  # patient 364 twice
    # Re-cropped or letterboxed copies of Figure1 films published by ieee8023.
    (IEEE + "figure1-5e73d7ae897e27ff066a30cb-98.jpeg", FIG1 + "COVID-00001.jpg"),
    (IEEE + "figure1-5e7c1b8d98c29ab001275405-98.jpeg", FIG1 + "COVID-00003a.jpg"),
    (IEEE + "figure1-5e7c1b8d98c29ab001275405-98-later.jpeg", FIG1 + "COVID-00003b.jpg"),
    # ieee8023 patients 30 and 31: one radiopaedia film, uncut and cut square (rows 8-88 %).
    (IEEE + "pneumonia-7.jpg", IEEE + "streptococcus-pneumoniae-pneumonia-temporal-evolution-1-day1.jpg"),
]


@pytest.mark.shared_data
def test_real_copies_found(cxr_public):
    images = {rel: cxr_public / rel for pair in REAL_PAIRS for rel in pair}
    # Films without a copy here: Figure1 neighbours, and an ieee8023 figure1-* file whose original
    # is not in this subset (its best correlation with any Figure1 or ieee8023 film is 0.17).
    for rel in (FIG1 + "COVID-00002.jpg", FIG1 + "COVID-00034.jpg", FIG1 + "COVID-00038.jpg", IEEE + "figure1-5e71be566aa8714a04de3386-98-left.jpeg"):
        images[rel] = cxr_public / rel
    # Every pair a candidate: the confirmation alone must separate them.
    result = find_duplicates(images, hash_max=64, max_candidates=None, workers=2, progress=False)
    assert result.groups == sorted(tuple(sorted(p)) for p in REAL_PAIRS)
    ev = result.evidence
    assert len(ev) == 22 * 21 // 2
    dup = ev[ev["decision"] == "duplicate"]
    assert len(dup) == len(REAL_PAIRS)
    assert dup["correlation"].min() >= 0.85  # measured 0.87 (the re-cropped COVID-00003b) to 1.0
    assert dup["hash_distance"].max() <= D.HASH_MAX  # measured 0-8: all would be candidates
    assert ev.loc[ev["decision"] != "duplicate", "correlation"].max() < 0.4  # measured 0.29


@pytest.mark.shared_data
def test_real_follow_up_films_of_one_patient_stay_apart(cxr_public):
    """NIH 64-px thumbnails of the two patients with most films (same pose, same machine): the
    hardest negatives, correlating up to 0.98 as plain 32 x 32 thumbnails."""
    files = sorted(p for p in (cxr_public / NIH64).rglob("*.png") if re.match(r"(00000013|00000032|00000103)_", p.name))
    assert len(files) >= 100
    result = find_duplicates({f"{p.parent.parent.name}/{p.parent.name}/{p.name}": p for p in files}, workers=2, progress=False)
    assert result.groups == []
    assert len(result.evidence) > 50  # many candidates by hash, all rejected by the confirmation
    assert result.evidence["correlation"].max() < 0.85


@pytest.mark.shared_data
@pytest.mark.slow
def test_all_of_cxr_public_has_exactly_the_known_groups(cxr_public):
    files = sorted(p for p in cxr_public.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg") and "masks" not in p.parts)
    images = {str(p.relative_to(cxr_public)): p for p in files}
    result = find_duplicates(images, workers=2, progress=False)
    assert result.groups == sorted(tuple(sorted(p)) for p in REAL_PAIRS)
    assert result.unreadable == {}
    assert result.seconds < 60
