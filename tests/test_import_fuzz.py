"""Fuzzing the importers: each case writes a tiny collection (import_fuzz_builders.py), applies ONE
corruption, imports, and asserts the outcome class:

- error:       a CmtError naming what to fix (the CLI prints it in one line, exit 2);
- quarantined: the broken row (or line) is in `<stem>.quarantine.csv` with a reason;
- unknown:     the field is left empty, with a note (image_id, column, value, reason);
- imported:    read correctly (e.g. a non-breaking space in "No Finding" is still healthy).

And for every case that imports, the invariants of the issue: no row takes another row's label,
box, mask or patient (every value equals the clean import's, or is unknown with a note); a row of
the clean import that is missing is quarantined or declared; the manifest passes `cmt data check`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

import import_fuzz_builders as B
from cmtlib.cli import main
from cmtlib.data.check import value_problems
from cmtlib.data.collections import import_collection
from cmtlib.data.manifest import check_manifest, import_findings, read_manifest
from cmtlib.errors import CmtError

# What a corruption may never move between films: only equal to the clean import, or unknown.
GUARDED = ("label_healthy", "label_covid", "label_other", "lung_boxes", "disease_boxes", "patient_id", "lung_mask",
           "disease_mask", "lung_polygon_mask", "severity_geographic")
LABEL_NOTES = {"label_healthy", "label_covid", "label_other", "finding", "labels"}
CSV_OPTIONS = {"column_map": B.CSV_MAP, "source": "mine"}


@dataclass
class Run:
    df: pd.DataFrame          # indexed by image_id
    q: pd.DataFrame
    notes: pd.DataFrame
    not_imported: pd.DataFrame
    summary: str

    def labels(self, iid: str) -> tuple[str, str, str]:
        return tuple(self.df.loc[iid, ["label_healthy", "label_covid", "label_other"]])

    def quarantined(self, text: str, iid: str | None = None) -> bool:
        hits = self.q[self.q["reason"].str.contains(text, regex=False)]
        return not hits.empty and (iid is None or iid in set(hits["image_id"]))

    def unknown(self, iid: str, column: str, text: str = "") -> bool:
        source = iid.split(":")[0]
        notes = self.notes[self.notes["image_id"].isin([iid, f"{source}:*"]) & (self.notes["column"] == column)]
        value = self.df.loc[iid, column] if column in self.df.columns else ""
        return value == "" and notes["reason"].str.contains(text, regex=False).any()


@dataclass
class Case:
    id: str
    kind: str
    corrupt: Callable[[Path], None]
    outcome: str                                   # error | quarantined | unknown | imported
    check: Callable[[Run], bool] = lambda r: True  # the case's own claim
    lost: tuple[str, ...] = ()                     # clean-import ids allowed to be absent (renamed, counted)
    changed: tuple[str, ...] = ()                  # ids whose values the corruption itself changes
    options: dict = field(default_factory=dict)


def _root(kind: str, tmp: Path) -> Path:
    return B.BUILDERS[kind](tmp)


def _import(kind: str, root: Path, out: Path, options: dict) -> Run:
    import_collection(kind, root, out, **options)
    q, notes, ni = import_findings(out)
    df = read_manifest(out)
    assert check_manifest(df) == [] and value_problems(df, out) == []
    return Run(df.set_index("image_id", drop=False), q, notes, ni, "")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Callable[[str], Run]:
    """The clean import of each builder, once per module."""
    cache: dict[str, Run] = {}

    def get(kind: str) -> Run:
        if kind not in cache:
            tmp = tmp_path_factory.mktemp(f"clean-{kind}")
            cache[kind] = _import(kind, _root(kind, tmp), tmp / "out" / "m.csv", CSV_OPTIONS if kind == "csv" else {})
            assert cache[kind].q.empty
        return cache[kind]
    return get


def _coco(tmp: Path) -> Path:
    return tmp / "ieee" / "annotations" / "annotations.json"


def _tbx(tmp: Path) -> Path:
    return tmp / "tbx" / "annotations" / "json" / "TBX11K_train.json"


def _meta(tmp: Path) -> Path:
    return tmp / "ieee" / "metadata.csv"


def _set(path_of: Callable[[Path], Path], fn: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda tmp: B.edit_json(path_of(tmp), fn)


def _ann(k: int, **changes) -> Callable[[dict], None]:
    def fn(doc: dict) -> None:
        for key, value in changes.items():
            if value is _DELETE:
                del doc["annotations"][k][key]
            else:
                doc["annotations"][k][key] = value
    return fn


def _img(k: int, **changes) -> Callable[[dict], None]:
    return lambda doc: doc["images"][k].update(changes)


_DELETE = object()
A, Bi, C, D = "ieee8023:a", "ieee8023:b", "ieee8023:c", "ieee8023:d"
TB1, TB2, H1 = "tbx11k:tb1", "tbx11k:tb2", "tbx11k:h1"
N1, N2, N3 = "nih:00000001_000", "nih:00000002_000", "nih:00000003_000"

CASES = [
    # ---- ieee8023: the COCO lung boxes ----
    Case("coco-annotation-without-category_id", "ieee8023", _set(_coco, _ann(0, category_id=_DELETE)), "unknown",
         lambda r: r.unknown(A, "lung_boxes", "category_id") and r.df.loc[Bi, "lung_boxes"] != ""),
    *[Case(f"coco-bbox-{name}", "ieee8023", _set(_coco, _ann(2, bbox=value)), "unknown", lambda r: r.unknown(Bi, "lung_boxes", "bbox"))
      for name, value in (("null", None), ("empty-list", []), ("empty-string", ""), ("text", ["a", "b", "c", "d"]),
                          ("three-numbers", [1, 2, 3]), ("negative-width", [2, 2, -12, 26]), ("zero-height", [2, 2, 12, 0]))],
    Case("coco-bbox-nan", "ieee8023", lambda t: B.edit(_coco(t), "[2, 2, 12, 26]", "[NaN, 2, 12, 26]"), "unknown",
         lambda r: r.unknown(A, "lung_boxes", "finite")),
    Case("coco-bbox-outside-the-image", "ieee8023", _set(_coco, _ann(0, bbox=[2, 2, 500, 26])), "unknown",
         lambda r: r.unknown(A, "lung_boxes", "outside")),
    Case("coco-two-images-share-an-id", "ieee8023", _set(_coco, _img(1, id=1)), "unknown",
         lambda r: r.unknown(A, "lung_boxes", "shared") and r.unknown(Bi, "lung_boxes", "shared") and r.df.loc[C, "lung_boxes"] != ""),
    Case("coco-two-right-lung-boxes", "ieee8023", _set(_coco, _ann(3, category_id=1)), "unknown",
         lambda r: r.unknown(Bi, "lung_boxes", "2 Right Lung boxes")),
    Case("coco-category-id-text", "ieee8023", _set(_coco, _ann(1, category_id="left")), "unknown",
         lambda r: r.unknown(A, "lung_boxes", "category left")),
    Case("coco-image-width-0", "ieee8023", _set(_coco, _img(3, width=0)), "unknown", lambda r: r.unknown(D, "lung_boxes", "width")),
    Case("coco-annotation-names-no-image", "ieee8023", _set(_coco, _ann(5, image_id=99)), "unknown",
         lambda r: r.unknown(C, "lung_boxes", "0 Left Lung") and r.unknown(C, "lung_boxes", "which no image entry has")),
    Case("coco-truncated", "ieee8023", lambda t: B.truncate(_coco(t), 0.6), "unknown",
         lambda r: all(r.unknown(i, "lung_boxes", "not valid JSON") for i in (A, Bi, C, D))),
    Case("coco-non-utf8-byte-in-a-file-name", "ieee8023", lambda t: B.edit_bytes(_coco(t), b'"b.png"', b'"b\xff.png"'), "unknown",
         lambda r: r.unknown(Bi, "lung_boxes", "no usable file_name") and r.df.loc[A, "lung_boxes"] != ""),
    Case("coco-not-an-object", "ieee8023", lambda t: B.write(_coco(t), "[]"), "unknown", lambda r: r.unknown(A, "lung_boxes", "not a COCO")),
    # ---- ieee8023: metadata.csv ----
    Case("meta-truncated-last-line", "ieee8023", lambda t: B.truncate(_meta(t), 0.93), "quarantined",
         lambda r: r.quarantined("metadata.csv line 5 has") and D not in r.df.index, lost=(D,)),
    Case("meta-non-utf8-byte", "ieee8023", lambda t: B.edit_bytes(_meta(t), b"Pneumonia", b"Pneu\xe9monia"), "quarantined",
         lambda r: r.quarantined("not text in the file's encoding") and r.labels(C) == ("1", "0", "0"), lost=(D,)),
    Case("meta-unclosed-quote", "ieee8023", lambda t: B.edit(_meta(t), "COVID-19,AP,", 'COVID-19,"AP,'), "quarantined",
         lambda r: r.quarantined("never closed") and r.labels(D) == ("0", "0", "1"), lost=(Bi,)),
    Case("meta-extra-field", "ieee8023", lambda t: B.edit(_meta(t), "c.png,", "c.png,x,y"), "quarantined",
         lambda r: r.quarantined("has 11 fields, the header has 10"), lost=(C,)),
    Case("meta-nul-byte", "ieee8023", lambda t: B.edit(_meta(t), "p2,", "p\0" + "2,"), "quarantined",
         lambda r: r.quarantined("NUL"), lost=(C,)),
    Case("meta-blank-filename", "ieee8023", lambda t: B.edit(_meta(t), "d.png", ""), "quarantined",
         lambda r: r.quarantined("filename is blank"), lost=(D,)),
    Case("meta-path-leaves-the-folder", "ieee8023",
         lambda t: (B.png(t / "outside.png"), B.edit(_meta(t), "images,d.png", "images,../../outside.png")), "quarantined",
         lambda r: r.quarantined("leaves the collection's folder", "ieee8023:outside"), lost=(D,)),
    Case("meta-absolute-path", "ieee8023",
         lambda t: (B.png(t / "outside.png"), B.edit(_meta(t), "images,d.png", f"images,{t / 'outside.png'}")), "quarantined",
         lambda r: r.quarantined("leaves the collection's folder"), lost=(D,)),
    Case("meta-one-file-two-labels", "ieee8023", lambda t: B.edit(_meta(t), "d.png", "a.png"), "quarantined",
         lambda r: r.quarantined("listed 2 times with different label") and not r.df.index.str.startswith("ieee8023:a").any(),
         lost=(A, D)),
    Case("meta-one-file-listed-twice-alike", "ieee8023", lambda t: B.edit(_meta(t), "b.png", "a.png"), "unknown",
         lambda r: len(r.df) == 3 and r.unknown("ieee8023:a.png", "offset_days", "listed again")
         and r.notes["reason"].str.contains("listed once").any(), lost=(A, Bi)),
    Case("meta-nbsp-in-no-finding", "ieee8023", lambda t: B.edit(_meta(t), "No Finding", "No\u00a0Finding"), "imported",
         lambda r: r.labels(C) == ("1", "0", "0") and r.df.loc[C, "disease_boxes"] == "[]"),
    Case("meta-full-width-covid", "ieee8023", lambda t: B.edit(_meta(t), "Pneumonia", "\uff23\uff2f\uff36\uff29\uff24-19"), "imported",
         lambda r: r.labels(D) == ("0", "1", "0"), changed=(D,)),
    Case("meta-numeric-finding", "ieee8023", lambda t: B.edit(_meta(t), "Pneumonia", "123"), "unknown",
         lambda r: r.labels(D) == ("", "", "") and ((r.notes["image_id"] == D) & (r.notes["column"] == "finding")).any()),
    Case("meta-age-negative", "ieee8023", lambda t: B.edit(_meta(t), "p2,,F,60", "p2,,F,-3"), "unknown",
         lambda r: r.unknown(C, "age", "outside 0 to 120")),
    Case("meta-age-250", "ieee8023", lambda t: B.edit(_meta(t), "p2,,F,60", "p2,,F,250"), "unknown", lambda r: r.unknown(C, "age", "250")),
    Case("meta-offset-1e9", "ieee8023", lambda t: B.edit(_meta(t), "p1,5,", "p1,1e9,"), "unknown",
         lambda r: r.unknown(Bi, "offset_days", "outside -365 to 3650")),
    Case("meta-offset-inf", "ieee8023", lambda t: B.edit(_meta(t), "p1,5,", "p1,inf,"), "unknown",
         lambda r: r.unknown(Bi, "offset_days", "not a finite number")),
    Case("meta-view-with-nbsp", "ieee8023", lambda t: B.edit(_meta(t), "AP Supine", "AP\u00a0 supine"), "imported",
         lambda r: r.df.loc[D, "view"] == "AP Supine"),
    Case("meta-missing-column", "ieee8023", lambda t: B.edit(_meta(t), "finding,", "diagnosis,"), "error"),
    Case("meta-empty-file", "ieee8023", lambda t: B.write(_meta(t), ""), "error"),
    # ---- ieee8023: images and companions ----
    Case("image-header-claims-30000-px", "ieee8023", lambda t: B.bomb_png(t / "ieee" / "images" / "b.png"), "quarantined",
         lambda r: r.quarantined("decompression bomb", Bi), lost=(Bi,)),
    Case("image-is-text", "ieee8023", lambda t: B.write(t / "ieee" / "images" / "c.png", "hello"), "quarantined",
         lambda r: r.quarantined("unreadable image", C), lost=(C,)),
    Case("image-empty-file", "ieee8023", lambda t: B.write(t / "ieee" / "images" / "d.png", ""), "quarantined",
         lambda r: r.quarantined("unreadable image", D), lost=(D,)),
    Case("segmentation-offset-not-a-number", "ieee8023", lambda t: B.edit(t / "seg" / "structure.csv", "32x32,5,5", "32x32,5,abc"),
         "unknown", lambda r: r.unknown(A, "disease_mask", "not whole numbers")),
    Case("segmentation-mask-path-leaves-the-folder", "ieee8023",
         lambda t: B.edit(t / "seg" / "structure.csv", "masks/m1.png,32x32,5", "../../m1.png,32x32,5"), "unknown",
         lambda r: r.unknown(A, "disease_mask", "missing")),
    Case("segmentation-mask-damaged", "ieee8023", lambda t: B.write(t / "seg" / "masks" / "m1.png", "\x89PNG garbage"), "unknown",
         lambda r: r.unknown(A, "disease_mask", "m1.png")),
    Case("segmentation-table-truncated", "ieee8023", lambda t: B.truncate(t / "seg" / "structure.csv", 0.8), "unknown",
         lambda r: r.unknown(A, "disease_mask", "structure.csv line 3")),
    Case("v7-zip-damaged", "ieee8023", lambda t: B.write(t / "v7" / "covid-only.zip", "PK\x03\x04 not a zip"), "unknown",
         lambda r: r.unknown(A, "lung_polygon_mask", "cannot be opened")),
    Case("v7-entry-truncated", "ieee8023", lambda t: __import__("zipfile").ZipFile(t / "v7" / "covid-only.zip", "w").writestr(
        "a.json", '{"image": {"original_filename": "a.png", "width": 3'), "unknown",
         lambda r: r.unknown(A, "lung_polygon_mask", "not valid JSON")),
    Case("severity-not-a-number", "ieee8023", lambda t: B.edit(t / "sev" / "covid-severity-scores.csv", "3.0", "lots"), "unknown",
         lambda r: r.unknown(A, "severity_geographic", "not a number")),
    Case("severity-out-of-range", "ieee8023", lambda t: B.edit(t / "sev" / "covid-severity-scores.csv", "3.0", "30"), "unknown",
         lambda r: r.unknown(A, "severity_geographic", "outside 0 to 8")),
    # ---- ChestX-ray14 ----
    Case("nih-gzip-truncated", "nih", lambda t: B.truncate(t / "nih" / "Data_Entry_2017.csv.gz", 0.7), "quarantined",
         lambda r: r.quarantined("truncated download") and len(r.df) == 4),
    Case("nih-gzip-damaged", "nih", lambda t: B.edit_bytes(t / "nih" / "Data_Entry_2017.csv.gz", *_flip(t)), "error"),
    Case("nih-box-cell-blank", "nih", lambda t: B.edit(t / "nih" / "BBox_List_2017.csv", "Effusion,100", "Effusion,"), "unknown",
         lambda r: r.unknown(N2, "disease_boxes", "not all numbers")),
    Case("nih-box-negative-width", "nih", lambda t: B.edit(t / "nih" / "BBox_List_2017.csv", "100,200,300", "100,200,-300"), "unknown",
         lambda r: r.unknown(N2, "disease_boxes", "inverted")),
    Case("nih-box-on-a-no-finding-film", "nih",
         lambda t: B.write(t / "nih" / "BBox_List_2017.csv", B.NIH_BOXES + "00000003_000.png,Mass,10,10,50,50\n"), "unknown",
         lambda r: r.unknown(N3, "disease_boxes", "No Finding film") and r.labels(N3) == ("1", "0", "0")),
    Case("nih-blank-patient-ids", "nih", lambda t: B.nih_table(t, [r.replace(",0,3,", ",0,,").replace(",0,2,", ",0,,") for r in B.NIH_ROWS]),
         "unknown", lambda r: r.df.loc[N2, "patient_id"] == "nih:00000002" and r.df.loc[N3, "patient_id"] == "nih:00000003"
         and (r.notes["column"] == "patient_id").sum() == 2),
    Case("nih-nbsp-in-no-finding", "nih", lambda t: B.nih_table(t, [r.replace("No Finding,0,3", "No\u00a0Finding,0,3") for r in B.NIH_ROWS]),
         "imported", lambda r: r.labels(N3) == ("1", "0", "0")),
    Case("nih-covid-in-a-pre-2020-collection", "nih",
         lambda t: B.nih_table(t, [r.replace("No Finding,0,3", "COVID-19,0,3") for r in B.NIH_ROWS]), "quarantined",
         lambda r: r.quarantined("pre-2020"), lost=(N3,)),
    Case("nih-one-image-two-labels", "nih", lambda t: B.nih_table(t, B.NIH_ROWS + ["00000003_000.png,Mass,0,3,30,F,PA"]), "quarantined",
         lambda r: r.quarantined("listed 2 times with different label", N3), lost=(N3,)),
    Case("nih-one-image-listed-twice-alike", "nih", lambda t: B.nih_table(t, B.NIH_ROWS + [B.NIH_ROWS[3]]), "imported",
         lambda r: len(r.df) == 4 and r.notes["reason"].str.contains("listed once").any()),
    Case("nih-age-414", "nih", lambda t: B.nih_table(t, [r.replace(",2,40,", ",2,414,") for r in B.NIH_ROWS]), "unknown",
         lambda r: r.unknown(N2, "age", "414")),
    Case("nih-view-unknown", "nih", lambda t: B.nih_table(t, [r.replace("F,AP", "F,XX") for r in B.NIH_ROWS]), "imported",
         lambda r: N2 not in r.df.index, lost=(N2,)),
    Case("nih-table-missing-column", "nih", lambda t: (t / "nih" / "Data_Entry_2017.csv.gz").write_bytes(
        __import__("gzip").compress(b"Image Index,Finding Labels\n00000001_000.png,Mass\n")), "error"),
    # ---- TBX11K ----
    Case("tbx-bbox-null", "tbx11k", _set(_tbx, _ann(2, bbox=None)), "unknown",
         lambda r: r.unknown(TB2, "disease_boxes", "bbox") and r.df.loc[TB1, "disease_boxes"] != ""),
    Case("tbx-image-width-0", "tbx11k", _set(_tbx, _img(1, width=0)), "unknown", lambda r: r.unknown(TB2, "disease_boxes", "width")),
    Case("tbx-two-images-share-an-id", "tbx11k", _set(_tbx, _img(1, id=1)), "unknown",
         lambda r: r.unknown(TB1, "disease_boxes", "shared") and r.unknown(TB2, "disease_boxes", "shared")),
    Case("tbx-non-utf8-byte-in-a-file-name", "tbx11k", lambda t: B.edit_bytes(_tbx(t), b'"tb/tb2.png"', b'"tb/tb2\xff.png"'), "unknown",
         lambda r: r.unknown(TB2, "disease_boxes", "no usable file_name") and r.df.loc[TB1, "disease_boxes"] != ""),
    Case("tbx-non-utf8-byte-in-a-number", "tbx11k", lambda t: B.edit_bytes(_tbx(t), b"[5, 5, 10", b"[5, 5, 1\xff0"), "unknown",
         lambda r: r.unknown(TB1, "disease_boxes", "not valid JSON") and r.df.loc[H1, "disease_boxes"] == "[]"),
    Case("tbx-truncated", "tbx11k", lambda t: B.truncate(_tbx(t), 0.5), "unknown", lambda r: r.unknown(TB2, "disease_boxes", "not valid JSON")),
    Case("tbx-box-on-a-healthy-film", "tbx11k", _set(_tbx, _ann(2, image_id=3)), "unknown",
         lambda r: r.unknown(H1, "disease_boxes", "TB boxes on a film in imgs/health/")),
    Case("tbx-annotation-without-category", "tbx11k", _set(_tbx, _ann(2, category_id=_DELETE)), "unknown",
         lambda r: r.unknown(TB2, "disease_boxes", "category_id")),
    Case("tbx-category-not-listed", "tbx11k", _set(_tbx, _ann(0, category_id=7)), "unknown",
         lambda r: r.unknown(TB1, "disease_boxes", "category the file does not name")),
    Case("tbx-image-header-claims-30000-px", "tbx11k", lambda t: B.bomb_png(t / "tbx" / "imgs" / "tb" / "tb2.png"), "quarantined",
         lambda r: r.quarantined("decompression bomb", TB2), lost=(TB2,)),
    # ---- CheXpert ----
    Case("chexpert-label-value-2", "chexpert", lambda t: B.edit(t / "CheXpert-v1.0-small" / "train.csv", ",1.0,,\n", ",2.0,,\n"),
         "unknown", lambda r: r.labels("chexpert:patient00001_study1_view1_frontal") == ("", "0", "")
         and r.notes["reason"].str.contains("Cardiomegaly is '2.0'").any()),
    Case("chexpert-path-without-patient", "chexpert",
         lambda t: B.edit(t / "CheXpert-v1.0-small" / "train.csv", "train/patient00003/", "train/nobody/"), "quarantined",
         lambda r: r.quarantined("no patientNNNNN folder"), lost=("chexpert:patient00003_study1_view1_frontal",)),
    Case("chexpert-path-leaves-the-folder", "chexpert",
         lambda t: (B.png(t / "patient00009" / "x.png"),
                    B.edit(t / "CheXpert-v1.0-small" / "train.csv", "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg",
                           "../../patient00009/x.png")), "quarantined",
         lambda r: r.quarantined("leaves the collection's folder"), lost=("chexpert:patient00003_study1_view1_frontal",)),
    Case("chexpert-table-truncated", "chexpert", lambda t: B.truncate(t / "CheXpert-v1.0-small" / "train.csv", 0.9), "quarantined",
         lambda r: r.quarantined("train.csv line 4 has"), lost=("chexpert:patient00003_study1_view1_frontal",)),
]

CSV = "mine:img_a", "mine:img_b", "mine:img_c"
_csv = (lambda t: t / "mine" / "labels.csv")
CASES += [
    # ---- the csv kind ----
    Case("csv-flat-box", "csv", lambda t: B.edit(_csv(t), '"[[1, 1, 20, 20]]"', '"[1, 1, 20, 20]"'), "unknown",
         lambda r: r.unknown(CSV[0], "disease_boxes", "one flat box")),
    *[Case(f"csv-box-{name}", "csv", lambda t, v=value: B.edit(_csv(t), '"[[1, 1, 20, 20]]"', f'"{v}"'), "unknown",
           lambda r, w=why: r.unknown(CSV[0], "disease_boxes", w))
      for name, value, why in (("nan", "[[NaN, 1, 20, 20]]", "NaN"), ("inverted", "[[20, 1, 1, 20]]", "inverted"),
                               ("zero-size", "[[1, 1, 1, 20]]", "zero size"), ("outside", "[[1, 1, 500, 20]]", "outside"),
                               ("negative", "[[-50, -50, -10, -10]]", "outside"), ("not-json", "[[1, 1", "not JSON"),
                               ("text", '[[""a"", 1, 2, 3]]', "not a number"))],
    Case("csv-box-on-a-healthy-film", "csv", lambda t: B.edit(_csv(t), "normal,S2,PA,,", 'normal,S2,PA,"[[1, 1, 5, 5]]",'), "unknown",
         lambda r: r.unknown(CSV[1], "disease_boxes", "labelled healthy") and r.labels(CSV[1]) == ("1", "0", "0")),
    Case("csv-label-value-maybe", "csv", lambda t: B.edit(_csv(t), '20]]",,', '20]]",maybe,'), "unknown",
         lambda r: r.unknown(CSV[0], "label_covid", "maybe")),
    Case("csv-one-id-two-files", "csv", lambda t: B.edit(_csv(t), "S2", "S1"), "quarantined",
         lambda r: r.quarantined("is given to 2 different files") and "mine:S3" in r.df.index, lost=CSV,
         options={"column_map": {**B.CSV_MAP, "image_id": "Subject"}, "source": "mine"}),
    Case("csv-path-leaves-the-folder", "csv", lambda t: (B.png(t / "out.png"), B.edit(_csv(t), "img/c.png", "../out.png")), "quarantined",
         lambda r: r.quarantined("leaves the collection's folder"), lost=(CSV[2],)),
    Case("csv-path-leaves-the-folder-allowed", "csv", lambda t: (B.png(t / "out.png"), B.edit(_csv(t), "img/c.png", "../out.png")),
         "imported", lambda r: r.df.loc["mine:out", "path"] == str(Path(r.df.loc[CSV[0], "path"]).parents[2] / "out.png"),
         lost=(CSV[2],), options={**CSV_OPTIONS, "allow_outside_root": True}),
    Case("csv-split-training", "csv", lambda t: B.edit(_csv(t), "PA,,,\n", "PA,,,training\n"), "unknown",
         lambda r: r.unknown(CSV[1], "split", "not train, val or test")),
    Case("csv-path-name-too-long", "csv", lambda t: B.edit(_csv(t), "img/c.png", "img/" + "x" * 400 + ".png"), "quarantined",
         lambda r: r.quarantined("file not found"), lost=(CSV[2],)),
    Case("csv-mapped-column-missing", "csv", lambda t: B.edit(_csv(t), "Diagnosis", "Dx"), "error"),
    Case("csv-latin1-byte", "csv", lambda t: B.edit_bytes(_csv(t), b"Pneumonia", b"Pneum\xf6nia"), "quarantined",
         lambda r: r.quarantined("re-save the file as UTF-8"), lost=(CSV[2],)),
    Case("csv-binary-garbage", "csv", lambda t: _csv(t).write_bytes(bytes(range(256)) * 4), "error"),
    Case("csv-one-file-two-labels", "csv", lambda t: B.edit(_csv(t), "img/c.png", "img/a.png"), "quarantined",
         lambda r: r.quarantined("different label"), lost=CSV),
    Case("csv-finding-symbols-only", "csv", lambda t: B.edit(_csv(t), "normal", "??!"), "unknown",
         lambda r: r.labels(CSV[1]) == ("", "", "") and r.notes["reason"].str.contains("symbols only").any()),
    # ---- Figure1 / Actualmed ----
    Case("figure1-blank-patientid", "covidx", lambda t: B.edit(t / "fig1" / "metadata.csv", "COVID-00001,", ",", "latin-1"),
         "quarantined", lambda r: r.quarantined("patientid is blank"), lost=("figure1:COVID-00001",)),
    Case("actualmed-path-leaves-the-folder", "covidx",
         lambda t: (B.png(t / "out.png"), B.edit(t / "actualmed" / "metadata.csv", "x2.png", "../../out.png")), "quarantined",
         lambda r: r.quarantined("leaves the collection's folder", "actualmed:ANON2"), lost=("actualmed:ANON2",)),
    Case("actualmed-lacks-a-column", "covidx", lambda t: B.edit(t / "actualmed" / "metadata.csv", "imagename", "image_name"),
         "imported", lambda r: "lacks imagename" in r.not_imported["reason"].iloc[0] and "figure1:COVID-00001" in r.df.index,
         lost=("actualmed:ANON1", "actualmed:ANON2")),
    Case("figure1-lacks-a-column", "covidx", lambda t: B.edit(t / "fig1" / "metadata.csv", "finding", "dx", "latin-1"),
         "imported", lambda r: "lacks finding" in r.not_imported["reason"].iloc[0] and "actualmed:ANON1" in r.df.index,
         lost=("figure1:COVID-00001", "figure1:COVID-00002a", "figure1:COVID-00002b")),
    # ---- auto: one broken collection costs only itself ----
    Case("auto-one-collection-unreadable", "auto", lambda t: B.write(_meta(t), ""), "imported",
         lambda r: list(r.not_imported["collection"]) == ["ieee8023"] and "empty" in r.not_imported["reason"].iloc[0]
         and {N1, TB1} <= set(r.df.index), lost=(A, Bi, C, D)),
    Case("auto-one-collection-lacks-a-column", "auto", lambda t: B.nih_table(t, []) or (t / "nih" / "Data_Entry_2017.csv.gz").write_bytes(
        __import__("gzip").compress(b"Image Index,Finding Labels\n")), "imported",
         lambda r: "lacks column" in r.not_imported["reason"].iloc[0] and A in r.df.index, lost=(N1, N2, N3, "nih:00000001_001")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_corruption_costs_only_itself(case: Case, clean, tmp_path):
    base = clean(case.kind)
    root = _root(case.kind, tmp_path)
    case.corrupt(tmp_path)
    out = tmp_path / "out" / "m.csv"
    options = case.options or (CSV_OPTIONS if case.kind == "csv" else {})
    if case.outcome == "error":
        with pytest.raises(CmtError):
            import_collection(case.kind, root, out, **options)
        assert not out.exists()
        return
    run = _import(case.kind, root, out, options)
    assert case.check(run), f"{case.id}: the case's claim failed\n{run.q.to_string()}\n{run.notes.to_string()}"
    _invariants(case, run, base)


def _invariants(case: Case, run: Run, base: Run) -> None:
    """Nothing moves between films; nothing is lost or left unknown without a reason."""
    for iid in run.df.index.intersection(base.df.index).difference(case.changed):
        source = iid.split(":")[0]
        mine = run.notes[run.notes["image_id"].isin([iid, f"{source}:*"])]
        for col in GUARDED:
            new, old = run.df.at[iid, col] if col in run.df.columns else "", base.df.at[iid, col] if col in base.df.columns else ""
            if new == old:
                continue
            assert new == "", f"{case.id}: {iid} {col} changed from {old!r} to {new!r}"
            wanted = LABEL_NOTES if col.startswith("label_") else {col}
            if col == "disease_boxes" and old == "[]":
                wanted = wanted | LABEL_NOTES
            assert mine["column"].isin(wanted).any(), f"{case.id}: {iid} {col} blanked without a note"
    missing = set(base.df.index) - set(run.df.index) - set(case.lost)
    assert not missing - set(run.q["image_id"]), f"{case.id}: rows lost without a quarantine entry: {missing}"
    assert (run.q["reason"] != "").all() and (run.notes["reason"] != "").all()


def test_the_cli_prints_an_import_error_in_one_line(tmp_path, capsys):
    root = B.ieee8023(tmp_path)
    B.edit(_meta(tmp_path), "finding,", "diagnosis,")
    assert main(["data", "import", "ieee8023", str(root), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("cmt: error: no images imported") and "metadata.csv lacks column(s) finding" in "\n".join(err)
    assert "Traceback" not in "\n".join(err)


def test_findings_files_are_written_and_read_back(tmp_path):
    root = B.auto(tmp_path)
    B.write(_meta(tmp_path), "")
    out = tmp_path / "out" / "m.csv"
    report = import_collection("auto", root, out)
    q, notes, ni = import_findings(out)
    assert list(q.columns) == ["image_id", "path", "reason"] and list(notes.columns) == ["image_id", "column", "value", "reason"]
    assert list(ni.columns) == ["collection", "folder", "reason"] and ni.loc[0, "folder"] == "ieee"
    assert "not imported: ieee: ieee8023 collection, import failed" in report.summary() and "is empty" in report.summary()


def _flip(tmp: Path) -> tuple[bytes, bytes]:
    data = (tmp / "nih" / "Data_Entry_2017.csv.gz").read_bytes()
    k = len(data) // 2
    return data[k:k + 8], bytes(b ^ 0x5A for b in data[k:k + 8])
