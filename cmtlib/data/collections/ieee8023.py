"""ieee8023/covid-chestxray-dataset (Cohen et al.), with the annotations published for it.

The collection folder holds `metadata.csv` (patientid, offset, sex, age, finding, view, modality,
folder, filename, license, ...) and the images in its `folder`. Annotations are looked for inside
that folder and beside it (its parent, two levels down):

- `annotations/annotations.json` (GeneralBlockchain lung boxes, COCO: category 1 Right Lung,
  2 Left Lung, [x, y, w, h]) -> `lung_boxes`, the two-box lung masks the paper drew;
- a folder with `structure.csv` + `masks/` (GeneralBlockchain segmentations) -> `disease_mask`:
  ground-glass opacity + consolidation + pleural effusion (+ pneumothorax) composed per image;
- `covid-only.zip` (V7 Darwin lung polygons, COVID images only) -> the extra column
  `lung_polygon_mask`, never `lung_mask`: a mask that only COVID images have would tie the mask's
  shape to the label (DESIGN.md);
- `covid-severity-scores.csv` -> extra columns `severity_geographic` (0-8), `severity_opacity` (0-6).

Patient ids are kept verbatim (`331a` and `331b` are two patients). A blank or '?' view is kept
as '' only where GeneralBlockchain drew the two lung boxes (annotators drew left and right lung,
so the film is frontal); otherwise the row is left out and counted, since ieee8023 also holds
lateral films.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cmtlib.errors import CmtError
from cmtlib.data.collections.coco import read_coco
from cmtlib.data.collections.common import (
    LATERAL, CollectionResult, ImportContext, SourceStats, base_row, header_of, labels_for_finding, looks_like_uid,
    normalise_view, prefixed, require_columns, scale_boxes, walk_dirs,
)
from cmtlib.data.collections.ieee8023_extras import add_disease_masks, add_severity, add_v7_polygons
from cmtlib.data.collections.rows import RowError, admit_image, cell, line_of, quarantine_bad_lines, row_guard
from cmtlib.data.manifest import ManifestError, format_boxes
from cmtlib.data.tables import read_table

SOURCE = "ieee8023"
META_COLUMNS = ("patientid", "finding", "view", "filename")
# COCO category ids of the GeneralBlockchain lung boxes, in the order they are written.
LUNG_CATEGORIES = (1, 2)
LUNG_NAMES = {1: "Right Lung", 2: "Left Lung"}
X_RAY = ("x-ray", "xray", "cr", "dx", "")


def is_collection(folder: Path) -> bool:
    """metadata.csv in the ieee8023 schema with its image folder beside it (the segmentation
    repository carries the same metadata.csv but no images, so it is not a collection)."""
    meta = folder / "metadata.csv"
    return meta.is_file() and set(META_COLUMNS) <= header_of(meta) and (folder / "images").is_dir()


@dataclass
class Companions:
    coco: Path | None = None
    segmentations: Path | None = None
    v7_zip: Path | None = None
    severity: Path | None = None


def find_companions(folder: Path) -> Companions:
    found = Companions()
    coco = folder / "annotations" / "annotations.json"
    found.coco = coco if coco.is_file() else None
    for d in walk_dirs(folder.parent, max_depth=2):
        if found.segmentations is None and (d / "structure.csv").is_file() and (d / "masks").is_dir():
            found.segmentations = d
        if found.v7_zip is None and (d / "covid-only.zip").is_file():
            found.v7_zip = d / "covid-only.zip"
        if found.severity is None and (d / "covid-severity-scores.csv").is_file():
            found.severity = d / "covid-severity-scores.csv"
    return found


def lung_boxes_by_file(coco_path: Path, result: CollectionResult) -> dict[str, tuple[list[list[float]], tuple[int, int]] | str]:
    """file name -> ([right, left] lung boxes as [x0, y0, x1, y1], (width, height) drawn on), or
    the reason that film's lung boxes are unknown. A file that cannot be read is noted for the
    whole source and gives {}."""
    try:
        coco = read_coco(coco_path)
    except CmtError as err:
        result.note(f"{SOURCE}:*", "lung_boxes", coco_path, f"{err}; lung_boxes left unknown")
        return {}
    for problem in coco.problems:
        result.note(f"{SOURCE}:*", "lung_boxes", coco_path.name, problem)
    out: dict[str, tuple[list[list[float]], tuple[int, int]] | str] = {}
    for name, image in coco.images.items():
        if image.problem:
            out[name] = image.problem
            continue
        cats = [c for c, _ in image.boxes]
        if Counter(cats) == Counter(LUNG_CATEGORIES):  # ids may be text in a damaged file: no sorting
            by_cat = dict(image.boxes)
            out[name] = ([by_cat[c] for c in LUNG_CATEGORIES], image.frame)
        elif image.boxes:  # no box at all: nothing drawn, not a problem of the file
            out[name] = _lung_problem(cats)
    return out


def _lung_problem(cats: list) -> str:
    """Why a film's boxes are not the paper's two-box lung mask (one right, one left)."""
    parts = []
    for c in LUNG_CATEGORIES:
        n = cats.count(c)
        if n != 1:
            parts.append(f"{n} {LUNG_NAMES[c]} boxes")
    others = sorted({str(c) for c in cats if c not in LUNG_CATEGORIES})
    if others:
        parts.append(f"boxes of category {', '.join(others)} (not a lung)")
    return f"COCO gives {', '.join(parts)}; the two-box lung mask needs one of each"


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    meta_path = folder / "metadata.csv"
    table = read_table(meta_path)
    meta = table.frame
    require_columns(meta, META_COLUMNS, meta_path, "; is this ieee8023's metadata.csv?")
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    quarantine_bad_lines(table, result, SOURCE)
    comp = find_companions(folder)
    lungs = lung_boxes_by_file(comp.coco, result) if comp.coco else {}
    stats.notes.append(f"lung boxes: {comp.coco or 'none found (lung_boxes left unknown)'}")

    stems = meta["filename"].map(lambda f: Path(cell(f)).stem)
    clashing = set(stems[stems.duplicated(keep=False)])
    by_name: dict[str, dict] = {}
    for line, r in meta.iterrows():
        with row_guard(result, SOURCE, line_of(table, line)) as guard:
            row = _row(folder, line, r, lungs, clashing, ctx, result, guard)
            if row is not None:
                result.rows.append(row)
                by_name.setdefault(cell(r["filename"]), row)
    listed = {cell(f) for f in meta["filename"]}
    images = [p for p in (folder / "images").iterdir() if p.is_file()] if (folder / "images").is_dir() else []
    result.stats[0].skip("image files in images/ without a metadata row", sum(p.name not in listed for p in images))
    sizes = {name: row["_size"] for name, row in by_name.items()}
    add_disease_masks(comp.segmentations, sizes, by_name, ctx, result)
    add_v7_polygons(comp.v7_zip, sizes, by_name, ctx, result)
    add_severity(comp.severity, by_name, result)
    return result


def _row(folder: Path, line: int, r, lungs: dict, clashing: set, ctx: ImportContext, result: CollectionResult, guard) -> dict | None:
    """One metadata row as a manifest row, or None when it is left out (counted) or quarantined."""
    stats = result.stats[0]
    name = cell(r["filename"])
    if not name:
        raise RowError("filename is blank: no image to import")
    modality = cell(r.get("modality", "X-ray"))
    if modality.lower() not in X_RAY:
        stats.skip(f"not an X-ray (modality {modality})")
        return None
    kind, view = normalise_view(r["view"])
    if kind == "lateral":
        stats.skip(LATERAL)
        return None
    boxes = lungs.get(name)
    if kind in ("blank", "other") and not isinstance(boxes, tuple):
        stats.skip(f"view {cell(r['view']) or 'blank'} and no lung boxes to show the film is frontal")
        return None
    if kind in ("blank", "other"):
        stats.keep(f"view {cell(r['view']) or 'blank'} kept as '' (two lung boxes drawn: frontal)")
    stem = Path(name).stem
    # A file named by a DICOM UID gets its metadata line number instead (ids never hold UIDs).
    local = f"line{line}" if looks_like_uid(stem) else name if stem in clashing else stem
    guard.image_id = image_id = prefixed(SOURCE, local)
    if not image_id or Path(name).name in ("", ".", ".."):
        raise RowError(f"filename {name!r} names no image file")
    path = folder / (cell(r.get("folder", "")) or "images") / name
    guard.path = str(path)
    size = admit_image(result, ctx, image_id, path, folder, guard.where)
    if size is None:
        return None
    patient = cell(r["patientid"])
    row = base_row(SOURCE, image_id, path, prefixed(SOURCE, patient) or image_id, r["finding"], labels_for_finding(r["finding"]))
    if not patient:
        stats.keep("patientid blank: the image is its own patient")
    # Raw text: validate.py cleans age, offset and sex, and notes what it has to leave unknown.
    row.update(view=view, sex=cell(r.get("sex", "")), age=cell(r.get("age", "")), offset_days=cell(r.get("offset", "")),
               license=cell(r.get("license", "")), _size=size, _where=guard.where)
    # Where the film was taken (hospital, city, country): an extra column, so a params file can hold
    # one place out (`holdout: location~...`) to judge the network on hospitals it never saw.
    row["location"] = cell(r.get("location", ""))
    if isinstance(boxes, tuple):
        found, frame = boxes
        row["lung_boxes"] = format_boxes(found if frame == size else scale_boxes(found, frame, size))
    elif isinstance(boxes, str):
        result.note(image_id, "lung_boxes", "", f"{boxes}; lung_boxes left unknown")
    return row


def find(root: Path) -> list[Path]:
    """Folders holding an ieee8023 collection; failing those, any metadata.csv beside images/, so
    that the import names what is wrong with it (an empty file, a missing column)."""
    folders = walk_dirs(root, max_depth=2)
    found = [d for d in folders if is_collection(d)] or [d for d in folders if looks_like_one(d)]
    if not found:
        raise ManifestError(f"no ieee8023 collection under {root}: expected metadata.csv with columns "
                            f"{', '.join(META_COLUMNS)} beside an images/ folder")
    return found


def looks_like_one(folder: Path) -> bool:
    """metadata.csv beside images/ (the ieee8023 and COVIDx layout), whatever its header says."""
    return (folder / "metadata.csv").is_file() and (folder / "images").is_dir()
