"""Issue 17, classes 3 to 6: no entry is chosen, dropped or explained wrongly in silence.

3. One image name at two places of a collection: identical bytes are one image (noted); one size
   with different bytes quarantines every copy; different sizes are one picture at two sizes (a
   duplicate group). Where the metadata names the exact file (csv, ieee8023, Actualmed), a
   same-named file elsewhere changes nothing.
4. Metadata that contradicts the file: a ChestX-ray14 Patient ID against the patient in the file
   name (noted; the film keeps the file name's patient), CheXpert's Frontal/Lateral against the
   view in the file name (quarantined), boxes drawn on a picture of another aspect ratio than the
   file (left unknown, noted). The csv kind and COVIDx have no such convention to contradict.
5. Every dropped entry is quarantined, noted or counted: a COCO entry that leaves the folder or
   names a file in another class folder, box and score rows of images not in the copy, a row
   without a path or an image.
6. A header line repeated in the middle of a CSV is quarantined as such, in every CSV importer
   (TBX11K has none).

Each case states the exact outcome (tests/import_outcome.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import import_fuzz_builders as B
from import_outcome import Outcome, check, repeat_header

CSV = "mine:img_a", "mine:img_b", "mine:img_c"
N1, N2, N3, N4 = "nih:00000001_000", "nih:00000002_000", "nih:00000003_000", "nih:00000001_001"
A, Bi, C, D = "ieee8023:a", "ieee8023:b", "ieee8023:c", "ieee8023:d"
F1 = "figure1:COVID-00001"
X1 = "actualmed:ANON1"
TB1, TB2, H1 = "tbx11k:tb1", "tbx11k:tb2", "tbx11k:h1"
P1 = "chexpert:patient00001_study1_view1_frontal"
OTHER = ("0", "0", "1")


def _nih(t: Path, name: str = "00000001_000.png") -> Path:
    return t / "nih" / "images" / name


def _chex_twin(t: Path) -> Path:
    """Where CheXpert's Path also resolves: below the CSV's own folder."""
    return t / "CheXpert-v1.0-small" / "CheXpert-v1.0-small" / "train" / "patient00001" / "study1" / "view1_frontal.jpg"


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _coco_image(path_of, k: int, **changes):
    return lambda t: B.edit_json(path_of(t), lambda doc: doc["images"][k].update(changes))


def _ieee_coco(t: Path) -> Path:
    return t / "ieee" / "annotations" / "annotations.json"


def _tbx_coco(t: Path) -> Path:
    return t / "tbx" / "annotations" / "json" / "TBX11K_train.json"


SAME_NAME = [
    Outcome("nih-identical-copy-in-another-folder", "nih", lambda t: _copy(_nih(t), t / "nih" / "valid" / "00000001_000.png"),
            notes={(N1, "path"): "the same file (identical bytes)"}, summary=("imported once",)),
    Outcome("nih-other-bytes-at-the-same-size", "nih", lambda t: B.png(t / "nih" / "valid" / "00000001_000.png", (64, 64)),
            absent=(N1,), quarantined={N1: "2 files carry this image's name at one size (64x64 px) with different bytes"},
            n_quarantined=2),
    Outcome("nih-another-size", "nih", lambda t: B.png(t / "nih" / "valid" / "00000001_000.png", (32, 32)), absent=(N1,),
            labels={f"{N1}_32px": OTHER, f"{N1}_64px": OTHER},
            fields={(f"{N1}_32px", "duplicate_group"): N1, (f"{N1}_64px", "duplicate_group"): N1}),
    Outcome("figure1-identical-copy-under-another-extension", "covidx",
            lambda t: _copy(t / "fig1" / "images" / "COVID-00001.jpg", t / "fig1" / "images" / "COVID-00001.png"),
            notes={(F1, "path"): "the same file (identical bytes)"}),
    Outcome("figure1-other-bytes-under-another-extension", "covidx", lambda t: B.png(t / "fig1" / "images" / "COVID-00001.png"),
            absent=(F1,), quarantined={F1: "with different bytes"}, n_quarantined=2),
    Outcome("tbx-one-name-in-two-class-folders", "tbx11k",
            lambda t: _copy(t / "tbx" / "imgs" / "tb" / "tb1.png", t / "tbx" / "imgs" / "health" / "tb1.png"), absent=(TB1,),
            quarantined={TB1: "one image name in imgs/health/ and imgs/tb/"}, n_quarantined=2),
    Outcome("tbx-identical-copy-under-another-extension", "tbx11k",
            lambda t: _copy(t / "tbx" / "imgs" / "tb" / "tb1.png", t / "tbx" / "imgs" / "tb" / "tb1.jpg"),
            notes={(TB1, "path"): "the same file (identical bytes)"}),
    Outcome("chexpert-path-found-twice-with-other-bytes", "chexpert", lambda t: B.png(_chex_twin(t)), absent=(P1,),
            quarantined={P1: "with different bytes"}, n_quarantined=2),
    Outcome("chexpert-path-found-twice-identical", "chexpert",
            lambda t: _copy(t / "CheXpert-v1.0-small" / "train" / "patient00001" / "study1" / "view1_frontal.jpg", _chex_twin(t)),
            notes={(P1, "path"): "the same file (identical bytes)"}),
    Outcome("csv-same-name-elsewhere-changes-nothing", "csv", lambda t: B.png(t / "mine" / "other" / "a.png")),
    Outcome("ieee-same-name-elsewhere-changes-nothing", "ieee8023", lambda t: B.png(t / "ieee" / "other" / "a.png")),
    Outcome("actualmed-same-name-elsewhere-changes-nothing", "covidx", lambda t: B.png(t / "actualmed" / "old" / "x1.png")),
]

CONTRADICTION = [
    Outcome("nih-patient-id-against-the-file-name", "nih",
            lambda t: B.nih_table(t, [r.replace("Cardiomegaly,0,1,", "Cardiomegaly,0,2,") for r in B.NIH_ROWS]),
            notes={(N1, "patient_id"): "Patient ID 2 contradicts the file name, which names patient 00000001; the film keeps "
                                       "the file name's patient"}, fields={(N1, "patient_id"): "nih:00000001"}),
    Outcome("nih-boxes-on-a-file-of-another-aspect", "nih", lambda t: B.png(_nih(t, "00000002_000.png"), (64, 48)),
            notes={(N2, "disease_boxes"): "another aspect ratio"}, fields={(N2, "disease_boxes"): ""}),
    Outcome("chexpert-lateral-row-of-a-frontal-file", "chexpert",
            lambda t: B.edit(t / "CheXpert-v1.0-small" / "train.csv", "Female,68,Frontal", "Female,68,Lateral"), absent=(P1,),
            quarantined={"chexpert:train.csv line 2": "Frontal/Lateral says 'Lateral' but the file name says frontal"}),
    Outcome("ieee-coco-size-of-another-aspect", "ieee8023", _coco_image(_ieee_coco, 0, width=64, height=32),
            notes={(A, "lung_boxes"): "drawn on a 64x32 px image and the file is 32x32 px"}, fields={(A, "lung_boxes"): ""}),
    Outcome("tbx-coco-size-of-another-aspect", "tbx11k", _coco_image(_tbx_coco, 0, width=64, height=32),
            notes={(TB1, "disease_boxes"): "another aspect ratio"}, fields={(TB1, "disease_boxes"): "", (TB1, "finding"): "Tuberculosis"}),
]

DROPPED = [
    Outcome("ieee-coco-entry-leaves-the-folder", "ieee8023", _coco_image(_ieee_coco, 0, file_name="../a.png"),
            notes={("ieee8023:*", "lung_boxes"): "whose file_name leaves the collection's folder"}, fields={(A, "lung_boxes"): ""}),
    Outcome("ieee-severity-row-of-an-absent-image", "ieee8023",
            lambda t: B.write(t / "sev" / "covid-severity-scores.csv", "## scores\nfilename,geographic_mean,opacity_mean\n"
                              "a.png,3.0,2.0\nzzz.png,1.0,1.0\n"), summary=("1 rows name images not imported (not used)",)),
    Outcome("tbx-coco-entry-leaves-the-folder", "tbx11k", _coco_image(_tbx_coco, 1, file_name="../../tb2.png"),
            notes={("tbx11k:*", "disease_boxes"): "leaves the collection's folder"}, fields={(TB2, "disease_boxes"): ""}),
    Outcome("tbx-coco-entry-names-another-class-folder", "tbx11k", _coco_image(_tbx_coco, 1, file_name="health/tb2.png"),
            notes={(TB2, "disease_boxes"): "the annotation names health/tb2.png, but the file is imgs/tb/tb2.png"},
            fields={(TB2, "disease_boxes"): ""}),
    Outcome("tbx-coco-entry-of-an-absent-image", "tbx11k", _coco_image(_tbx_coco, 1, file_name="tb/tb9.png"),
            fields={(TB2, "disease_boxes"): ""}, summary=("1 annotation entries name images not in this copy",)),
    Outcome("nih-box-of-an-absent-image", "nih",
            lambda t: B.write(t / "nih" / "BBox_List_2017.csv", B.NIH_BOXES + "00000009_000.png,Hernia,1,1,5,5\n"),
            summary=("1 BBox_List images are not in this copy",)),
    Outcome("csv-row-without-a-path", "csv", lambda t: B.edit(t / "mine" / "labels.csv", "img/b.png", ""), absent=(CSV[1],),
            quarantined={"mine:labels.csv line 3": "the path is blank"}),
    Outcome("figure1-row-without-an-image", "covidx", lambda t: (t / "fig1" / "images" / "COVID-00001.jpg").unlink(),
            absent=(F1,), quarantined={F1: "file not found"}),
    Outcome("chexpert-row-without-a-path", "chexpert",
            lambda t: B.edit(t / "CheXpert-v1.0-small" / "train.csv", "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", ""),
            absent=(P1,), quarantined={"chexpert:train.csv line 2": "has no patientNNNNN folder"}),
]

# A view that is none of PA, AP, AP Supine or a lateral spelling is not guessed: quarantined with its text.
UNKNOWN_VIEW = [
    Outcome("nih-unknown-view", "nih", lambda t: B.nih_table(t, [r.replace("F,AP", "F,XX") for r in B.NIH_ROWS]), absent=(N2,),
            quarantined={N2: "View Position 'XX' is not a view the import knows"}),
    Outcome("csv-unknown-view", "csv", lambda t: B.edit(t / "mine" / "labels.csv", "S2,PA", "S2,Axial"), absent=(CSV[1],),
            quarantined={CSV[1]: "view 'Axial' is not a view the import knows"}),
    Outcome("figure1-unknown-view", "covidx", lambda t: B.edit(t / "fig1" / "metadata.csv", "AP erect", "Coronal", "latin-1"),
            absent=(F1,), quarantined={F1: "view 'Coronal' is not a view the import knows"}),
    Outcome("chexpert-unknown-ap-pa", "chexpert", lambda t: B.edit(t / "CheXpert-v1.0-small" / "train.csv", "68,Frontal,AP", "68,Frontal,XY"),
            absent=(P1,), quarantined={"chexpert:train.csv line 2": "AP/PA 'XY' is not a view the import knows"}),
    Outcome("ieee-unknown-view-without-lung-boxes", "ieee8023",
            lambda t: B.edit(t / "ieee" / "metadata.csv", "Pneumonia,AP Supine", "Pneumonia,Axial") or B.edit_json(
                _ieee_coco(t), lambda doc: doc.update(annotations=[a for a in doc["annotations"] if a["image_id"] != 4])),
            absent=(D,), quarantined={"ieee8023:metadata.csv line 5": "view 'Axial' is not a view the import knows"}),
    Outcome("ieee-unknown-view-with-lung-boxes-kept", "ieee8023", lambda t: B.edit(t / "ieee" / "metadata.csv", "Pneumonia,AP Supine",
                                                                                 "Pneumonia,Axial"), fields={(D, "view"): ""}),
]

REPEATED_HEADER = [
    Outcome("csv-repeated-header", "csv", lambda t: repeat_header(t / "mine" / "labels.csv"),
            quarantined={"mine:labels.csv line 3": "is a repeated header line"}),
    Outcome("csv-repeated-header-other-case-and-a-bom", "csv", lambda t: B.edit(t / "mine" / "labels.csv", "img/b.png",
                                                                               "\ufeffFILE,Diagnosis,SUBJECT,Projection,Boxes,Covid,Split\nimg/b.png"),
            quarantined={"mine:labels.csv line 3": "is a repeated header line"}),
    Outcome("figure1-repeated-header", "covidx", lambda t: repeat_header(t / "fig1" / "metadata.csv", encoding="latin-1"),
            quarantined={"figure1:metadata.csv line 3": "is a repeated header line"}),
    Outcome("actualmed-repeated-header", "covidx", lambda t: repeat_header(t / "actualmed" / "metadata.csv"),
            quarantined={"actualmed:metadata.csv line 3": "is a repeated header line"}),
    Outcome("nih-repeated-header", "nih", lambda t: B.nih_table(t, B.NIH_ROWS[:1] + [B.NIH_HEADER.strip()] + B.NIH_ROWS[1:]),
            quarantined={"nih:Data_Entry_2017.csv.gz line 3": "is a repeated header line"}),
    Outcome("ieee-repeated-header", "ieee8023", lambda t: repeat_header(t / "ieee" / "metadata.csv", after=2),
            quarantined={"ieee8023:metadata.csv line 4": "is a repeated header line"}),
    Outcome("chexpert-repeated-header", "chexpert", lambda t: repeat_header(t / "CheXpert-v1.0-small" / "train.csv"),
            quarantined={"chexpert:train.csv line 3": "is a repeated header line"}),
]


@pytest.mark.parametrize("case", SAME_NAME, ids=[c.id for c in SAME_NAME])
def test_one_image_name_at_two_places_is_never_a_silent_choice(case, tmp_path, tmp_path_factory):
    check(case, tmp_path, tmp_path_factory)


@pytest.mark.parametrize("case", CONTRADICTION, ids=[c.id for c in CONTRADICTION])
def test_metadata_that_contradicts_the_file_is_not_taken_silently(case, tmp_path, tmp_path_factory):
    check(case, tmp_path, tmp_path_factory)


@pytest.mark.parametrize("case", DROPPED, ids=[c.id for c in DROPPED])
def test_every_dropped_entry_is_quarantined_noted_or_counted(case, tmp_path, tmp_path_factory):
    check(case, tmp_path, tmp_path_factory)


@pytest.mark.parametrize("case", UNKNOWN_VIEW, ids=[c.id for c in UNKNOWN_VIEW])
def test_a_view_the_import_does_not_know_is_not_guessed(case, tmp_path, tmp_path_factory):
    check(case, tmp_path, tmp_path_factory)


@pytest.mark.parametrize("case", REPEATED_HEADER, ids=[c.id for c in REPEATED_HEADER])
def test_a_repeated_header_line_is_named_as_one(case, tmp_path, tmp_path_factory):
    run = check(case, tmp_path, tmp_path_factory)
    assert "view 'view'" not in run.summary and "Patient ID" not in run.quarantine["reason"].str.cat()


def test_the_summary_count_and_the_quarantine_agree(tmp_path, tmp_path_factory):
    """Class 3: the two quarantined copies are the summary's quarantine count, and no copy vanishes."""
    run = check(SAME_NAME[1], tmp_path, tmp_path_factory)
    assert f"quarantined {len(run.quarantine)} ->" in run.summary and "quarantined: 2 (see m.quarantine.csv)" in run.summary
    assert len(run.df) + len(run.quarantine) == 5  # 4 listed films, one of them found twice
