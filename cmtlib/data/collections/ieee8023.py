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

import json
from dataclasses import dataclass
from pathlib import Path

from cmtlib.data.collections.common import (
    LATERAL, CollectionResult, ImportContext, SourceStats, base_row, clean_number, clean_sex, labels_for_finding,
    looks_like_uid, normalise_view, prefixed, probe_image, quarantine_entry, read_table, require_columns, scale_boxes, walk_dirs,
    xywh_to_xyxy,
)
from cmtlib.data.collections.masks import ComposedMasks, compose_disease_masks, save_mask, v7_lung_polygons
from cmtlib.data.manifest import ManifestError, format_boxes

SOURCE = "ieee8023"
META_COLUMNS = ("patientid", "finding", "view", "filename")
# COCO category ids of the GeneralBlockchain lung boxes, in the order they are written.
LUNG_CATEGORIES = (1, 2)


def is_collection(folder: Path) -> bool:
    """metadata.csv in the ieee8023 schema with its image folder beside it (the segmentation
    repository carries the same metadata.csv but no images, so it is not a collection)."""
    meta = folder / "metadata.csv"
    if not meta.is_file():
        return False
    header = meta.open(encoding="utf-8", errors="replace").readline()
    cols = {c.strip() for c in header.strip().split(",")}
    return set(META_COLUMNS) <= cols and (folder / "images").is_dir()


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


def lung_boxes_by_file(coco_path: Path) -> dict[str, tuple[list[list[float]], tuple[int, int]]]:
    """file name -> ([right, left] lung boxes as [x0, y0, x1, y1], (width, height) they were drawn on)."""
    doc = json.loads(coco_path.read_text(encoding="utf-8"))
    images = {im["id"]: im for im in doc["images"]}
    boxes: dict[int, dict[int, list[float]]] = {}
    for ann in doc["annotations"]:
        if ann["category_id"] in LUNG_CATEGORIES:
            boxes.setdefault(ann["image_id"], {})[ann["category_id"]] = xywh_to_xyxy(ann["bbox"])
    out = {}
    for image_id, by_cat in boxes.items():
        if set(by_cat) == set(LUNG_CATEGORIES):  # one lung alone is not the paper's two-box mask
            im = images[image_id]
            out[im["file_name"]] = ([by_cat[c] for c in LUNG_CATEGORIES], (int(im["width"]), int(im["height"])))
    return out


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    meta_path = folder / "metadata.csv"
    meta = read_table(meta_path)
    require_columns(meta, META_COLUMNS, meta_path, "; is this ieee8023's metadata.csv?")
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    comp = find_companions(folder)
    lungs = lung_boxes_by_file(comp.coco) if comp.coco else {}
    stats.notes.append(f"lung boxes: {comp.coco or 'none found (lung_boxes left unknown)'}")

    stems = meta["filename"].map(lambda f: Path(f).stem)
    clashing = set(stems[stems.duplicated(keep=False)])
    by_name: dict[str, dict] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for i, r in meta.iterrows():
        name = r["filename"].strip()
        if r.get("modality", "X-ray").strip().lower() not in ("x-ray", "xray", "cr", "dx", ""):
            stats.skip(f"not an X-ray (modality {r['modality'].strip()})")
            continue
        kind, view = normalise_view(r["view"])
        if kind == "lateral":
            stats.skip(LATERAL)
            continue
        if kind in ("blank", "other") and name not in lungs:
            stats.skip(f"view {r['view'].strip() or 'blank'} and no lung boxes to show the film is frontal")
            continue
        if kind in ("blank", "other"):
            stats.keep(f"view {r['view'].strip() or 'blank'} kept as '' (two lung boxes drawn: frontal)")
        stem = Path(name).stem
        # A file named by a DICOM UID gets its metadata line number instead (ids never hold UIDs).
        local = f"line{i + 2}" if looks_like_uid(stem) else name if stem in clashing else stem
        image_id = prefixed(SOURCE, local)
        path = folder / (r.get("folder", "").strip() or "images") / name
        size, problem = probe_image(path)
        if size is None:
            result.quarantine.append(quarantine_entry(image_id, path, problem))
            continue
        patient = r["patientid"].strip()
        row = base_row(SOURCE, image_id, path, prefixed(SOURCE, patient) or image_id, r["finding"], labels_for_finding(r["finding"]))
        if not patient:
            stats.keep("patientid blank: the image is its own patient")
        row.update(view=view, sex=clean_sex(r.get("sex", "")), age=clean_number(r.get("age", "")),
                   offset_days=clean_number(r.get("offset", "")), license=r.get("license", "").strip())
        if name in lungs:
            boxes, frame = lungs[name]
            if frame != size:
                boxes = scale_boxes(boxes, frame, size)
            row["lung_boxes"] = format_boxes(boxes)
        result.rows.append(row)
        by_name[name] = row
        sizes[name] = size
    _add_disease_masks(comp, sizes, by_name, ctx, stats)
    _add_v7_polygons(comp, sizes, by_name, ctx, stats)
    _add_severity(comp, by_name, stats)
    return result


def _add_disease_masks(comp: Companions, sizes: dict, by_name: dict, ctx: ImportContext, stats: SourceStats) -> None:
    if comp.segmentations is None:
        stats.notes.append("disease masks: no GeneralBlockchain segmentations found (disease_mask left unknown)")
        return
    info = ComposedMasks()
    n = 0
    for name, mask in compose_disease_masks(comp.segmentations, sizes, info):
        row = by_name[name]
        target, rel = ctx.mask_path(SOURCE, row["image_id"], "disease")
        save_mask(mask, target)
        row["disease_mask"] = rel
        n += 1
    # Only a healthy image's disease region is known empty (DESIGN.md); a sick image whose
    # annotator drew anatomy but no opacity may simply not have been outlined.
    sick = sorted(f for f in info.no_disease if by_name[f]["label_healthy"] != "1")
    stats.notes.append(
        f"disease masks: {n} composed from {comp.segmentations} (ground-glass opacity, consolidation, "
        f"pleural effusion, pneumothorax); {len(sick)} annotated without any disease instance left unknown"
        + (f" ({', '.join(sick)})" if sick else ""))
    for name, why in sorted(info.problems.items()):
        stats.notes.append(f"{name}: no disease mask, {why}")


def _add_v7_polygons(comp: Companions, sizes: dict, by_name: dict, ctx: ImportContext, stats: SourceStats) -> None:
    if comp.v7_zip is None:
        return
    problems: dict[str, str] = {}
    n = 0
    for name, mask in v7_lung_polygons(comp.v7_zip, sizes, problems):
        row = by_name[name]
        target, rel = ctx.mask_path(SOURCE, row["image_id"], "lungpoly")
        save_mask(mask, target)
        row["lung_polygon_mask"] = rel
        n += 1
    stats.notes.append(
        f"V7 lung polygons: {n} rasterised into extra column lung_polygon_mask, not lung_mask "
        f"(they cover COVID images only; as lung_mask they would tie mask shape to the label)")
    for name, why in sorted(problems.items()):
        stats.notes.append(f"{name}: no lung_polygon_mask, {why}")


def _add_severity(comp: Companions, by_name: dict, stats: SourceStats) -> None:
    if comp.severity is None:
        return
    scores = read_table(comp.severity, comment="#")
    require_columns(scores, ["filename", "geographic_mean", "opacity_mean"], comp.severity)
    n = 0
    for _, r in scores.iterrows():
        row = by_name.get(r["filename"].strip())
        if row is not None:
            row["severity_geographic"] = clean_number(r["geographic_mean"])
            row["severity_opacity"] = clean_number(r["opacity_mean"])
            n += 1
    stats.notes.append(f"severity scores: {n} images from {comp.severity} (extra columns severity_geographic, severity_opacity)")


def find(root: Path) -> list[Path]:
    found = [d for d in walk_dirs(root, max_depth=2) if is_collection(d)]
    if not found:
        raise ManifestError(f"no ieee8023 collection under {root}: expected metadata.csv with columns "
                            f"{', '.join(META_COLUMNS)} beside an images/ folder")
    return found
