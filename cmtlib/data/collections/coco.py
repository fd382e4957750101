"""COCO box files (GeneralBlockchain lung boxes, TBX11K TB boxes) read entry by entry.

A published COCO file can hold an image entry without a usable id or size, two images sharing one
id, an annotation without `category_id`, a bbox that is null, empty, text or of zero size. None of
these may move a box to another film or stop the import:

- an image whose entry or one of whose annotations cannot be read gets `problem` set: the caller
  leaves that film's whole box field unknown with the reason (one lung box of two would teach
  "background" where the other lung is);
- two image entries sharing an id make every annotation of that id unattributable: all the
  films involved get a problem, never a guess;
- an annotation that names no image of the file cannot belong to any film: it is listed in
  `CocoFile.problems` for a source-wide note.

Images are keyed by their `file_name` as a normalised relative path (`file_key`: './a.png' is
'a.png'); an entry whose name leaves the collection's folder (`leaves`) matches no film, and the
importer notes it rather than dropping it unseen.
"""

from __future__ import annotations

import math
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cmtlib.errors import DataFileError
from cmtlib.data.tables import read_json


@dataclass
class CocoImage:
    """One film's entry: the (width, height) its boxes were drawn on, and (category, [x0, y0, x1, y1])."""

    file_name: str
    frame: tuple[int, int] | None = None
    boxes: list[tuple[object, list[float]]] = field(default_factory=list)
    problem: str = ""  # non-empty: the film's boxes are unknown, and why

    def fail(self, why: str) -> None:
        self.problem = f"{self.problem}; {why}" if self.problem else why


@dataclass
class CocoFile:
    images: dict[str, CocoImage] = field(default_factory=dict)  # by file_name
    categories: dict[object, str] = field(default_factory=dict)  # id -> name
    problems: list[str] = field(default_factory=list)            # entries that belong to no film


def file_key(name: str) -> str:
    """A COCO file_name as a normalised relative posix path ('./tb/../tb/x.png' -> 'tb/x.png')."""
    return posixpath.normpath(name.strip().replace("\\", "/"))


def leaves(name: str) -> bool:
    """Whether a file name (file_key) points outside the folder it is read from: '../x.png', '/x.png'."""
    return name == ".." or name.startswith(("../", "/")) or (len(name) > 1 and name[1] == ":")


def key(value: object) -> object:
    """An id as COCO writers spell it (5, 5.0, "5" are one id); None when unusable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return int(text) if text.lstrip("-").isdigit() else text
    return None


def positive_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if value > 0 and float(value).is_integer() else None


def xywh(value: object) -> tuple[list[float] | None, str]:
    """[x0, y0, x1, y1] from a COCO bbox [x, y, w, h], or (None, why)."""
    if not isinstance(value, list) or len(value) != 4:
        return None, f"bbox {value!r:.60} is not [x, y, w, h]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None, f"bbox {value!r:.60} holds a value that is not a finite number"
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        return None, f"bbox {value!r:.60} has no area (width or height <= 0)"
    return [x, y, x + w, y + h], ""


def read_coco(path: Path) -> CocoFile:
    """Parse a COCO file entry by entry (module docstring).

    Raises:
        DataFileError: not JSON, or no `images` / `annotations` lists (then no box of the file is usable).
    """
    doc, warning = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        raise DataFileError(f"{path} is not a COCO file: expected an object with 'images' and 'annotations' lists")
    out = CocoFile()
    if warning:
        out.problems.append(warning)
    out.categories = _categories(doc.get("categories"), out)
    by_id = _images(doc["images"], path, out)
    for k, ann in enumerate(doc["annotations"]):
        _annotation(k, ann, by_id, out)
    return out


def _categories(entries: object, out: CocoFile) -> dict[object, str]:
    names: dict[object, set[str]] = defaultdict(set)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and key(entry.get("id")) is not None:
            names[key(entry.get("id"))].add(str(entry.get("name", "")))
    clash = sorted(str(k) for k, v in names.items() if len(v) > 1)
    if clash:
        out.problems.append(f"category id(s) {', '.join(clash)} carry two names: their boxes are left unknown")
    return {k: next(iter(v)) for k, v in names.items() if len(v) == 1}


def _images(entries: list, path: Path, out: CocoFile) -> dict[object, list[CocoImage]]:
    """Image entries by id; an id or file name met twice makes every film involved unknown."""
    by_id: dict[object, list[CocoImage]] = defaultdict(list)
    for k, entry in enumerate(entries):
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or "\ufffd" in name:
            out.problems.append(f"images[{k}] has no usable file_name ({name!r:.60}): the boxes drawn on it are ignored")
            continue
        name = file_key(name)
        image = CocoImage(name)
        if name in out.images:
            out.images[name].fail(f"listed twice in {path.name}: which entry holds its boxes is unknown")
            image = out.images[name]
        out.images[name] = image
        width, height = positive_int(entry.get("width")), positive_int(entry.get("height"))
        if width is None or height is None:
            image.fail(f"{path.name} gives it width {entry.get('width')!r:.20} and height {entry.get('height')!r:.20}, "
                       "not whole numbers above 0: its boxes cannot be placed")
        elif image.frame not in (None, (width, height)):
            image.fail(f"{path.name} gives it two sizes")
        else:
            image.frame = (width, height)
        image_id = key(entry.get("id"))
        if image_id is None:
            image.fail(f"its entry in {path.name} has no usable id, so its annotations cannot be found")
            continue
        if all(im is not image for im in by_id[image_id]):
            by_id[image_id].append(image)
    for image_id, shared in by_id.items():
        if len(shared) > 1:
            names = ", ".join(im.file_name for im in shared)
            for im in shared:
                im.fail(f"COCO image id {image_id} is shared by {names}: whose boxes are whose is unknown")
    return by_id


def _annotation(k: int, ann: object, by_id: dict[object, list[CocoImage]], out: CocoFile) -> None:
    if not isinstance(ann, dict):
        out.problems.append(f"annotations[{k}] is not an object: ignored (it names no film)")
        return
    targets = by_id.get(key(ann.get("image_id")), [])
    if not targets:
        out.problems.append(f"annotations[{k}] (id {ann.get('id')!r:.20}) names image_id {ann.get('image_id')!r:.20}, "
                            "which no image entry has: ignored")
        return
    category = key(ann.get("category_id"))
    box, why = xywh(ann.get("bbox"))
    if category is None:
        why = f"an annotation (id {ann.get('id')!r:.20}) has no usable category_id ({ann.get('category_id')!r:.20})"
    elif box is None:
        why = f"an annotation (id {ann.get('id')!r:.20}): {why}"
    for image in targets:
        if why:
            image.fail(why)
        else:
            image.boxes.append((category, box))
