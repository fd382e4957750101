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

from cmtlib.errors import CmtError
from cmtlib.data.collections.coco import CocoImage, read_coco
from cmtlib.data.collections.common import (
    HEALTHY, OTHER, CollectionResult, ImportContext, SourceStats, base_row, prefixed, scale_boxes, walk_dirs,
)
from cmtlib.data.collections.rows import admit_image, row_guard
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


def _annotations(folder: Path, result: CollectionResult) -> dict[str, tuple[CocoImage, dict]]:
    """'tb/tb0005.png' -> (its COCO entry, category names). A film listed in two files, or whose
    entry cannot be read, gets a problem; a file that cannot be read is noted for the source."""
    out: dict[str, tuple[CocoImage, dict]] = {}
    for path in sorted((folder / "annotations" / "json").glob("TBX11K_*.json")):
        try:
            coco = read_coco(path)
        except CmtError as err:
            result.note(f"{SOURCE}:*", "disease_boxes", path, f"{err}; the boxes of the films it lists are unknown")
            continue
        for problem in coco.problems:
            result.note(f"{SOURCE}:*", "disease_boxes", path.name, problem)
        for name, image in coco.images.items():
            if name in out:
                out[name][0].fail(f"listed in two annotation files (also {path.name}): which boxes hold is unknown")
                continue
            out[name] = (image, coco.categories)
    return out


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    annotations = _annotations(folder, result)
    for sub in sorted(p for p in (folder / "imgs").iterdir() if p.is_dir()):
        if sub.name not in CLASSES:
            stats.skip(f"images in imgs/{sub.name}/ (not one of {', '.join(CLASSES)})", sum(1 for _ in sub.iterdir()))
            continue
        for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            with row_guard(result, SOURCE, f"imgs/{sub.name}/{path.name}") as guard:
                guard.image_id, guard.path = prefixed(SOURCE, path.stem), str(path)
                row = _row(sub.name, path, guard.image_id, annotations.get(f"{sub.name}/{path.name}"), ctx, result)
                if row is not None:
                    result.rows.append(row)
    stats.keep("images without patient ids: each image is its own patient", len(result.rows))
    return result


def _row(cls: str, path: Path, image_id: str, entry: tuple[CocoImage, dict] | None, ctx: ImportContext,
         result: CollectionResult) -> dict | None:
    finding, labels = CLASSES[cls]
    size = admit_image(result, ctx, image_id, path, None, f"imgs/{cls}/{path.name}")
    if size is None:
        return None
    row = base_row(SOURCE, image_id, path, image_id, finding, labels)
    row["_size"] = size
    if entry is None:
        if cls == "tb":
            result.stats[0].keep("tb images without boxes in the annotation files: disease_boxes unknown")
        return row
    image, names = entry
    if image.problem:
        result.note(image_id, "disease_boxes", "", f"{image.problem}; disease_boxes left unknown")
        if cls == "health":
            row["disease_boxes"] = ""  # a box file that names this film cannot also vouch it has none
        return row
    if cls == "tb" and image.boxes:
        labels_of = [names.get(c, "") for c, _ in image.boxes]
        if "" in labels_of:
            result.note(image_id, "disease_boxes", "", "a box of a category the file does not name; disease_boxes left unknown")
            return row
        row["disease_boxes"] = format_boxes(scale_boxes([b for _, b in image.boxes], image.frame, size))
        row["disease_box_labels"] = json.dumps(labels_of)
        row["finding"] = f"{finding} ({', '.join(sorted(set(labels_of)))})"
    elif image.boxes:
        result.note(image_id, "disease_boxes", "", f"the annotation file draws TB boxes on a film in imgs/{cls}/; disease_boxes left unknown")
        row["disease_boxes"] = ""
    elif cls == "tb":
        result.note(image_id, "disease_boxes", "", "listed in the annotation file without any box (annotations lost?); "
                    "disease_boxes left unknown")
    return row
