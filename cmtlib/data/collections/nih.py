"""NIH ChestX-ray14 (Wang et al. 2017), `source = nih`.

The label table `Data_Entry_2017*.csv[.gz]` lists all 112,120 images; only rows whose image is
found (by Image Index, anywhere below the table's folder) are imported, and the absent ones are
counted, not quarantined: most copies hold a part of the collection. "No Finding" is healthy,
any other label (several are joined by '|') is other disease, and label_covid is 0 (pre-2020).

Disease boxes (`BBox_List_2017.csv`) are drawn on the 1024 x 1024 PNGs of the release. They are
written in the pixels of the file the row points at (common.py: one frame for every collection),
so a 64-px thumbnail's boxes are the 1024-px boxes x 64/1024. The extra column
`disease_box_labels` holds each box's finding, in the same order.

One Image Index found at two sizes (a 64-px thumbnail and a larger copy) becomes two images,
`nih:<stem>_<W>px`, sharing the duplicate_group `nih:<stem>`, so a split keeps them together.
Found twice at one size (copies in two split or class folders), identical bytes are one image
(noted), different bytes are both quarantined: which one Data_Entry describes is unknown
(rows.same_name_copies).

The Image Index names the patient too (<patient, 8 digits>_<follow-up>.png). A Patient ID that
contradicts it is noted and the film keeps the file name's patient: the name is what groups the
film with the patient's other files (their ids agree with their names), so a patient-disjoint
split keeps them together; one contradicting cell in one row cannot say which other films are
the same person's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cmtlib.data.collections.common import (
    CollectionResult, ImportContext, SourceStats, base_row, place_boxes, prefixed,
    require_columns, size_tag, walk_dirs, xywh_to_xyxy,
)
from cmtlib.data.collections.registry import MARKED, NO, CollectionKind, register
from cmtlib.data.collections.rows import (
    cell, frontal_view, line_of, note_damaged, quarantine_bad_lines, read_table_or_note, row_guard, same_name_copies,
)
from cmtlib.data.manifest import DUPLICATE_GROUP, ManifestError, format_boxes
from cmtlib.data.rules import box_problem, parse_number
from cmtlib.data.tables import read_table

SOURCE = "nih"
TABLE_GLOB = "Data_Entry_2017*.csv*"
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
USED = ("Patient Age", "Patient Gender")
BOX_FRAME = (1024, 1024)  # (width, height) of the released PNGs the boxes were drawn on
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# ChestX-ray14 names each image <patient, 8 digits>_<follow-up, 3 digits>.png.
_INDEX = re.compile(r"^(\d{8})_\d{3}\.")


def table_of(folder: Path) -> Path | None:
    tables = sorted(folder.glob(TABLE_GLOB))
    return tables[0] if tables else None


def find(root: Path) -> list[Path]:
    found = [d for d in walk_dirs(root, max_depth=2) if table_of(d)]
    if not found:
        raise ManifestError(f"no ChestX-ray14 label table ({TABLE_GLOB}) under {root}")
    return found


def _boxes(folder: Path, result: CollectionResult) -> dict[str, list[tuple[str, list[float]]] | str]:
    """Image Index -> [(finding, [x0, y0, x1, y1] in the 1024-px frame)], or why its boxes are unknown."""
    path = folder / "BBox_List_2017.csv"
    if not path.is_file():
        return {}
    table = read_table_or_note(path, result, SOURCE, "disease_boxes")
    if table is None:
        return {}
    out: dict[str, list[tuple[str, list[float]]] | str] = {}
    for line, why, text in table.bad_lines:
        name = text.split(",")[0].strip().strip('"')
        if name and "repeated header" not in why:
            out[name] = f"BBox_List line {line} {why}"
        else:
            result.note(f"{SOURCE}:*", "disease_boxes", f"{path.name} line {line}", f"line {why}; it names no image")
    if table.frame.shape[1] < 6:
        result.note(f"{SOURCE}:*", "disease_boxes", path, "fewer than 6 columns (Image Index, Finding Label, x, y, w, h); boxes not used")
        return {}
    # The header splits "Bbox [x,y,w,h]" over four columns; read the values by position.
    for line, row in zip(table.frame.index, table.frame.itertuples(index=False)):
        name, label = cell(row[0]), cell(row[1])
        if not name:
            result.note(f"{SOURCE}:*", "disease_boxes", f"{path.name} line {line}", "Image Index blank; the box names no image")
            continue
        values = [parse_number(v)[0] for v in row[2:6]]
        box = xywh_to_xyxy(values) if None not in values else None
        problem = box_problem(box, BOX_FRAME) if box else f"x, y, w, h {', '.join(repr(cell(v)) for v in row[2:6])} are not all numbers"
        if isinstance(out.get(name), str):
            continue
        if problem:
            out[name] = f"BBox_List line {line}: {problem}"
        else:
            out.setdefault(name, []).append((label, box))
    return out


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    table = read_table(table_of(folder), critical=COLUMNS)
    entries = table.frame
    require_columns(entries, COLUMNS, table.path, "; is this ChestX-ray14's Data_Entry table?")
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    quarantine_bad_lines(table, result, SOURCE)
    # One walk of the folder, then lookups by name: the collection can hold 112,120 files.
    files: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            files.setdefault(p.name, []).append(p)
    names = entries["Image Index"].map(cell)
    present = entries[names.isin(files)]
    stats.skip("Data_Entry rows whose image is not in this copy (counted, not quarantined)", len(entries) - len(present))
    stats.skip("image files not listed in Data_Entry", len(set(files) - set(names)))
    boxes = _boxes(folder, result)
    for line, r in present.iterrows():
        with row_guard(result, SOURCE, line_of(table, line)) as guard:
            rows = _rows(r, files[cell(r["Image Index"])], boxes, guard, ctx, result)
            for row in rows:
                _folder_disagrees(row, result)
                note_damaged(table, line, row["image_id"], result, USED)
            result.rows += rows
    stats.notes.append(f"disease boxes: from {BOX_FRAME[0]}-px coordinates scaled to each file's own pixels")
    absent = len(set(boxes) - set(names[names.isin(files)]))
    if absent:
        stats.notes.append(f"disease boxes: {absent} BBox_List images are not in this copy or not in Data_Entry (not used)")
    return result


def _rows(r, paths: list[Path], boxes: dict, guard, ctx: ImportContext, result: CollectionResult) -> list[dict]:
    """The manifest rows of one Data_Entry row: one per size at which its image is found."""
    stats = result.stats[0]
    name = cell(r["Image Index"])
    stem = Path(name).stem
    guard.image_id = prefixed(SOURCE, stem)
    view = frontal_view(r["View Position"], stats, "View Position")
    if view is None:
        return []
    labels = ctx.labels(r["Finding Labels"], pre2020=True)
    copies = same_name_copies(result, ctx, guard.image_id, paths, None, guard.where)
    patient = _patient(r, name, guard.image_id, result)
    rows = []
    for path, size in copies:
        several = len(copies) > 1
        image_id = prefixed(SOURCE, f"{stem}_{size_tag(size)}" if several else stem)
        row = base_row(SOURCE, image_id, path, patient, r["Finding Labels"], labels)
        row.update(view=view, sex=cell(r.get("Patient Gender", "")), age=cell(r.get("Patient Age", "")), _size=size, _where=guard.where)
        if several:
            row[DUPLICATE_GROUP] = prefixed(SOURCE, stem)
        _add_boxes(row, boxes.get(name), labels, size, result)
        rows.append(row)
    return rows


def _patient(r, name: str, image_id: str, result: CollectionResult) -> str:
    """nih:<8-digit patient> from the Image Index (module docstring). A Patient ID that is blank, not
    a number or another patient's is noted; without a patient number in the name, a numeric Patient
    ID is used, else the image is its own patient, so that blank ids never merge unrelated patients."""
    raw = cell(r["Patient ID"])
    match = _INDEX.match(name)
    if match and raw.isdigit() and raw.zfill(8) == match.group(1):
        return prefixed(SOURCE, match.group(1))
    if match:
        why = ("Patient ID blank or not a number" if not raw.isdigit() else
               f"Patient ID {raw} contradicts the file name, which names patient {match.group(1)}")
        result.note(image_id, "patient_id", raw, f"{why}; the film keeps the file name's patient (<patient>_<follow-up>.png)")
        return prefixed(SOURCE, match.group(1))
    if raw.isdigit():
        return prefixed(SOURCE, raw.zfill(8))
    result.note(image_id, "patient_id", raw, "Patient ID blank or not a number; the image is its own patient")
    return image_id


def _add_boxes(row: dict, found: list | str | None, labels: tuple[str, str, str], size: tuple[int, int], result: CollectionResult) -> None:
    if found is None:
        return
    if isinstance(found, str):
        row["disease_boxes"] = ""
        result.note(row["image_id"], "disease_boxes", "", f"{found}; disease_boxes left unknown")
    elif labels[0] == "1":
        # A box on a "No Finding" film contradicts its label: the region is not known empty.
        row["disease_boxes"] = ""
        result.note(row["image_id"], "disease_boxes", "[]", f"BBox_List draws {', '.join(lab for lab, _ in found)} on a No Finding film; disease_boxes left unknown")
    else:
        placed, why = place_boxes([b for _, b in found], BOX_FRAME, size)
        if placed is None:
            row["disease_boxes"] = ""
            result.note(row["image_id"], "disease_boxes", "", f"BBox_List: {why}; disease_boxes left unknown")
            return
        row["disease_boxes"] = format_boxes(placed)
        row["disease_box_labels"] = json.dumps([lab for lab, _ in found])


def _folder_disagrees(row: dict, result: CollectionResult) -> None:
    """The 64-px copy sorts images into 0_normal / 1_abnormal folders: a folder that contradicts
    Data_Entry is noted on the film (its labels stay Data_Entry's, the release's own table)."""
    parts = set(Path(row["path"]).parts)
    healthy = row["label_healthy"] == "1"
    folder = "0_normal" if "0_normal" in parts else "1_abnormal" if "1_abnormal" in parts else ""
    if (folder == "0_normal" and row["label_healthy"] != "1") or (folder == "1_abnormal" and healthy):
        result.note(row["image_id"], "labels", folder, f"the file sits in {folder}/ but Data_Entry says "
                    f"{row['finding']!r}; labels from Data_Entry")
        result.stats[0].keep("images in a 0_normal / 1_abnormal folder that disagrees with Data_Entry (labels from Data_Entry)")


def detect(folder: Path) -> int:
    return MARKED if table_of(folder) else NO


register(CollectionKind("nih", find, read, detect, sources={SOURCE: "NIH ChestX-ray14 (pre-2020 films: no COVID-19)"},
                        help="NIH ChestX-ray14: Data_Entry_2017*.csv[.gz] and the images below its folder"))

