"""V7 Darwin lung polygons (v7labs/covid-19-xray-dataset, `covid-only.zip`) rasterised per image.

The zip holds one JSON per image keyed by `image.original_filename`. An entry that cannot be read
(damaged zip member, not JSON, no image size, a point that is not a number) costs only its own
image's polygon, with the reason; a zip that cannot be opened costs the column, with a note.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from cmtlib.data.collections.coco import positive_int
from cmtlib.data.collections.common import CollectionResult

_ORIGINAL_NAME = re.compile(rb'"original_filename"\s*:\s*"((?:[^"\\]|\\.)*)"')
# One image's annotation is kilobytes; a member this large is not one (or is a zip bomb).
MAX_ENTRY_BYTES = 64 * 1024**2
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


def v7_lung_polygons(zip_path: Path, sizes: dict[str, tuple[int, int]], problems: dict[str, str], result: CollectionResult,
                     source: str = "ieee8023", unmatched: list[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (ieee8023 file name, bool (H, W) lung mask) from V7 Darwin JSON lung polygons.

    Only images of `sizes` are parsed (the name is read from the raw bytes first: the whole zip is
    ~50 MB of JSON). A polygon drawn on a copy of another aspect ratio cannot be placed and is
    left out; so is one whose entry cannot be read (`problems`: file name -> why). Entries of
    images not imported go to `unmatched` (for the summary's count); an entry that names no image
    is noted.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except _ZIP_ERRORS as err:
        result.note(f"{source}:*", "lung_polygon_mask", zip_path, f"{zip_path.name} cannot be opened ({err}); no V7 polygons used")
        return
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if not info.filename.endswith(".json"):
                continue
            raw = _member(zf, info, zip_path, result, source)
            match = _ORIGINAL_NAME.search(raw) if raw else None
            name = _json_string(match.group(1)) if match else None
            if raw and name is None:
                result.note(f"{source}:*", "lung_polygon_mask", f"{zip_path.name}:{info.filename}",
                            "names no image (no readable original_filename); not used")
            if name not in sizes:
                if name is not None and unmatched is not None:
                    unmatched.append(name)
                continue
            mask, why = _rasterise(raw, name, sizes[name])
            if mask is None:
                problems[name] = why
            else:
                yield name, mask


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path, result: CollectionResult, source: str) -> bytes:
    """A member's bytes, or b'' after a note (too large, or damaged)."""
    if info.file_size > MAX_ENTRY_BYTES:
        result.note(f"{source}:*", "lung_polygon_mask", f"{zip_path.name}:{info.filename}", f"{info.file_size:,} bytes, not an annotation; skipped")
        return b""
    try:
        return zf.read(info)
    except _ZIP_ERRORS as err:
        result.note(f"{source}:*", "lung_polygon_mask", f"{zip_path.name}:{info.filename}", f"cannot be read ({err}); skipped")
        return b""


def _json_string(raw: bytes) -> str | None:
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _rasterise(raw: bytes, name: str, size: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """(bool (H, W) mask, '') or (None, why) from one V7 JSON for a file of (width, height) `size`."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as err:
        return None, f"its V7 annotation is not valid JSON ({err})"
    image = doc.get("image") if isinstance(doc, dict) else None
    if not isinstance(image, dict) or image.get("original_filename") != name:
        return None, "its V7 annotation has no image entry of that name"
    frame = (positive_int(image.get("width")), positive_int(image.get("height")))
    if None in frame:
        return None, f"its V7 annotation gives size {image.get('width')!r:.20} x {image.get('height')!r:.20}, not whole numbers above 0"
    annotations = doc.get("annotations") if isinstance(doc.get("annotations"), list) else []
    polygons = [a["polygon"].get("path") for a in annotations
                if isinstance(a, dict) and a.get("name") == "Lung" and isinstance(a.get("polygon"), dict)]
    if not polygons:
        return None, "no Lung polygon in the V7 annotation"
    width, height = size
    if abs(frame[0] / frame[1] - width / height) > 0.01:
        return None, f"V7 drew on a {frame[0]}x{frame[1]} copy, the file is {width}x{height} (other aspect ratio)"
    sx, sy = width / frame[0], height / frame[1]
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for path in polygons:
        points = _points(path)
        if points is None:
            return None, "a Lung polygon holds a point that is not a pair of finite numbers"
        draw.polygon([(x * sx, y * sy) for x, y in points], fill=255)
    return np.asarray(canvas) > 0, ""


def _points(path: object) -> list[tuple[float, float]] | None:
    if not isinstance(path, list) or len(path) < 3:
        return None
    out = []
    for p in path:
        x, y = (p.get("x"), p.get("y")) if isinstance(p, dict) else (None, None)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
            return None
        out.append((float(x), float(y)))
    return out
