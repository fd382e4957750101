"""Collection adapters on tiny collections the tests write (no shared data needed): the shared
label / view / id rules, CheXpert, the csv kind, an ieee8023 copy with laterals and a missing
file, and the `cmt data import` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmtlib.cli import main
from cmtlib.data.collections import import_collection
from cmtlib.data.collections.common import looks_like_uid, normalise_view, prefixed
from cmtlib.data.findings import BUILT_IN
from cmtlib.data.manifest import ManifestError, check_manifest, quarantine_path, read_manifest, read_quarantine


def _image(path: Path, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 128, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("finding, pre2020, expected", [
    ("No Finding", False, ("1", "0", "0")),
    ("normal", False, ("1", "0", "0")),
    ("COVID-19", False, ("0", "1", "0")),
    ("COVID-19, ARDS", False, ("0", "1", "0")),
    ("Pneumonia/Viral/COVID-19", False, ("0", "1", "0")),
    ("Streptococcus", False, ("0", "0", "1")),
    ("Atelectasis|Effusion", True, ("0", "0", "1")),
    ("todo", False, ("", "", "")),
    ("", False, ("", "", "")),
    ("", True, ("", "0", "")),
    ("non-COVID", False, ("", "0", "")),
])
def test_finding_to_labels_follows_the_design_table(finding, pre2020, expected):
    assert BUILT_IN.labels(finding, pre2020=pre2020) == expected


def test_covid_in_a_pre2020_collection_is_an_error():
    with pytest.raises(ManifestError, match="pre-2020"):
        BUILT_IN.labels("COVID-19", pre2020=True)


@pytest.mark.parametrize("raw, expected", [
    ("PA", ("frontal", "PA")), ("AP erect", ("frontal", "AP")), ("AP Supine", ("frontal", "AP Supine")),
    ("ap  supine", ("frontal", "AP Supine")), ("L", ("lateral", "")), ("Lateral", ("lateral", "")),
    ("", ("blank", "")), ("?", ("other", "")), ("Axial", ("other", "")),
])
def test_view_normalisation(raw, expected):
    assert normalise_view(raw) == expected


def test_dicom_uids_never_become_ids():
    assert looks_like_uid("CR.1.2.840.113564.192168196.2020040117583329780.1203801020003")
    assert looks_like_uid("2.25.329800735698586629295641978511506172918")
    assert not looks_like_uid("COVID-00003a") and not looks_like_uid("1-s2.0-S0140673620303706-fx1_lrg")
    with pytest.raises(ManifestError, match="DICOM UID"):
        prefixed("actualmed", "DX.1.2.840.113564.1722810162.20200327130648390830")


CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Edema,Pleural Effusion,Support Devices\n")


def _chexpert(root: Path) -> Path:
    base = root / "CheXpert-v1.0-small"
    rows = [
        ("patient00001/study1/view1_frontal.jpg", "Female,68,Frontal,AP,,,1.0,,,,1.0"),
        ("patient00001/study1/view2_lateral.jpg", "Female,68,Lateral,,,,1.0,,,,1.0"),
        ("patient00002/study1/view1_frontal.jpg", "Male,40,Frontal,PA,1.0,,,,,,"),
        ("patient00003/study2/view1_frontal.jpg", "Male,77,Frontal,AP,,,,,-1.0,,1.0"),
        ("patient00004/study1/view1_frontal.jpg", "Female,50,Frontal,PA,,,,,,,"),
        ("patient00005/study1/view1_frontal.jpg", "Male,30,Frontal,PA,1.0,,,,,,"),  # no file
    ]
    lines = [CHEXPERT_HEADER] + [f"CheXpert-v1.0-small/train/{p},{rest}\n" for p, rest in rows]
    base.mkdir(parents=True)
    (base / "train.csv").write_text("".join(lines))
    for p, _ in rows[:5]:
        _image(base / "train" / p)
    return base


@pytest.mark.parametrize("uncertain, expected", [("unknown", ("", "0", "")), ("positive", ("0", "0", "1")), ("negative", ("", "0", ""))])
def test_chexpert_frontal_only_uncertain_and_patients(tmp_path, uncertain, expected):
    base = _chexpert(tmp_path)
    out = tmp_path / "out" / "chexpert.csv"
    report = import_collection("chexpert", base, out, uncertain=uncertain)
    df = read_manifest(out).set_index("image_id", drop=False)
    assert check_manifest(df.reset_index(drop=True)) == []
    assert list(df.index) == ["chexpert:patient00001_study1_view1_frontal", "chexpert:patient00002_study1_view1_frontal",
                              "chexpert:patient00003_study2_view1_frontal", "chexpert:patient00004_study1_view1_frontal"]
    assert df.loc["chexpert:patient00003_study2_view1_frontal", "patient_id"] == "chexpert:patient00003"
    labels = df[["label_healthy", "label_covid", "label_other"]].apply(tuple, axis=1)
    assert labels["chexpert:patient00001_study1_view1_frontal"] == ("0", "0", "1")  # Cardiomegaly
    assert labels["chexpert:patient00002_study1_view1_frontal"] == ("1", "0", "0")  # No Finding
    assert labels["chexpert:patient00003_study2_view1_frontal"] == expected         # Edema -1 only
    assert labels["chexpert:patient00004_study1_view1_frontal"] == ("", "0", "")    # all blank: unknown
    assert df.loc["chexpert:patient00002_study1_view1_frontal", "disease_boxes"] == "[]"
    assert df.loc["chexpert:patient00001_study1_view1_frontal", ["view", "sex", "age"]].tolist() == ["AP", "F", "68"]
    assert "laterals excluded: 1" in report.summary()
    q = read_quarantine(quarantine_path(out))
    assert q["image_id"].tolist() == ["chexpert:patient00005_study1_view1_frontal"]
    assert q["reason"].tolist() == ["file not found"]


def _csv_collection(root: Path) -> Path:
    _image(root / "img" / "a.png")
    _image(root / "img" / "b.png")
    _image(root / "img" / "c.png")
    _image(root / "img" / "1.2.840.113619.2.55.3.604688.png")
    (root / "labels.csv").write_text(
        "File,Diagnosis,Subject,Projection,Covid\n"
        "img/a.png,COVID-19,S1,AP erect,\n"
        "img/b.png,normal,S1,L,\n"
        "img/c.png,,S2,PA,yes\n"
        "img/1.2.840.113619.2.55.3.604688.png,Pneumonia,S3,,\n"
        "img/missing.png,normal,S4,PA,\n")
    return root / "labels.csv"


def test_csv_kind_with_a_mapping(tmp_path):
    csv = _csv_collection(tmp_path / "mycxr")
    out = tmp_path / "m.csv"
    mapping = {"path": "File", "finding": "Diagnosis", "patient_id": "Subject", "view": "Projection", "label_covid": "Covid"}
    report = import_collection("csv", csv.parent, out, column_map=mapping, source="mycxr")
    df = read_manifest(out).set_index("image_id", drop=False)
    assert list(df.index) == ["mycxr:img_a", "mycxr:img_c", "mycxr:line5"]  # UID file name -> line number
    assert df.loc["mycxr:img_a", ["view", "patient_id", "label_covid", "label_other"]].tolist() == ["AP", "mycxr:S1", "1", "0"]
    assert df.loc["mycxr:img_c", ["label_healthy", "label_covid", "label_other"]].tolist() == ["", "1", ""]
    assert df.loc["mycxr:line5", "view"] == ""
    assert Path(df.loc["mycxr:img_a", "path"]) == csv.parent / "img" / "a.png"
    text = report.summary()
    assert "laterals excluded: 1" in text and "file names are DICOM UIDs" in text
    assert read_quarantine(quarantine_path(out))["image_id"].tolist() == ["mycxr:img_missing"]
    # An images folder given through "..": the manifest stores the plain absolute path.
    detour = tmp_path / "elsewhere" / ".." / "mycxr"
    (tmp_path / "elsewhere").mkdir()
    import_collection("csv", csv.parent, out, column_map={**mapping, "images": str(detour)}, source="mycxr")
    assert read_manifest(out).set_index("image_id").loc["mycxr:img_a", "path"] == str(csv.parent.resolve() / "img" / "a.png")


def test_csv_kind_names_a_missing_column(tmp_path):
    csv = _csv_collection(tmp_path / "mycxr")
    with pytest.raises(ManifestError, match=r"labels.csv has no column 'Label' \(for finding\); its columns are: File, Diagnosis"):
        import_collection("csv", csv, tmp_path / "m.csv", column_map={"path": "File", "finding": "Label"}, source="mycxr")
    with pytest.raises(ManifestError, match="needs --map path=COLUMN"):
        import_collection("csv", csv, tmp_path / "m.csv", column_map={"finding": "Diagnosis"}, source="mycxr")
    with pytest.raises(ManifestError, match="needs --source"):
        import_collection("csv", csv, tmp_path / "m.csv", column_map={"path": "File", "finding": "Diagnosis"})
    with pytest.raises(ManifestError, match="not a manifest column or option"):
        import_collection("csv", csv, tmp_path / "m.csv", column_map={"path": "File", "diagnosis": "Diagnosis"}, source="mycxr")
    assert not (tmp_path / "m.csv").exists()


def test_ieee8023_copy_with_laterals_blank_views_and_a_missing_file(tmp_path):
    root = tmp_path / "ieee"
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.png"):
        _image(root / "images" / name)
    (root / "metadata.csv").write_text(
        "patientid,offset,sex,age,finding,view,modality,folder,filename,license\n"
        "331a,3,M,40,Pneumonia/Viral/COVID-19,AP erect,X-ray,images,a.jpg,CC BY 4.0\n"
        "331b,,F,,COVID-19,L,X-ray,images,b.jpg,\n"
        "331b,,F,,todo,,X-ray,images,c.jpg,\n"
        "332,,F,,COVID-19,Axial,CT,images,d.png,\n"
        "333,,F,,No Finding,PA,X-ray,images,gone.jpg,\n")
    out = tmp_path / "ieee.csv"
    report = import_collection("ieee8023", tmp_path, out)
    df = read_manifest(out)
    assert df["image_id"].tolist() == ["ieee8023:a"]
    assert df.loc[0, ["patient_id", "view", "offset_days", "label_covid", "license"]].tolist() == ["ieee8023:331a", "AP", "3", "1", "CC BY 4.0"]
    assert report.skipped("ieee8023") == {"lateral views (excluded)": 1, "not an X-ray (modality CT)": 1,
                                          "view blank and no lung boxes to show the film is frontal": 1}
    assert read_quarantine(quarantine_path(out)).loc[0, ["image_id", "reason"]].tolist() == ["ieee8023:gone", "file not found"]


def test_cli_import_prints_the_summary_and_reports_errors(tmp_path, capsys):
    csv = _csv_collection(tmp_path / "mycxr")
    out = tmp_path / "cli.csv"
    code = main(["data", "import", "csv", str(csv), "--out", str(out), "--source", "mycxr",
                 "--map", "path=File", "--map", "finding=Diagnosis"])
    assert code == 0
    assert "mycxr" in capsys.readouterr().out and out.is_file()
    code = main(["data", "import", "csv", str(csv), "--out", str(out), "--source", "mycxr",
                 "--map", "path=Image", "--map", "finding=Diagnosis"])
    assert code == 2
    assert "has no column 'Image' (for path)" in capsys.readouterr().err


def test_relative_root_gives_paths_that_resolve_from_the_manifest(cxr_public, tmp_path, monkeypatch):
    """A root given relative to the shell's folder must still resolve from the manifest's folder."""
    import os

    from cmtlib.data.collections import import_collection
    from cmtlib.data.manifest import read_manifest, resolve_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    rel_root = os.path.relpath(cxr_public / "agchung_Actualmed_normals_only", tmp_path)
    import_collection("covidx", rel_root, tmp_path / "out" / "m.csv")
    df = read_manifest(tmp_path / "out" / "m.csv")
    assert len(df) == 9
    assert all(resolve_path(tmp_path / "out" / "m.csv", p).is_file() for p in df["path"])
