"""The phantoms' truth, twins, cue strengths and external site (cmtlib.data.synth: ties, cues,
truth; docs/CONTRACTS.md, "Synthetic truth, twins and cues")."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import maximum_filter

from cmtlib.data.manifest import read_manifest, resolve_path, write_manifest
from cmtlib.data.split import split_manifest
from cmtlib.data.synth import CUES, Strengths, cue_strengths, make_synthetic, read_truth, read_twins
from cmtlib.data.synth.cohort import make_cohort, make_external_cohort
from cmtlib.data.synth.cues import shrink
from cmtlib.data.synth.render import SOURCE_LOOK, _reach, render_with_twins
from cmtlib.data.synth.ties import ANCHORS
from cmtlib.errors import ConfigError

SIZE = 64
ALL_CUES = Strengths(**dict.fromkeys(CUES, 0.8))


def _png(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """Every cue tied at 0.8, and an external site: every kind of twin occurs."""
    out = tmp_path_factory.mktemp("planted")
    return make_synthetic(out, n=160, size=SIZE, seed=2, strengths=ALL_CUES, external_n=40, workers=1, progress=False)


def test_default_phantoms_are_byte_for_byte_those_made_before_strengths_existed(tmp_path):
    # Made by the generator of commit 6f3e896 (before cue strengths, truth and twins) with
    # make_synthetic(out, n=60, size=64, seed=0, workers=1): manifest.csv's bytes, then each image's
    # and mask's name and pixels. The default strengths must give the same films and manifest.
    manifest = make_synthetic(tmp_path, n=60, size=64, seed=0, workers=1, progress=False)
    digest = hashlib.sha256(manifest.read_bytes())
    for p in sorted((tmp_path / "images").glob("*.png")) + sorted((tmp_path / "masks").glob("*.png")):
        digest.update(p.name.encode())
        digest.update(_png(p).tobytes())
    assert digest.hexdigest() == "5dd1208e3333a7611da26404488416d52832836fbce92785817ae58306dbf58a"


def test_default_strengths_give_todays_probabilities_exactly():
    s = Strengths()
    for cue in ("source", "view", "marker"):
        assert {label: s.p(cue, label) for label in ("healthy", "other", "covid")} == ANCHORS[cue][1]
    assert s.tied() == ("source", "view")
    for cue in ("text", "size", "border", "tubes"):
        assert s.p(cue, "covid") == s.p(cue, "healthy") == 0.0


@pytest.mark.parametrize("cue", CUES)
def test_a_cue_at_strength_0_8_is_realised_at_0_8_and_at_0_not_tied(cue):
    # Expected strength over image shares (healthy 0.40, other 0.35, COVID-19 0.25): the key, within
    # the rounding of the source and view anchors (ties.py) and exactly for the others.
    shares = {"healthy": 0.40 / 0.75, "other": 0.35 / 0.75}
    for value in (0.0, 0.1, 0.5, 0.8, 1.0):
        s = Strengths(**{**Strengths.clean().as_dict(), cue: value})
        expected = s.p(cue, "covid") - sum(w * s.p(cue, k) for k, w in shares.items())
        assert expected == pytest.approx(value, abs=4e-4 if cue in ("source", "view") else 1e-12)
    clean = Strengths.clean()
    assert clean.tied() == ()
    if cue in ("text", "size", "border", "tubes"):
        assert clean.p(cue, "covid") == clean.p(cue, "other") == 0.0  # absent
    # Realised in a large cohort (the cohort decides all but the marker, drawn when rendered).
    if cue != "marker":
        cases = make_cohort(4000, 5, Strengths(**{**clean.as_dict(), cue: 0.8}))
        covid = np.array([c.label == "covid" for c in cases])
        carried = np.array([cue in c.cues for c in cases])
        assert carried[covid].mean() - carried[~covid].mean() == pytest.approx(0.8, abs=0.04)
        assert not any(c.cues for c in make_cohort(600, 5, clean))


def test_planting_a_cue_changes_nothing_else_of_the_cohort():
    base = make_cohort(400, 3, Strengths.clean())
    for cue in ("text", "size", "border", "tubes"):
        planted = make_cohort(400, 3, Strengths(**{**Strengths.clean().as_dict(), cue: 0.8}))
        for a, b in zip(base, planted):
            assert (a.patient, a.day, a.kind, a.view, a.source, a.severity, a.disease_seed, a.has_lung_mask) == \
                   (b.patient, b.day, b.kind, b.view, b.source, b.severity, b.disease_seed, b.has_lung_mask)
            assert b.cues in ((), (cue,))


def test_strengths_out_of_range_say_what_to_fix():
    for bad in (-0.1, 1.5, "strong", True):
        with pytest.raises(ConfigError, match="synth_text_strength must be a number in"):
            Strengths(text=bad)


def test_truth_and_twins_are_written_and_read_back(planted):
    df = read_manifest(planted)
    truth, twins = read_truth(planted), read_twins(planted)
    assert list(truth["image_id"]) == list(df["image_id"])
    assert list(truth.columns) == ["image_id", "lung", "lesion", "lesion_area", "kind", "severity", "cues", "view", "source", "split"]
    assert list(twins.columns) == ["image_id", "twin_of", "removed", "path", "lung", "lesion", "split"]
    rows = df.set_index("image_id")
    for _, t in truth.iterrows():
        row = rows.loc[t["image_id"]]
        image = _png(resolve_path(planted, row["path"]))
        lung = _png(t["lung"])
        assert Path(t["lung"]).is_absolute() and lung.shape == image.shape and set(np.unique(lung)) <= {0, 255}
        if row["lung_mask"]:  # the manifest's published mask is the truth itself
            assert np.array_equal(_png(resolve_path(planted, row["lung_mask"])), lung)
        if t["kind"] in ("healthy", "cardiomegaly"):
            assert t["lesion"] == "" and t["lesion_area"] == 0.0
        if t["lesion"]:
            lesion = _png(t["lesion"]) > 0
            assert t["lesion_area"] == pytest.approx(lesion.mean(), abs=1e-6)
            if row["disease_mask"]:
                assert np.array_equal(_png(resolve_path(planted, row["disease_mask"])) > 0, lesion)
        assert (t["view"], t["source"]) == (row["view"], row["source"])
        assert ("view" in t["cues"].split(";")) == (row["view"] == "AP")
        assert ("source" in t["cues"].split(";")) == (row["source"] == "synth-b")
    # One lesion twin per film with a lung-field lesion; one twin per cue carried.
    lesion_twins = set(twins.loc[twins["removed"] == "lesion", "twin_of"])
    assert lesion_twins == set(truth.loc[truth["lesion"] != "", "image_id"])
    expected = {(i, c) for i, cs in zip(truth["image_id"], truth["cues"]) for c in cs.split(";") if c}
    got = {(t, r.removeprefix("cue:")) for t, r in zip(twins["twin_of"], twins["removed"]) if r != "lesion"}
    assert got == expected
    assert {r.removeprefix("cue:") for r in twins["removed"]} == set(CUES) | {"lesion"}
    for _, w in twins.iterrows():
        assert w["image_id"].startswith(w["twin_of"] + "~") and Path(w["path"]).is_file() and Path(w["lung"]).is_file()
    assert not set(twins["image_id"]) & set(df["image_id"])  # twins are in no manifest


def test_truth_is_found_from_a_derived_manifest_and_absent_for_real_data(planted, tmp_path):
    split = tmp_path / "elsewhere" / "split.csv"
    split.parent.mkdir()
    split_manifest(planted, split, find_duplicates=False)
    truth, twins = read_truth(split), read_twins(split)
    assert len(truth) == len(read_manifest(planted)) and set(truth["split"]) == {"train", "val", "test"}
    assert (twins["split"] != "").all()
    # A manifest without generator truth (a real collection) has none.
    real = read_manifest(planted).head(5).copy()
    real["path"] = [str(resolve_path(planted, p)) for p in real["path"]]
    (tmp_path / "real" / "images").mkdir(parents=True)
    for i, p in enumerate(real["path"]):
        real.loc[real.index[i], "path"] = str(tmp_path / "real" / "images" / Path(p).name)
        Path(real["path"].iloc[i]).write_bytes(Path(p).read_bytes())
    write_manifest(real, tmp_path / "real" / "manifest.csv")
    assert read_truth(tmp_path / "real" / "manifest.csv") is None and read_twins(tmp_path / "real" / "manifest.csv") is None


def test_every_twin_differs_from_its_film_only_where_the_removed_part_acted():
    seen = set()
    for case in make_cohort(120, 4, ALL_CUES) + make_external_cohort(20, 4, ALL_CUES):
        film, twins = render_with_twins(case, SIZE, 4)
        for twin in twins:
            seen.add(twin.name)
            if twin.name == "size":  # the same film at full size: stored small, it is the film
                assert np.array_equal(shrink(twin.film.image), film.image) and twin.film.image.shape == (SIZE, SIZE)
                continue
            diff = film.image.astype(int) - twin.film.image.astype(int)
            changed = twin.changed()
            if changed is not None:
                assert not diff[~changed].any(), f"{case.image_name} {twin.name}: pixels changed outside the removed part"
            assert diff.any(), f"{case.image_name} {twin.name}: the twin equals its film"
            assert twin.name not in twin.film.cues and set(twin.film.cues) == set(film.cues) - {twin.name}
            if twin.name == "lesion":  # an opacity is brighter, a pneumothorax darker, than the lung without it
                assert np.abs(diff[film.disease]).mean() > 2 and not twin.film.disease.any()
                assert (diff[film.disease].mean() < 0) == (case.kind == "pneumothorax")
            if twin.name == "view":
                assert not np.array_equal(twin.film.lung, film.lung)
            if twin.name == "source":  # synth-a is the sharper, less noisy site: the film's marker moves too
                assert case.source == "synth-b" and np.abs(diff).mean() > 3
    assert seen == set(CUES) | {"lesion"}


def test_a_covid_lesion_twin_changes_the_film_mostly_inside_the_lesion():
    # Outside the lesion's footprint (dilated by the imaging chain's reach) a twin is bit-identical
    # (previous test). The COVID-19 footprint is wider than its truth mask (ill-defined margins and a
    # faint haze over the lower periphery), yet most of the change lies in the mask and its reach.
    shares = []
    for case in [c for c in make_cohort(200, 6) if c.kind == "covid"][:25]:
        film, twins = render_with_twins(case, 128, 6)
        diff = np.abs(film.image.astype(int) - next(t for t in twins if t.name == "lesion").film.image.astype(int))
        reach = _reach(SOURCE_LOOK[case.source], 128)
        near = maximum_filter(film.disease, size=2 * reach + 1)
        shares.append(diff[near].sum() / diff.sum())
    assert np.median(shares) > 0.93 and min(shares) > 0.8


def test_a_fainter_covid_opacity_changes_only_covid_films_inside_their_lesion_reach():
    # The faint runs of the audit's calibration: the same cohort, masks and twins; only each COVID-19
    # opacity's density is scaled, so its lesion twin is the very film the full-opacity data set has.
    cases = [c for c in make_cohort(120, 4)][:40]
    for case in cases:
        film, twins = render_with_twins(case, SIZE, 4)
        faint, faint_twins = render_with_twins(replace(case, opacity=0.4), SIZE, 4)
        if case.kind != "covid":
            assert np.array_equal(film.image, faint.image)
            continue
        assert np.array_equal(film.disease, faint.disease) and [t.name for t in twins] == [t.name for t in faint_twins]
        lesion = next(t for t in twins if t.name == "lesion").film.image.astype(int)
        assert np.array_equal(lesion, next(t for t in faint_twins if t.name == "lesion").film.image)
        full, weak = np.abs(film.image.astype(int) - lesion).sum(), np.abs(faint.image.astype(int) - lesion).sum()
        assert 0 < weak < 0.7 * full  # fainter, not gone
    with pytest.raises(ConfigError, match="covid_opacity"):
        make_synthetic(Path("unused"), n=10, covid_opacity=0)


def test_the_external_site_is_appended_without_changing_the_films_or_their_split(tmp_path):
    alone = make_synthetic(tmp_path / "alone", n=120, size=32, seed=1, workers=1, progress=False)
    both = make_synthetic(tmp_path / "both", n=120, size=32, seed=1, external_n=150, workers=1, progress=False)
    a, b = read_manifest(alone), read_manifest(both)
    assert b.iloc[:120].reset_index(drop=True).equals(a)
    for cell in a["path"]:
        assert (tmp_path / "alone" / cell).read_bytes() == (tmp_path / "both" / cell).read_bytes()
    ext = b.iloc[120:]
    assert (ext["source"] == "synth-c").all() and ext["patient_id"].str.match(r"^synth:X\d{4}$").all()
    assert (ext["label_covid"] == "1").sum() >= 25 and (ext["label_covid"] == "0").sum() >= 80
    split_manifest(alone, tmp_path / "a.csv", find_duplicates=False)
    split_manifest(both, tmp_path / "b.csv", find_duplicates=False)
    sa, sb = read_manifest(tmp_path / "a.csv"), read_manifest(tmp_path / "b.csv")
    assert list(sb["split"].iloc[:120]) == list(sa["split"])


def test_realised_strength_is_about_the_key_in_every_split(tmp_path):
    strengths = Strengths(**{**Strengths.clean().as_dict(), "text": 0.8})
    manifest = make_synthetic(tmp_path / "d", n=700, size=32, seed=3, strengths=strengths, workers=1, progress=False)
    split_manifest(manifest, tmp_path / "s.csv", find_duplicates=False)
    truth = read_truth(tmp_path / "s.csv")
    labels = read_manifest(tmp_path / "s.csv")["label_covid"]
    table = cue_strengths(truth, labels, truth["split"])
    assert list(table.columns) == ["all", "train", "val", "test"]
    assert table.loc["text"].to_numpy() == pytest.approx([0.8] * 4, abs=0.15)
    assert table.loc[["size", "border", "tubes", "marker"]].abs().to_numpy().max() == 0.0
    assert abs(table.loc["source", "all"]) < 0.12 and abs(table.loc["view", "all"]) < 0.12  # clean: not tied


def test_twins_never_reach_the_cache(tmp_path, monkeypatch):
    from cmtlib.data.cache import open_cache
    from cmtlib.data.prepare import data_folder, prepare_data
    from cmtlib.params import load_params

    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path))
    params = load_params(None, ["synth_n=60", "synth_size=32", "image_size=32", "synth_external_n=30",
                                "holdout=[source=synth-c]", "synth_tubes_strength=0.8", "synth_text_strength=0.8"])
    cache = prepare_data(params)
    index, images, _, _, _ = open_cache(cache)
    twins = read_twins(data_folder(params.data) / "synth" / "manifest.csv")
    assert len(twins) > 30
    assert not set(twins["image_id"]) & set(index["image_id"]) and not index["image_id"].str.contains("~").any()
    assert len(index) == images.shape[0] == 90 and set(index.loc[index["source"] == "synth-c", "split"]) == {"holdout"}


def test_settings_away_from_the_defaults_get_their_own_data_folder():
    from cmtlib.data.prepare import data_folder, data_key
    from cmtlib.params import load_params

    default = load_params(None, [])
    assert not any(k.startswith("synth_") and k.endswith("_strength") for k in data_key(default.data))
    folders = {data_folder(load_params(None, [kv]).data) for kv in ("synth_n=100", "synth_text_strength=0.8",
                                                                     "synth_source_strength=0", "synth_external_n=10",
                                                                     "synth_covid_opacity=0.4")}
    assert len(folders) == 5 and data_folder(default.data) not in folders


def test_cli_synth_flags_reach_the_generator(tmp_path, capsys):
    from cmtlib.cli import SYNTH_CUES, main

    assert SYNTH_CUES == CUES
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "80", "--size", "32", "--border-strength", "0.8",
                 "--source-strength", "0", "--external-n", "20", "--covid-opacity", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "cue strengths realised" in out and "border" in out
    truth = read_truth(tmp_path / "manifest.csv")
    assert len(truth) == 100 and truth["cues"].str.contains("border").any() and not truth["cues"].str.contains("source").any()
