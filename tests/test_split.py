"""cmtlib.data.split: patient- and duplicate-disjoint, stratified, seeded splits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cmtlib.cli import main as cmt
from cmtlib.data.manifest import COLUMNS, DUPLICATE_GROUP, ManifestError, check_manifest, read_manifest, write_manifest
from cmtlib.data.split import evidence_path, image_class, split_manifest

LABELS = {"covid": ("0", "1", "0"), "healthy": ("1", "0", "0"), "other": ("0", "0", "1"), "unknown": ("", "", "")}


def row(image_id: str, patient: str, source: str, label: str, **extra) -> dict:
    r = {c: "" for c in COLUMNS}
    healthy, covid, other = LABELS[label]
    r.update(image_id=image_id, path=f"images/{image_id.replace(':', '_')}.png", patient_id=patient, source=source,
             label_healthy=healthy, label_covid=covid, label_other=other, split="train")
    r.update(extra)
    return r


def cohort(seed: int = 0) -> pd.DataFrame:
    """600 patients in two big sources, 1-4 images each, plus the special cases the tests name."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(600):
        source = ("ieee8023", "nih")[p % 2]
        label = rng.choice(["covid", "other", "unknown"] if source == "ieee8023" else ["healthy", "other"])
        for k in range(int(rng.integers(1, 5))):
            rows.append(row(f"{source}:{p}_{k}", f"{source}:{p}", source, str(label)))
    # One patient with films in two collections (ieee8023 re-published a Figure1 case).
    rows += [row("ieee8023:both_0", "ieee8023:both", "ieee8023", "covid"), row("figure1:both_1", "ieee8023:both", "figure1", "covid")]
    # The importer already grouped one picture kept under two patient ids.
    rows += [row("nih:g_0", "nih:ga", "nih", "other", **{DUPLICATE_GROUP: "nih:sameimage"}),
             row("nih:g_1", "nih:gb", "nih", "other", **{DUPLICATE_GROUP: "nih:sameimage"})]
    # A tiny stratum: two patients of a third source.
    rows += [row("tbx:0", "tbx:0", "tbx11k", "other"), row("tbx:1", "tbx:1", "tbx11k", "other")]
    return pd.DataFrame(rows)


@pytest.fixture
def written(tmp_path) -> Path:
    path = tmp_path / "manifest.csv"
    write_manifest(cohort(), path)
    return path


def split(path: Path, out: Path, **kw) -> tuple[pd.DataFrame, object]:
    report = split_manifest(path, out, find_duplicates=False, progress=False, **kw)
    return read_manifest(out), report


def test_split_is_patient_and_group_disjoint_and_valid(written, tmp_path):
    df, report = split(written, tmp_path / "split.csv")
    assert check_manifest(df) == []
    assert set(df["split"]) == {"train", "val", "test"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    grouped = df[df[DUPLICATE_GROUP] != ""]
    assert grouped[DUPLICATE_GROUP].tolist() == ["nih:sameimage", "nih:sameimage"]  # kept as the importer named it
    assert grouped["split"].nunique() == 1  # so patients nih:ga and nih:gb went together
    both = df[df["patient_id"] == "ieee8023:both"]
    assert set(both["source"]) == {"ieee8023", "figure1"} and both["split"].nunique() == 1
    assert report.n_images == len(df) and report.n_patients == df["patient_id"].nunique()
    assert report.n_units == report.n_patients - 1  # the grouped pair of patients is one unit
    assert report.groups == 1 and report.groups_kept == 1 and report.groups_joining_patients == 1


def test_fractions_close_to_requested_in_every_big_stratum(written, tmp_path):
    df, report = split(written, tmp_path / "split.csv", val=0.15, test=0.2)
    big = report.strata[report.strata["units"] >= 60]
    assert len(big) == 5  # ieee8023 covid / other / unknown, nih healthy / other
    for name, s in big.iterrows():
        assert abs(s["test"] / s["images"] - 0.2) < 0.03, name
        assert abs(s["val"] / s["images"] - 0.15) < 0.03, name
    overall = df["split"].value_counts(normalize=True)
    assert overall["test"] == pytest.approx(0.2, abs=0.02) and overall["val"] == pytest.approx(0.15, abs=0.02)
    # The counts table of the summary agrees with the manifest.
    assert report.counts.loc[("all", "images"), "test"] == (df["split"] == "test").sum()
    cls = image_class(df)
    n = ((df["source"] == "nih") & (cls == "healthy") & (df["split"] == "val")).sum()
    assert report.counts.loc[("nih", "healthy"), "val"] == n


def test_tiny_stratum_still_gets_a_test_example(written, tmp_path):
    df, report = split(written, tmp_path / "split.csv")
    tbx = df[df["source"] == "tbx11k"]
    assert sorted(tbx["split"]) == ["test", "train"]
    assert report.strata.loc["tbx11k/other", "test"] == 1


def test_seeded_repeatable_and_seed_changes_it(written, tmp_path):
    a, _ = split(written, tmp_path / "a.csv", seed=3)
    b, _ = split(written, tmp_path / "b.csv", seed=3)
    c, _ = split(written, tmp_path / "c.csv", seed=4)
    pd.testing.assert_frame_equal(a, b)
    by_patient = lambda d: d.groupby("patient_id")["split"].first()
    changed = (by_patient(a) != by_patient(c)).mean()
    assert 0.2 < changed < 0.8


def test_row_order_does_not_change_the_split(written, tmp_path):
    shuffled = tmp_path / "shuffled.csv"
    write_manifest(read_manifest(written).sample(frac=1.0, random_state=1), shuffled)
    a, _ = split(written, tmp_path / "a.csv")
    b, _ = split(shuffled, tmp_path / "b.csv")
    assert a.set_index("image_id")["split"].sort_index().equals(b.set_index("image_id")["split"].sort_index())


def test_summary_reports_counts_by_source_and_label(written, tmp_path):
    _, report = split(written, tmp_path / "split.csv")
    text = report.summary()
    assert "duplicate detection: skipped" in text
    assert "ieee8023" in text and "covid" in text and "patients" in text
    assert "1 join two or more patients" in text


def test_bad_inputs_say_what_to_fix(written, tmp_path):
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_manifest(written, tmp_path / "x.csv", val=0.5, test=0.5, find_duplicates=False)
    bad = cohort()
    bad.loc[1, "image_id"] = bad.loc[0, "image_id"]
    write_manifest(bad, tmp_path / "bad.csv")
    with pytest.raises(ManifestError, match="duplicate image_id at row 2"):
        split_manifest(tmp_path / "bad.csv", tmp_path / "x.csv", find_duplicates=False)
    assert not (tmp_path / "x.csv").exists()
    write_manifest(cohort().iloc[:0], tmp_path / "empty.csv")
    with pytest.raises(ManifestError, match="no rows to split"):
        split_manifest(tmp_path / "empty.csv", tmp_path / "x.csv")


def _film(seed: int, size: int = 192) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.8 - 0.45 * (np.exp(-(((x - 0.3) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(-(((x - 0.7) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2)))
    noise = rng.normal(size=(size // 4, size // 4)).astype(np.float32)
    img += 0.03 * np.asarray(Image.fromarray(noise, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    return np.clip(img, 0, 1)


def test_detected_duplicates_join_patients_and_evidence_is_written(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for p in range(12):
        rows.append(row(f"ieee8023:{p}", f"ieee8023:{p}", "ieee8023", "covid" if p % 2 else "other"))
        Image.fromarray(np.uint8(_film(p) * 255)).save(tmp_path / rows[-1]["path"])
    # Patient figure1:F1 holds a re-encoded, resized copy of ieee8023 patient 5's film.
    rows.append(row("figure1:F1", "figure1:F1", "figure1", "covid"))
    copy = Image.fromarray(np.uint8(_film(5) * 255)).resize((150, 150))
    copy.save(tmp_path / rows[-1]["path"].replace(".png", ".jpg"), quality=75)
    rows[-1]["path"] = rows[-1]["path"].replace(".png", ".jpg")
    # ... and an unreadable file, noted in the evidence, left to the cache's quarantine.
    rows.append(row("figure1:broken", "figure1:B", "figure1", "covid"))
    (tmp_path / rows[-1]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")

    report = split_manifest(tmp_path / "m.csv", tmp_path / "out.csv", seed=0, workers=1, progress=False)
    df = read_manifest(tmp_path / "out.csv").set_index("image_id")
    assert df.loc["ieee8023:5", DUPLICATE_GROUP] == df.loc["figure1:F1", DUPLICATE_GROUP] == "dup:figure1:F1"
    assert df.loc["ieee8023:5", "split"] == df.loc["figure1:F1", "split"]
    assert (df.drop(index=["ieee8023:5", "figure1:F1"])[DUPLICATE_GROUP] == "").all()
    assert report.groups_detected == 1 and report.groups_joining_patients == 1 and report.unreadable == 1
    assert check_manifest(df.reset_index()) == []
    ev = pd.read_csv(evidence_path(tmp_path / "out.csv"), dtype=str, keep_default_na=False)
    assert list(ev.columns[:5]) == ["image_id_a", "image_id_b", "hash_distance", "correlation", "decision"]
    dup = ev[ev["decision"] == "duplicate"]
    assert dup[["image_id_a", "image_id_b"]].values.tolist() == [["ieee8023:5", "figure1:F1"]]
    assert float(dup["correlation"].iloc[0]) > 0.9
    assert ev.loc[ev["image_id_a"] == "figure1:broken", "decision"].iloc[0].startswith("unreadable: ImageReadError")
    assert str(report.evidence) in report.summary()


def test_cli_split_prints_the_summary(written, tmp_path, capsys):
    assert cmt(["data", "split", str(written), "--out", str(tmp_path / "s.csv"), "--seed", "1", "--no-duplicates"]) == 0
    assert "images per split by source and label" in capsys.readouterr().out
    assert check_manifest(read_manifest(tmp_path / "s.csv")) == []


def test_cli_split_shows_each_duplicate_stage_when_output_is_not_a_terminal(tmp_path):
    """A batch job's log (pipes, no terminal) shows one line per stage with counts and seconds."""
    (tmp_path / "images").mkdir()
    rows = []
    for p in range(6):
        rows.append(row(f"ieee8023:{p}", f"ieee8023:{p}", "ieee8023", "covid"))
        Image.fromarray(np.uint8(_film(p % 5) * 255)).save(tmp_path / rows[-1]["path"])  # 0 and 5: one film
    write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")
    done = subprocess.run([sys.executable, "-m", "cmtlib.cli", "data", "split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s.csv")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("duplicates: ")]
    assert [x.split(":")[1].strip() for x in lines] == ["features", "candidates", "confirmations", "groups"]
    assert lines[0].startswith("duplicates: features: 6 images hashed") and all(re.search(r", \d+\.\d s$", x) for x in lines)
    assert "groups: 1 group(s) of 2 images" in lines[3]
    assert re.search(r"^duplicate search: \d+ candidate pair\(s\) compared \(at most 6 per image, nearest first", done.stdout, re.M)


@pytest.mark.shared_data
def test_real_copies_keep_their_patients_together(cxr_public, tmp_path):
    ieee = "ieee8023_via_GeneralBlockchain_lungboxes/images/"
    fig1 = "agchung_Figure1/images/"
    files = [  # (image_id, patient_id, source, relative path)
        ("ieee8023:137", "ieee8023:137", "ieee8023", ieee + "A7E260CE-8A00-4C5F-A7F5-27336527A981.jpeg"),
        ("ieee8023:202", "ieee8023:202", "ieee8023", ieee + "case_76_1-3.png"),
        ("ieee8023:36", "ieee8023:36", "ieee8023", ieee + "9C34AF49-E589-44D5-92D3-168B3B04E4A6.jpeg"),
        ("figure1:COVID-00022", "figure1:COVID-00022", "figure1", fig1 + "COVID-00022.jpg"),
        ("figure1:COVID-00033", "figure1:COVID-00033", "figure1", fig1 + "COVID-00033.jpg"),
        ("figure1:COVID-00037", "figure1:COVID-00037", "figure1", fig1 + "COVID-00037.jpg"),
    ] + [(f"figure1:{n}", f"figure1:{n}", "figure1", fig1 + f"{n}.jpg") for n in ("COVID-00002", "COVID-00004", "COVID-00005", "COVID-00006")]
    rows = [row(i, p, s, "covid", path=str(cxr_public / rel)) for i, p, s, rel in files]
    write_manifest(pd.DataFrame(rows), tmp_path / "real.csv")
    report = split_manifest(tmp_path / "real.csv", tmp_path / "out.csv", workers=2, progress=False)
    df = read_manifest(tmp_path / "out.csv").set_index("image_id")
    for a, b in (("ieee8023:137", "ieee8023:202"), ("ieee8023:36", "figure1:COVID-00022"), ("figure1:COVID-00033", "figure1:COVID-00037")):
        assert df.loc[a, DUPLICATE_GROUP] != "" and df.loc[a, DUPLICATE_GROUP] == df.loc[b, DUPLICATE_GROUP]
        assert df.loc[a, "split"] == df.loc[b, "split"]
    assert report.groups_detected == 3 and report.groups_joining_patients == 3
    assert (df[DUPLICATE_GROUP] != "").sum() == 6
    assert check_manifest(df.reset_index()) == []


def test_split_written_elsewhere_keeps_paths_resolvable(tmp_path):
    """A split written to another folder must still point at the images (paths were relative)."""
    from cmtlib.data.manifest import read_manifest, resolve_path
    from cmtlib.data.synth import make_synthetic

    manifest = make_synthetic(tmp_path / "synth", n=12, size=64, seed=0, workers=1)
    out = tmp_path / "elsewhere" / "split.csv"
    split_manifest(manifest, out, val=0.2, test=0.2, seed=0, find_duplicates=False)
    df = read_manifest(out)
    assert all(resolve_path(out, p).is_file() for p in df["path"])
    masks = [m for m in df["lung_mask"] if m]
    assert masks and all(resolve_path(out, m).is_file() for m in masks)
