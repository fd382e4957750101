"""Issue 17, classes 1 and 2: a label is never guessed from text.

1. A finding text the vocabulary does not recognise (mis-decoded bytes, a misspelling, a negation,
   an unknown disease, a contradiction) gives no label, with a note naming the text and a count
   in the summary; invisible characters are a space, never nothing; the user adds texts with
   --finding; a --const or --map label text is held to the same rule. TBX11K's label is its
   folder: a folder that is none of its classes is not imported, with a note.
2. One stray byte costs only its line: in a column the import does not use, a note (the row is
   kept); in a column it reads but that does not decide the row (age, sex, licence), that field
   is left unknown; in a path, finding, label, patient or view column, the row is quarantined. The
   other lines keep their text: a UTF-8 file is never re-read in a fallback encoding for one byte.

Each case states the exact outcome (tests/import_outcome.py). tbx11k has no CSV (class 2 does not
apply; its JSON is read as in test_import_fuzz.py).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

import import_fuzz_builders as B
from import_outcome import CSV_OPTIONS, Outcome, add_column, check

CSV = "mine:img_a", "mine:img_b", "mine:img_c"
N1, N2, N3, N4 = "nih:00000001_000", "nih:00000002_000", "nih:00000003_000", "nih:00000001_001"
A, Bi, C, D = "ieee8023:a", "ieee8023:b", "ieee8023:c", "ieee8023:d"
F1, F2A, F2B = "figure1:COVID-00001", "figure1:COVID-00002a", "figure1:COVID-00002b"
X1, X2 = "actualmed:ANON1", "actualmed:ANON2"
P1, P2, P3 = (f"chexpert:patient0000{i}_study1_view1_frontal" for i in (1, 2, 3))
UNKNOWN, PRE2020, OTHER, HEALTHY = ("", "", ""), ("", "0", ""), ("0", "0", "1"), ("1", "0", "0")
NOT_KNOWN = "is not in the finding vocabulary"


def _csv(t: Path) -> Path:
    return t / "mine" / "labels.csv"


def _ieee(t: Path) -> Path:
    return t / "ieee" / "metadata.csv"


def _chex(t: Path) -> Path:
    return t / "CheXpert-v1.0-small" / "train.csv"


def _no_map(*keys: str) -> dict:
    return {k: v for k, v in B.CSV_MAP.items() if k not in keys}


def _figure1_utf8(t: Path, first: bytes, second_notes: bytes = "38\u00b0C".encode()) -> None:
    """Figure1's metadata as a UTF-8 file with a notes column: COVID-00002a's finding holds a
    non-breaking space and its notes a degree sign (valid UTF-8); `first` is COVID-00001's line."""
    (t / "fig1" / "metadata.csv").write_bytes(
        b"patientid,offset,sex,age,finding,view,notes\n" + first + b"\n"
        + b"COVID-00002a,,F,44,No\xc2\xa0finding,PA," + second_notes + b"\nCOVID-00002b,,F,44,No finding,PA,\n")


def _nih_raw(t: Path, old: bytes, new: bytes) -> None:
    """The ChestX-ray14 table (gzip) with one byte-level edit."""
    text = (B.NIH_HEADER + "\n".join(B.NIH_ROWS + B.NIH_ABSENT) + "\n").encode()
    assert old in text
    (t / "nih" / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(text.replace(old, new, 1)))


UNRECOGNISED = [
    # ---- csv: the finding column, --const and --map label text ----
    Outcome("csv-zero-width-space-inside-no-finding", "csv", lambda t: B.edit(_csv(t), "normal", "No\u200bfinding")),
    Outcome("csv-mis-decoded-no-finding", "csv", lambda t: B.edit(_csv(t), "normal", "No\u00c2\u00a0finding"),
            labels={CSV[1]: UNKNOWN}, notes={(CSV[1], "finding"): NOT_KNOWN}, fields={(CSV[1], "disease_boxes"): ""},
            summary=("'No\u00c2\\xa0finding' 1",)),  # the summary shows the invisible byte
    Outcome("csv-unknown-disease", "csv", lambda t: B.edit(_csv(t), "Pneumonia", "Bronchiolitis"),
            labels={CSV[2]: UNKNOWN}, notes={(CSV[2], "finding"): "'bronchiolitis' names nothing the vocabulary knows"},
            summary=("'Bronchiolitis' 1",)),
    Outcome("csv-unknown-disease-added-with-finding", "csv", lambda t: B.edit(_csv(t), "Pneumonia", "Viral bronchiolitis"),
            options={**CSV_OPTIONS, "findings": ["Bronchiolitis=other"]}, summary=("unrecognised findings (no label from them; "
                                                                                 "--finding TEXT=CLASS adds one): none",)),
    Outcome("csv-negated-finding", "csv", lambda t: B.edit(_csv(t), "Pneumonia", "no pneumonia"),
            labels={CSV[2]: UNKNOWN}, notes={(CSV[2], "finding"): "negated"}),
    Outcome("csv-finding-with-a-healthy-and-a-disease-part", "csv", lambda t: B.edit(_csv(t), "normal", "normal|effusion"),
            labels={CSV[1]: UNKNOWN}, notes={(CSV[1], "finding"): "names both a normal film and a disease"}),
    Outcome("csv-mapped-label-text", "csv", lambda t: B.edit(_csv(t), '20]]",,', '20]]",ja,'),
            labels={CSV[0]: ("0", "", "0")}, notes={(CSV[0], "label_covid"): "'ja' is not 1, 0 or blank"}),
    Outcome("csv-const-finding-unrecognised", "csv", lambda t: None, error="--const finding=Bronchiolitis: not a finding",
            options={"column_map": _no_map("finding"), "source": "mine", "constants": {"finding": "Bronchiolitis"}}),
    Outcome("csv-const-label-text", "csv", lambda t: None, error="--const label_other=ja: label value 'ja'",
            options={"column_map": _no_map(), "source": "mine", "constants": {"label_other": "ja"}}),
    Outcome("csv-const-finding-added-with-finding", "csv", lambda t: None, labels={c: OTHER for c in CSV},
            fields={(CSV[0], "finding"): "Bronchiolitis"},
            options={"column_map": _no_map("finding", "label_covid"), "source": "mine",
                     "constants": {"finding": "Bronchiolitis"}, "findings": ["bronchiolitis=other"]}),
    # ---- Figure1 / Actualmed ----
    Outcome("figure1-mis-decoded-no-finding", "covidx",
            lambda t: _figure1_utf8(t, b"COVID-00001,3,M,50+,COVID-19,AP erect,", "38\u00b0C".encode()) or B.edit(
                t / "fig1" / "metadata.csv", "COVID-00002b,,F,44,No finding", "COVID-00002b,,F,44,No\u00c2\u00a0finding"),
            labels={F2B: UNKNOWN}, notes={(F2B, "finding"): NOT_KNOWN}),
    Outcome("actualmed-words-joined", "covidx", lambda t: B.edit(t / "actualmed" / "metadata.csv", "ANON1,No finding", "ANON1,Nofinding"),
            labels={X1: UNKNOWN}, notes={(X1, "finding"): "'nofinding' names nothing"}, summary=("'Nofinding' 1",)),
    # ---- ChestX-ray14 (pre-2020: label_covid stays 0) ----
    Outcome("nih-zero-width-space-inside-no-finding", "nih",
            lambda t: B.nih_table(t, [r.replace("No Finding,0,3", "No\u200bFinding,0,3") for r in B.NIH_ROWS])),
    Outcome("nih-misspelt-label", "nih", lambda t: B.nih_table(t, [r.replace("Cardiomegaly", "Cardiomegally") for r in B.NIH_ROWS]),
            labels={N1: PRE2020}, notes={(N1, "finding"): "label_covid 0: a pre-2020 collection"}, summary=("'Cardiomegally' 1",)),
    Outcome("nih-misspelt-label-added-with-finding", "nih",
            lambda t: B.nih_table(t, [r.replace("Cardiomegaly", "Cardiomegally") for r in B.NIH_ROWS]),
            options={"findings": ["Cardiomegally=other"]}),
    Outcome("nih-no-finding-with-a-disease", "nih",
            lambda t: B.nih_table(t, [r.replace("No Finding,1,1", "No Finding|Mass,1,1") for r in B.NIH_ROWS]),
            labels={N4: PRE2020}, notes={(N4, "finding"): "names both a normal film and a disease"}),
    # ---- ieee8023 ----
    Outcome("ieee-mis-decoded-no-finding", "ieee8023", lambda t: B.edit(_ieee(t), "No Finding", "No\u00c2\u00a0Finding"),
            labels={C: UNKNOWN}, notes={(C, "finding"): NOT_KNOWN}),
    Outcome("ieee-negated-finding", "ieee8023", lambda t: B.edit(_ieee(t), "Pneumonia", "No pneumonia"),
            labels={D: UNKNOWN}, notes={(D, "finding"): "negated (no)"}),
    Outcome("ieee-not-covid", "ieee8023", lambda t: B.edit(_ieee(t), "Pneumonia", "non-COVID"), labels={D: PRE2020}),
    Outcome("ieee-upstream-hierarchy", "ieee8023", lambda t: B.edit(_ieee(t), "Pneumonia", "Pneumonia/Bacterial/Klebsiella")),
    # ---- CheXpert: an observation column the vocabulary does not know gives no label ----
    Outcome("chexpert-unknown-observation", "chexpert", lambda t: add_column(_chex(t), "Bronchiolitis", ["", "", "1.0"]),
            notes={("chexpert:*", "finding"): "observation column 'Bronchiolitis' is not in the finding vocabulary"},
            summary=("'Bronchiolitis' 1",)),
    Outcome("chexpert-unknown-observation-added-with-finding", "chexpert",
            lambda t: add_column(_chex(t), "Bronchiolitis", ["", "", "1.0"]), labels={P3: OTHER},
            fields={(P3, "finding"): "Support Devices|Bronchiolitis|Edema (uncertain)"},
            options={"findings": ["Bronchiolitis=other"]}),
    Outcome("chexpert-no-finding-and-a-disease", "chexpert",
            lambda t: B.edit(_chex(t), "Male,40,Frontal,PA,1.0,,", "Male,40,Frontal,PA,1.0,1.0,"), labels={P2: PRE2020},
            notes={(P2, "finding"): "names both a normal film and a disease"}),
    # ---- TBX11K: the folder is the class ----
    Outcome("tbx-folder-that-is-no-class", "tbx11k", lambda t: B.png(t / "tbx" / "imgs" / "healthy" / "x1.png"),
            notes={("tbx11k:*", "finding"): "not one of health, tb, sick"}, summary=("left out: 1 images in imgs/healthy/",)),
]


ENCODING = [
    Outcome("csv-stray-byte-in-an-unused-column", "csv",
            lambda t: add_column(_csv(t), "Comment", ["ok", "STRAY", "ok"]) or B.edit_bytes(_csv(t), b"STRAY", b"38\xb0C"),
            notes={(CSV[1], "Comment"): "a column the import does not use; the row is kept"}),
    Outcome("csv-stray-byte-in-a-read-column", "csv", lambda t: B.edit_bytes(_csv(t), b"PA,,,\n", b"PA,,,tr\xe4in\n"),
            notes={(CSV[1], "Split"): "holds bytes that are not text in the file's encoding (utf-8); left unknown"}),
    Outcome("csv-stray-byte-in-the-finding", "csv", lambda t: B.edit_bytes(_csv(t), b"Pneumonia", b"Pneum\xf6nia"),
            absent=(CSV[2],), quarantined={"mine:labels.csv line 4": "in column(s) Diagnosis: the row cannot be read"}),
    Outcome("csv-stray-byte-in-the-patient", "csv", lambda t: B.edit_bytes(_csv(t), b"S2", b"S\xff2"),
            absent=(CSV[1],), quarantined={"mine:labels.csv line 3": "in column(s) Subject"}),
    Outcome("figure1-utf8-file-with-a-stray-byte-in-an-unused-column", "covidx",
            lambda t: _figure1_utf8(t, b"COVID-00001,3,M,50+,COVID-19,AP erect,fever 38\xb0C"),
            notes={(F1, "notes"): "(utf-8); a column the import does not use; the row is kept"}),
    Outcome("figure1-utf8-file-with-a-stray-byte-in-the-finding", "covidx",
            lambda t: _figure1_utf8(t, b"COVID-00001,3,M,50+,COVID\xad19,AP erect,"), absent=(F1,),
            quarantined={"figure1:metadata.csv line 2": "in column(s) finding: the row cannot be read"}),
    Outcome("figure1-latin1-file", "covidx",
            lambda t: _figure1_utf8(t, b"COVID-00001,3,M,50+,COVID-19,AP erect,38\xb0C", b"38\xb0C") or B.edit_bytes(
                t / "fig1" / "metadata.csv", b"No\xc2\xa0finding", b"No\xa0finding")),
    # Actualmed's file holds no other byte beyond ASCII: with no sign of UTF-8 it is latin-1, the
    # name reads 'x1é.png', and only that row is lost (no such file).
    Outcome("actualmed-stray-byte-in-the-file-name", "covidx",
            lambda t: B.edit_bytes(t / "actualmed" / "metadata.csv", b"x1.png", b"x1\xe9.png"), absent=(X1,),
            quarantined={X1: "file not found"}),
    Outcome("actualmed-utf8-file-with-a-stray-byte-in-the-file-name", "covidx",
            lambda t: B.edit(t / "actualmed" / "metadata.csv", "ANON2,COVID-19", "ANON2,COVID\u201119") or B.edit_bytes(
                t / "actualmed" / "metadata.csv", b"x1.png", b"x1\xe9.png"), absent=(X1,),
            quarantined={"actualmed:metadata.csv line 2": "in column(s) imagename"}),
    Outcome("nih-stray-byte-in-the-sex", "nih", lambda t: _nih_raw(t, b"2,40,F,AP", b"2,40,F\xe9,AP"),
            notes={(N2, "Patient Gender"): "left unknown"}, fields={(N2, "sex"): ""}),
    Outcome("nih-stray-byte-in-the-labels", "nih", lambda t: _nih_raw(t, b"Cardiomegaly", b"Cardiomeg\xe1ly"), absent=(N1,),
            quarantined={"nih:Data_Entry_2017.csv.gz line 2": "in column(s) Finding Labels"}),
    Outcome("ieee-stray-byte-in-an-unused-column", "ieee8023",
            lambda t: add_column(_ieee(t), "clinical_notes", ["STRAY", "", "ok", ""]) or B.edit_bytes(_ieee(t), b"STRAY", b"T 38\xb0"),
            notes={(A, "clinical_notes"): "a column the import does not use"}),
    Outcome("ieee-stray-byte-in-the-licence", "ieee8023", lambda t: B.edit_bytes(_ieee(t), b"CC BY", b"CC BY\xa9"),
            notes={(A, "license"): "left unknown"}, fields={(A, "license"): ""}),
    Outcome("chexpert-stray-byte-in-the-sex", "chexpert", lambda t: B.edit_bytes(_chex(t), b"Female", b"Fem\xe4le"),
            notes={(P1, "Sex"): "left unknown"}, fields={(P1, "sex"): ""}),
    Outcome("chexpert-stray-byte-in-an-observation", "chexpert", lambda t: B.edit_bytes(_chex(t), b",1.0,,\n", b",1.0\xff,,\n"),
            absent=(P1,), quarantined={"chexpert:train.csv line 2": "in column(s) Cardiomegaly"}),
]


@pytest.mark.parametrize("case", UNRECOGNISED, ids=[c.id for c in UNRECOGNISED])
def test_a_finding_the_vocabulary_does_not_recognise_gives_no_label(case, tmp_path, tmp_path_factory):
    check(case, tmp_path, tmp_path_factory)


@pytest.mark.parametrize("case", ENCODING, ids=[c.id for c in ENCODING])
def test_a_stray_byte_costs_only_its_line(case, tmp_path, tmp_path_factory):
    check(case, tmp_path, tmp_path_factory)


def test_every_import_summary_lists_unrecognised_findings_with_counts(tmp_path):
    from import_outcome import import_built

    run = import_built("nih", tmp_path, lambda t: B.nih_table(t, [r.replace("Cardiomegaly", "Cardiomegally").replace(
        "Hernia", "Herniaa") for r in B.NIH_ROWS + ["00000003_001.png,Hernia,1,3,31,F,PA"]]) or B.png(
        t / "nih" / "images" / "00000003_001.png", (64, 64)), {})
    assert "unrecognised findings (no label from them; --finding TEXT=CLASS adds one): 'Cardiomegally' 1, 'Herniaa' 1" in run.summary


def test_cmt_data_import_takes_finding_entries(tmp_path, capsys):
    from cmtlib.cli import main
    from cmtlib.data.manifest import read_manifest

    B.nih(tmp_path)
    B.nih_table(tmp_path, [r.replace("Cardiomegaly", "Cardiomegally") for r in B.NIH_ROWS])
    out = tmp_path / "m.csv"
    assert main(["data", "import", "nih", str(tmp_path / "nih"), "--out", str(out), "--finding", "Cardiomegally=other"]) == 0
    assert read_manifest(out).set_index("image_id").loc[N1, "label_other"] == "1"
    assert main(["data", "import", "nih", str(tmp_path / "nih"), "--out", str(out), "--finding", "Cardiomegally"]) == 2
    assert "--finding 'Cardiomegally': write TEXT=CLASS" in capsys.readouterr().err
