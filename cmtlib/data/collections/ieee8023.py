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
lateral films; a view the import does not know ('Axial', a typo) without the lung boxes is
quarantined with its text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cmtlib.errors import CmtError
from cmtlib.data.collections.coco import file_key, leaves, read_coco
from cmtlib.data.collections.common import (
    LATERAL, CollectionResult, ImportContext, SourceStats, base_row, header_of, looks_like_uid, normalise_view,
    place_boxes, prefixed, require_columns, walk_dirs,
)
from cmtlib.data.collections.ieee8023_extras import add_disease_masks, add_severity, add_v7_polygons
from cmtlib.data.collections.registry import LOOKS_LIKE, MARKED, NO, CollectionKind, register
from cmtlib.data.collections.rows import RowError, admit_image, cell, line_of, note_damaged, quarantine_bad_lines, row_guard
from cmtlib.data.manifest import ManifestError, format_boxes
from cmtlib.data.tables import read_table

SOURCE = "ieee8023"
META_COLUMNS = ("patientid", "finding", "view", "filename")
# Columns that decide the row (a byte that cannot be read there costs the row), and the others it reads.
CRITICAL = (*META_COLUMNS, "folder", "modality")
USED = ("offset", "sex", "age", "license", "location")
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
    table = read_table(meta_path, critical=CRITICAL)
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
                note_damaged(table, line, row["image_id"], result, USED)
                by_name.setdefault(cell(r["filename"]), row)
    listed = {cell(f) for f in meta["filename"]}
    images = [p for p in (folder / "images").iterdir() if p.is_file()] if (folder / "images").is_dir() else []
    result.stats[0].skip("image files in images/ without a metadata row", sum(p.name not in listed for p in images))
    _unmatched_boxes(lungs, {file_key(n) for n in listed if n}, comp.coco, result)
    sizes = {name: row["_size"] for name, row in by_name.items()}
    add_disease_masks(comp.segmentations, sizes, by_name, ctx, result)
    add_v7_polygons(comp.v7_zip, sizes, by_name, ctx, result)
    add_severity(comp.severity, by_name, result)
    return result


def _unmatched_boxes(lungs: dict, listed: set[str], coco: Path | None, result: CollectionResult) -> None:
    """COCO entries that name no metadata row: one leaving the folder is noted (it may be meant for
    a film that now has no boxes); the others name images without a row, and are counted."""
    unmatched = sorted(set(lungs) - listed)
    for name in (n for n in unmatched if leaves(n)):
        result.note(f"{SOURCE}:*", "lung_boxes", name, f"{coco.name}: an image entry whose file_name leaves the collection's "
                    "folder; no film is matched to it and its boxes are not used")
    others = sum(not leaves(n) for n in unmatched)
    if others:
        result.stats[0].notes.append(f"lung boxes: {others} COCO image entries name no metadata row (their boxes are not used)")


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
    boxes = lungs.get(file_key(name)) if name else None
    if kind == "other" and not isinstance(boxes, tuple):
        raise RowError(f"view {cell(r['view'])!r} is not a view the import knows (PA, AP, AP Supine; a lateral is left out) "
                       "and no lung boxes show the film is frontal")
    if kind == "blank" and not isinstance(boxes, tuple):
        stats.skip("view blank and no lung boxes to show the film is frontal")
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
    row = base_row(SOURCE, image_id, path, prefixed(SOURCE, patient) or image_id, r["finding"], ctx.labels(r["finding"]))
    if not patient:
        stats.keep("patientid blank: the image is its own patient")
    # Raw text: validate.py cleans age, offset and sex, and notes what it has to leave unknown.
    row.update(view=view, sex=cell(r.get("sex", "")), age=cell(r.get("age", "")), offset_days=cell(r.get("offset", "")),
               license=cell(r.get("license", "")), _size=size, _where=guard.where)
    # Where the film was taken (hospital, city, country): an extra column, so a params file can hold
    # one place out (`holdout: location~...`) to judge the network on hospitals it never saw.
    row["location"] = cell(r.get("location", ""))
    if isinstance(boxes, tuple):
        placed, why = place_boxes(*boxes, size)
        if placed is None:
            result.note(image_id, "lung_boxes", "", f"{why}; lung_boxes left unknown")
        row["lung_boxes"] = format_boxes(placed)
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


def detect(folder: Path) -> int:
    """MARKED: ieee8023's metadata.csv beside images/; LOOKS_LIKE: metadata.csv beside images/ with
    no readable header, or one naming files (so the import says what is wrong with it)."""
    if is_collection(folder):
        return MARKED
    if looks_like_one(folder):
        header = header_of(folder / "metadata.csv")
        return LOOKS_LIKE if not header or "filename" in header else NO
    return NO


def companions(folder: Path) -> list[Path]:
    comp = find_companions(folder)
    return [p if p.is_dir() else p.parent for p in (comp.segmentations, comp.v7_zip, comp.severity) if p]


register(CollectionKind(
    "ieee8023", find, read, detect, options=(), companions=companions,
    sources={SOURCE: "the COVID-19 image data collection of Cohen et al. (many images are figures cropped from papers)"},
    help="ieee8023/covid-chestxray-dataset: metadata.csv beside images/, with the annotations published for it"))
