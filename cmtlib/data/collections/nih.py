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
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cmtlib.data.collections.common import (
    LATERAL, CollectionResult, ImportContext, SourceStats, base_row, labels_for_finding, normalise_view, prefixed,
    require_columns, scale_boxes, walk_dirs, xywh_to_xyxy,
)
from cmtlib.data.collections.rows import admit_image, cell, line_of, quarantine_bad_lines, read_table_or_note, row_guard
from cmtlib.data.manifest import DUPLICATE_GROUP, ManifestError, format_boxes
from cmtlib.data.rules import box_problem, parse_number
from cmtlib.data.tables import read_table

SOURCE = "nih"
TABLE_GLOB = "Data_Entry_2017*.csv*"
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
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
        if name:
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
    table = read_table(table_of(folder))
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
    disagree = 0
    for line, r in present.iterrows():
        with row_guard(result, SOURCE, line_of(table, line)) as guard:
            rows = _rows(r, files[cell(r["Image Index"])], boxes, guard, ctx, result)
            disagree += sum(_folder_disagrees(Path(row["path"]), (row["label_healthy"], row["label_covid"], row["label_other"])) for row in rows)
            result.rows += rows
    stats.notes.append(f"disease boxes: from {BOX_FRAME[0]}-px coordinates scaled to each file's own pixels")
    if disagree:
        stats.notes.append(f"{disagree} images sit in a 0_normal / 1_abnormal folder that disagrees with Data_Entry (labels from Data_Entry)")
    return result


def _rows(r, paths: list[Path], boxes: dict, guard, ctx: ImportContext, result: CollectionResult) -> list[dict]:
    """The manifest rows of one Data_Entry row: one per size at which its image is found."""
    stats = result.stats[0]
    name = cell(r["Image Index"])
    stem = Path(name).stem
    guard.image_id = prefixed(SOURCE, stem)
    kind, view = normalise_view(r["View Position"])
    if kind in ("lateral", "other"):
        stats.skip(LATERAL if kind == "lateral" else f"view {cell(r['View Position'])!r} (not PA/AP)")
        return []
    labels = labels_for_finding(r["Finding Labels"], pre2020=True)
    by_size: dict[tuple[int, int], Path] = {}
    for path in paths:
        size = admit_image(result, ctx, guard.image_id, path, None, guard.where)
        if size in by_size:
            stats.skip("second copy of an image at the same size (first kept)")
        elif size is not None:
            by_size[size] = path
    patient = _patient(r, name, guard.image_id, result)
    rows = []
    for size, path in sorted(by_size.items()):
        several = len(by_size) > 1
        image_id = prefixed(SOURCE, f"{stem}_{_size_tag(size)}" if several else stem)
        row = base_row(SOURCE, image_id, path, patient, r["Finding Labels"], labels)
        row.update(view=view, sex=cell(r.get("Patient Gender", "")), age=cell(r.get("Patient Age", "")), _size=size, _where=guard.where)
        if several:
            row[DUPLICATE_GROUP] = prefixed(SOURCE, stem)
        _add_boxes(row, boxes.get(name), labels, size, result)
        rows.append(row)
    return rows


def _patient(r, name: str, image_id: str, result: CollectionResult) -> str:
    """nih:<8-digit Patient ID>. A blank or non-numeric one is taken from the Image Index (whose
    first 8 digits are the patient by ChestX-ray14's naming), else the image is its own patient;
    either way a note says so, so that blank ids never merge unrelated patients into one."""
    raw = cell(r["Patient ID"])
    if raw.isdigit():
        return prefixed(SOURCE, raw.zfill(8))
    match = _INDEX.match(name)
    if match:
        result.note(image_id, "patient_id", raw, "Patient ID blank or not a number; taken from the Image Index (<patient>_<follow-up>.png)")
        return prefixed(SOURCE, match.group(1))
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
        row["disease_boxes"] = format_boxes(scale_boxes([b for _, b in found], BOX_FRAME, size))
        row["disease_box_labels"] = json.dumps([lab for lab, _ in found])


def _size_tag(size: tuple[int, int]) -> str:
    return f"{size[0]}px" if size[0] == size[1] else f"{size[0]}x{size[1]}px"


def _folder_disagrees(path: Path, labels: tuple[str, str, str]) -> int:
    """The 64-px copy sorts images into 0_normal / 1_abnormal folders; count contradictions."""
    parts = set(path.parts)
    if "0_normal" in parts:
        return int(labels[0] != "1")
    if "1_abnormal" in parts:
        return int(labels[0] == "1")
    return 0

