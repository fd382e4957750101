"""Collection adapters on the real published X-rays in ../shared/data/cxr-public (read in place).

One `auto` import per session (a few seconds) feeds every test here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cmtlib.data.collections import import_collection
from cmtlib.data.manifest import check_manifest, parse_boxes, quarantine_path, read_manifest, read_quarantine

pytestmark = pytest.mark.shared_data

IEEE = "ieee8023_via_GeneralBlockchain_lungboxes"


@pytest.fixture(scope="session")
def imported(cxr_public: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cxr") / "manifest.csv"
    report = import_collection("auto", cxr_public, out)
    df = read_manifest(out).set_index("image_id", drop=False)
    return report, df, out


def _labels(df: pd.DataFrame, image_id: str) -> tuple[str, str, str]:
    r = df.loc[image_id]
    return r["label_healthy"], r["label_covid"], r["label_other"]


def test_auto_covers_every_collection_and_is_valid(imported, cxr_public):
    report, df, out = imported
    files = {
        "ieee8023": len(list((cxr_public / IEEE / "images").iterdir())),
        "figure1": len(list((cxr_public / "agchung_Figure1" / "images").iterdir())),
        "actualmed": len(list((cxr_public / "agchung_Actualmed_normals_only" / "images").iterdir())),
        "nih": len(list((cxr_public / "nih_chestxray14").rglob("*.png"))),
        "tbx11k": len(list((cxr_public / "tbx11k_samples" / "imgs").rglob("*.png"))),
    }
    assert files == {"ieee8023": 240, "figure1": 55, "actualmed": 9, "nih": 510, "tbx11k": 3}
    assert report.count_by_source() == dict(sorted(files.items()))
    assert check_manifest(read_manifest(out)) == []
    assert report.not_imported == []  # the annotation folders are used by the ieee8023 adapter
    assert len(read_quarantine(quarantine_path(out))) == 0
    assert df["lung_mask"].eq("").all()  # no pixel lung masks exist for every class alike


def test_ids_are_prefixed_and_never_dicom_uids(imported):
    _, df, _ = imported
    assert (df["image_id"].str.split(":").str[0] == df["source"]).all()
    assert (df["patient_id"].str.split(":").str[0] == df["source"]).all()
    actualmed = df[df["source"] == "actualmed"]
    assert actualmed["image_id"].str.fullmatch(r"actualmed:ANON\d+").all()
    assert not df["image_id"].str.contains("1.2.840", regex=False).any()


def test_figure1_images_of_one_patient(imported):
    _, df, _ = imported
    assert df.loc["figure1:COVID-00003a", "patient_id"] == "figure1:COVID-00003"
    assert df.loc["figure1:COVID-00003b", "patient_id"] == "figure1:COVID-00003"
    assert df.loc["figure1:COVID-00003a", "view"] == "AP"  # "AP erect"
    assert _labels(df, "figure1:COVID-00003a") == ("", "", "")  # finding blank: unknown, never 0
    assert _labels(df, "figure1:COVID-00001") == ("0", "1", "0")
    assert _labels(df, "figure1:COVID-00023") == ("1", "0", "0")
    assert df.loc["figure1:COVID-00023", "disease_boxes"] == "[]"
    assert _labels(df, "figure1:COVID-00031") == ("0", "0", "1")  # Pneumonia
    assert df.loc["figure1:COVID-00002", "age"] == ""  # "50+" is not a number
    assert df[df["source"] == "figure1"]["patient_id"].nunique() == 48


def test_ieee8023_patients_labels_and_metadata(imported):
    _, df, _ = imported
    assert df.loc["ieee8023:41182_2020_203_Fig3_HTML", "patient_id"] == "ieee8023:331a"
    assert df.loc["ieee8023:41182_2020_203_Fig4_HTML", "patient_id"] == "ieee8023:331b"
    assert df.loc["ieee8023:41182_2020_203_Fig5_HTML", "patient_id"] == "ieee8023:331b"
    r = df.loc["ieee8023:nejmc2001573_f1a"]
    assert (r["view"], r["sex"], r["age"], r["offset_days"], r["finding"]) == ("PA", "F", "52", "0", "COVID-19")
    assert _labels(df, "ieee8023:nejmc2001573_f1a") == ("0", "1", "0")
    assert _labels(df, "ieee8023:ARDSSevere") == ("0", "0", "1")
    assert df.loc["ieee8023:ARDSSevere", "license"] == "CC BY-SA"
    assert _labels(df, "ieee8023:6770dac454c45c86bc6c2d6193b177_jumbo") == ("", "", "")  # todo
    assert df.loc["ieee8023:6770dac454c45c86bc6c2d6193b177_jumbo", "view"] == ""
    assert _labels(df, "ieee8023:16745_6_1") == ("1", "0", "0")  # No Finding
    ieee = df[df["source"] == "ieee8023"]
    assert ieee["patient_id"].nunique() == 151
    assert (ieee["label_covid"] == "1").sum() == 164  # COVID-19 160 + "COVID-19, ARDS" 4


def test_ieee8023_lung_boxes_from_coco(imported):
    _, df, _ = imported
    # COCO bbox [213, 106, 604, 746] (Right Lung) and [944, 112, 475, 929] (Left Lung).
    assert parse_boxes(df.loc["ieee8023:nejmc2001573_f1a", "lung_boxes"]) == [[213, 106, 817, 852], [944, 112, 1419, 1041]]
    assert (df[df["source"] == "ieee8023"]["lung_boxes"] != "").all()


def test_disease_mask_composed_from_instances(imported, cxr_public):
    _, df, out = imported
    rel = df.loc["ieee8023:nejmc2001573_f1a", "disease_mask"]
    mask = np.asarray(Image.open(out.parent / rel)) > 0
    assert mask.shape == (1272, 1645)  # the image's own size
    # The one disease instance: Ground Glass Opacities at Left 373, Top 519, 314 x 308.
    instance = np.asarray(Image.open(cxr_public / "GeneralBlockchain_segmentations" / "masks" /
                                     "5850834043b59f3ee7860a4fad367e069ad34108_oqbw4ovGpBDceHeck.png").convert("RGBA"))
    shape = instance[..., :3].max(axis=-1) > 0  # the shape is in colour; alpha is 255 everywhere
    inside = mask[519:519 + 308, 373:373 + 314]
    assert np.array_equal(inside, shape)
    assert mask.sum() == shape.sum() == 38524  # nothing outside the instance's box, not the full box
    ieee = df[df["source"] == "ieee8023"]
    assert (ieee["disease_mask"] != "").sum() == 43


def test_sick_image_annotated_without_disease_stays_unknown(imported):
    _, df, _ = imported
    r = df.loc["ieee8023:23E99E2E-447C-46E5-8EB2-D35D12473C39"]
    assert r["label_covid"] == "1"
    assert (r["disease_mask"], r["disease_boxes"]) == ("", "")  # only healthy images are known empty


def test_v7_polygons_go_to_an_extra_column(imported):
    report, df, out = imported
    has = df[df["lung_polygon_mask"] != ""]
    assert len(has) == 161
    assert (has["label_covid"] == "1").all()  # COVID-only: why they must not become lung_mask
    mask = np.asarray(Image.open(out.parent / has.iloc[0]["lung_polygon_mask"])) > 0
    assert 0.1 < mask.mean() < 0.6
    assert df.loc["ieee8023:ciaa199.pdf-001-a", "lung_polygon_mask"] == ""  # drawn on another aspect ratio
    assert "ciaa199.pdf-001-a.png: no lung_polygon_mask" in report.summary()


def test_nih_same_image_at_two_sizes(imported):
    _, df, _ = imported
    pair = df[df["image_id"].str.startswith("nih:00000001_000")]
    assert sorted(pair["image_id"]) == ["nih:00000001_000_512px", "nih:00000001_000_64px"]
    assert set(pair["duplicate_group"]) == {"nih:00000001_000"}
    assert set(pair["patient_id"]) == {"nih:00000001"}
    assert _labels(df, "nih:00000001_000_64px") == ("0", "0", "1")  # Cardiomegaly; pre-2020: covid 0
    assert (df.loc[df["source"] != "nih", "duplicate_group"] == "").all()


def test_nih_absent_rows_counted_and_labels(imported):
    report, df, _ = imported
    assert report.skipped("nih")["Data_Entry rows whose image is not in this copy (counted, not quarantined)"] == 112120 - 509
    nih = df[df["source"] == "nih"]
    healthy = nih[nih["finding"] == "No Finding"]
    assert len(healthy) == 215
    assert (healthy["label_healthy"] == "1").all() and (healthy["disease_boxes"] == "[]").all()
    assert (nih["label_covid"] == "0").all()
    assert set(nih["view"]) == {"PA", "AP"}


def test_nih_boxes_in_the_files_own_pixels(imported):
    _, df, _ = imported
    # BBox_List: 00000032_037 Infiltrate at x 339.17, y 119.20, w 172.29, h 351.09 on the 1024-px
    # release; this copy is a 64-px thumbnail, so the box is x 64/1024.
    r = df.loc["nih:00000032_037"]
    assert parse_boxes(r["disease_boxes"]) == [[21.2, 7.4, 32.0, 29.4]]
    assert json.loads(r["disease_box_labels"]) == ["Infiltrate"]


def test_tbx11k_classes_and_boxes(imported):
    _, df, _ = imported
    assert _labels(df, "tbx11k:h0001") == ("1", "0", "0")
    assert _labels(df, "tbx11k:tb0007") == ("0", "0", "1")
    assert len(parse_boxes(df.loc["tbx11k:tb0007", "disease_boxes"])) == 2


def test_summary_counts_laterals_and_kept_views(imported):
    report, _, _ = imported
    text = report.summary()
    assert text.count("laterals excluded: 0") == 5  # none of these copies holds a lateral film
    assert "kept: 9 view blank kept as ''" in text and "kept: 1 view ? kept as ''" in text
    assert "left out: 111611 Data_Entry rows" in text
    assert "817 images" in text.splitlines()[0]
