"""TBX11K (Liu et al. 2020), `source = tbx11k`: `imgs/{health,sick,tb}/` and COCO TB boxes in
`annotations/json/TBX11K_*.json`.

The folder gives the class: health -> healthy (disease region known empty), tb -> other disease
(tuberculosis; the COCO boxes become `disease_boxes`), sick -> other disease (sick but not TB;
TB boxes say nothing about its lesions, so its disease region is unknown). label_covid is 0:
DESIGN.md lists TBX11K with the pre-2020 collections. Frontal films only (view ''). TBX11K gives
no patient ids, so each image is its own patient.
"""

from __future__ import annotations

import json
from pathlib import Path

from cmtlib.data.collections.common import (
    HEALTHY, OTHER, CollectionResult, ImportContext, SourceStats, base_row, prefixed, probe_image, quarantine_entry,
    scale_boxes, walk_dirs, xywh_to_xyxy,
)
from cmtlib.data.manifest import ManifestError, format_boxes

SOURCE = "tbx11k"
CLASSES = {"health": ("No Finding", HEALTHY), "tb": ("Tuberculosis", OTHER), "sick": ("sick, not tuberculosis", OTHER)}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_collection(folder: Path) -> bool:
    return (folder / "imgs").is_dir() and any((folder / "annotations" / "json").glob("TBX11K_*.json"))


def find(root: Path) -> list[Path]:
    found = [d for d in walk_dirs(root, max_depth=2) if is_collection(d)]
    if not found:
        raise ManifestError(f"no TBX11K collection under {root}: expected imgs/ and annotations/json/TBX11K_*.json")
    return found


def _annotations(folder: Path) -> dict[str, tuple[list[list[float]], list[str], tuple[int, int]]]:
    """'tb/tb0005.png' -> (boxes [x0, y0, x1, y1], their category names, (width, height) drawn on)."""
    out: dict[str, tuple[list[list[float]], list[str], tuple[int, int]]] = {}
    for path in sorted((folder / "annotations" / "json").glob("TBX11K_*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in doc["categories"]}
        for im in doc["images"]:
            out[im["file_name"]] = ([], [], (int(im["width"]), int(im["height"])))
        by_id = {im["id"]: im["file_name"] for im in doc["images"]}
        for ann in doc["annotations"]:
            boxes, labels, _ = out[by_id[ann["image_id"]]]
            boxes.append(xywh_to_xyxy(ann["bbox"]))
            labels.append(names[ann["category_id"]])
    return out


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    annotations = _annotations(folder)
    for sub in sorted(p for p in (folder / "imgs").iterdir() if p.is_dir()):
        if sub.name not in CLASSES:
            stats.skip(f"images in imgs/{sub.name}/ (not one of {', '.join(CLASSES)})", sum(1 for _ in sub.iterdir()))
            continue
        finding, labels = CLASSES[sub.name]
        for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            image_id = prefixed(SOURCE, path.stem)
            size, problem = probe_image(path)
            if size is None:
                result.quarantine.append(quarantine_entry(image_id, path, problem))
                continue
            key = f"{sub.name}/{path.name}"
            row = base_row(SOURCE, image_id, path, image_id, finding, labels)
            if sub.name == "tb" and key in annotations and annotations[key][0]:
                boxes, names, frame = annotations[key]
                row["disease_boxes"] = format_boxes(scale_boxes(boxes, frame, size))
                row["disease_box_labels"] = json.dumps(names)
                row["finding"] = f"{finding} ({', '.join(sorted(set(names)))})"
            result.rows.append(row)
    stats.keep("images without patient ids: each image is its own patient", len(result.rows))
    return result
