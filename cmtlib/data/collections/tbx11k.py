"""TBX11K (Liu et al. 2020), `source = tbx11k`: `imgs/{health,sick,tb}/` and COCO TB boxes in
`annotations/json/TBX11K_*.json`.

The folder gives the class: health -> healthy (disease region known empty), tb -> other disease
(tuberculosis; the COCO boxes become `disease_boxes`), sick -> other disease (sick but not TB;
TB boxes say nothing about its lesions, so its disease region is unknown). label_covid is 0:
DESIGN.md lists TBX11K with the pre-2020 collections. Frontal films only (view ''). TBX11K gives
no patient ids, so each image is its own patient.

The folder names the class, so nothing else may: a folder under imgs/ that is not health, sick or
tb is not imported (noted); one image name in two class folders is quarantined (which class is
unknown); copies of one name in one folder follow rows.same_name_copies. Every annotation entry
is used or accounted for: one that leaves the collection's folder, or names a file that sits in
another class folder, is noted; one whose image is not in this copy is counted in the summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from cmtlib.errors import CmtError
from cmtlib.data.collections.coco import CocoImage, leaves, read_coco
from cmtlib.data.collections.common import (
    CollectionResult, ImportContext, SourceStats, base_row, place_boxes, prefixed, quarantine_entry,
    size_tag, walk_dirs,
)
from cmtlib.data.collections.registry import MARKED, NO, CollectionKind, register
from cmtlib.data.collections.rows import row_guard, same_name_copies
from cmtlib.data.findings import HEALTHY, OTHER
from cmtlib.data.manifest import DUPLICATE_GROUP, ManifestError, format_boxes

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
    by_stem = _images(folder, result)
    used: set[str] = set()
    for stem, copies in sorted(by_stem.items()):
        where = ", ".join(f"imgs/{cls}/{path.name}" for cls, path in copies)
        with row_guard(result, SOURCE, where) as guard:
            guard.image_id, guard.path = prefixed(SOURCE, stem), str(copies[0][1])
            keys = [f"{cls}/{path.name}" for cls, path in copies]
            used.update(keys)  # the film's fate (imported, quarantined) accounts for its entry
            classes = sorted({cls for cls, _ in copies})
            if len(classes) > 1:
                for _, path in copies:
                    result.quarantine.append(quarantine_entry(guard.image_id, path, (
                        f"one image name in {' and '.join(f'imgs/{c}/' for c in classes)}: the folder is the class, and which "
                        "one is right is unknown; keep one copy")))
                continue
            cls = classes[0]
            entry = next((annotations[k] for k in keys if k in annotations), None)
            kept = same_name_copies(result, ctx, guard.image_id, [p for _, p in copies], None, where)
            for path, size in kept:
                image_id = prefixed(SOURCE, f"{stem}_{size_tag(size)}") if len(kept) > 1 else guard.image_id
                row = _row(cls, path, image_id, size, entry, result)
                if len(kept) > 1:
                    row[DUPLICATE_GROUP] = guard.image_id
                result.rows.append(row)
    _unmatched(annotations, used, by_stem, result)
    stats.keep("images without patient ids: each image is its own patient", len(result.rows))
    return result


def _images(folder: Path, result: CollectionResult) -> dict[str, list[tuple[str, Path]]]:
    """image stem -> [(class folder, file)]; folders and files that are not imported are counted and noted."""
    stats = result.stats[0]
    by_stem: dict[str, list[tuple[str, Path]]] = {}
    for sub in sorted(p for p in (folder / "imgs").iterdir() if p.is_dir()):
        files = sorted(sub.iterdir())
        if sub.name not in CLASSES:
            stats.skip(f"images in imgs/{sub.name}/ (not one of {', '.join(CLASSES)})", len(files))
            result.note(f"{SOURCE}:*", "finding", f"imgs/{sub.name}/", f"{len(files)} files in a folder that is not one of "
                        f"{', '.join(CLASSES)}: the folder is the class, so they are not imported")
            continue
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        stats.skip(f"files in imgs/{sub.name}/ that are not PNG or JPEG images", len(files) - len(images))
        for path in images:
            by_stem.setdefault(path.stem, []).append((sub.name, path))
    return by_stem


def _unmatched(annotations: dict, used: set[str], by_stem: dict[str, list[tuple[str, Path]]], result: CollectionResult) -> None:
    """Annotation entries no imported film took (class docstring): noted, or counted when their
    image is simply not in this copy."""
    absent = 0
    for key in sorted(set(annotations) - used):
        elsewhere = [f"imgs/{c}/{p.name}" for c, p in by_stem.get(Path(key).stem, []) if p.name == Path(key).name]
        if leaves(key):
            result.note(f"{SOURCE}:*", "disease_boxes", key, "an annotation entry whose file_name leaves the collection's "
                        "folder: no film is matched to it and its boxes are not used")
        elif elsewhere:
            result.note(prefixed(SOURCE, Path(key).stem), "disease_boxes", key, f"the annotation names {key}, but the file is "
                        f"{', '.join(elsewhere)}: the boxes are not used (the folder is the class)")
        else:
            absent += 1
    if absent:
        result.stats[0].notes.append(f"disease boxes: {absent} annotation entries name images not in this copy (not used)")


def _row(cls: str, path: Path, image_id: str, size: tuple[int, int], entry: tuple[CocoImage, dict] | None,
         result: CollectionResult) -> dict:
    finding, labels = CLASSES[cls]
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
        placed, why = place_boxes([b for _, b in image.boxes], image.frame, size)
        if placed is None:
            result.note(image_id, "disease_boxes", "", f"{why}; disease_boxes left unknown")
            return row
        row["disease_boxes"] = format_boxes(placed)
        row["disease_box_labels"] = json.dumps(labels_of)
        row["finding"] = f"{finding} ({', '.join(sorted(set(labels_of)))})"
    elif image.boxes:
        result.note(image_id, "disease_boxes", "", f"the annotation file draws TB boxes on a film in imgs/{cls}/; disease_boxes left unknown")
        row["disease_boxes"] = ""
    elif cls == "tb":
        result.note(image_id, "disease_boxes", "", "listed in the annotation file without any box (annotations lost?); "
                    "disease_boxes left unknown")
    return row


def detect(folder: Path) -> int:
    return MARKED if is_collection(folder) else NO


register(CollectionKind("tbx11k", find, read, detect, sources={SOURCE: "TBX11K tuberculosis collection (pre-2020 films)"},
                        help="TBX11K: imgs/{health,sick,tb}/ and annotations/json/TBX11K_*.json"))
