"""Value rules shared by the importers, which blank a failing field with a note, and
`cmt data check`, which reports it: text normalisation, age and offset ranges, box geometry, image
header size, and one file listed twice with different labels.

Ranges: age 0-120 years; offset_days (days since symptom onset or admission) -365 to 3,650: a
film a year before onset or ten years after is a typing error, not a follow-up. Boxes are
[x0, y0, x1, y1] in the image file's pixels: finite numbers, x0 < x1 and y0 < y1, and inside the
image give or take BOX_TOLERANCE pixels (annotation tools round, and clip to the canvas or not).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import unicodedata
import warnings
from collections import defaultdict
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cmtlib.data.io import MAX_PIXELS

AGE_RANGE = (0.0, 120.0)
OFFSET_RANGE = (-365.0, 3650.0)
BOX_TOLERANCE = 4.0
LABELS = ("label_healthy", "label_covid", "label_other")
# What Pillow raises on a malformed file: it parses bytes with struct and indexes tables.
PIL_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError,
                  Image.DecompressionBombError)
_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*(y|yr|yrs|year|years|m|mo|months|w|weeks|d|days)?$")
_AGE_UNIT = {"y": 1, "yr": 1, "yrs": 1, "year": 1, "years": 1, "m": 12, "mo": 12, "months": 12,
             "w": 52.18, "weeks": 52.18, "d": 365.25, "days": 365.25}


def normalise_text(text: object) -> str:
    """Text to compare: Unicode NFKC (a non-breaking or full-width space is a space, ＣＯＶＩＤ is
    covid), invisible format and control characters (a zero-width space, a byte-order mark) a space
    too, never nothing: deleting one would join words ("No<ZWSP>finding" is not "nofinding"). Any
    run of spaces is one space; case folded."""
    text = unicodedata.normalize("NFKC", str(text))
    text = "".join(" " if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)
    return " ".join(text.split()).casefold()


def parse_number(raw: object) -> tuple[float | None, str]:
    """(value, '') for a finite number; (None, '') when blank; (None, why) otherwise."""
    text = normalise_text(raw)
    if text == "":
        return None, ""
    try:
        value = float(text)
    except ValueError:
        return None, f"{str(raw).strip()!r} is not a number"
    if not math.isfinite(value):
        return None, f"{str(raw).strip()!r} is not a finite number"
    return value, ""


def format_number(value: float) -> str:
    """5.0 -> '5', 2.5 -> '2.5'."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _in_range(value: float | None, problem: str, bounds: tuple[float, float], what: str) -> tuple[str, str]:
    if value is None:
        return "", problem
    if not bounds[0] <= value <= bounds[1]:
        return "", f"{what} {format_number(value)} is outside {format_number(bounds[0])} to {format_number(bounds[1])}"
    return format_number(value), ""


def clean_age(raw: object) -> tuple[str, str]:
    """(age cell in years, '') or ('', why). Accepts '57', '57.0', '057Y', '6 months'."""
    match = _AGE.match(normalise_text(raw))
    if match:
        years = float(match.group(1)) / _AGE_UNIT[match.group(2) or "y"]
        return _in_range(round(years, 2), "", AGE_RANGE, "age (years)")
    value, problem = parse_number(raw)
    return _in_range(value, problem and f"age {problem}", AGE_RANGE, "age (years)")


def clean_offset(raw: object) -> tuple[str, str]:
    """(offset_days cell, '') or ('', why)."""
    value, problem = parse_number(raw)
    return _in_range(value, problem and f"offset {problem}", OFFSET_RANGE, "offset_days")


def box_problem(box: object, size: tuple[int, int] | None = None) -> str:
    """Why one [x0, y0, x1, y1] box cannot be used in an image of (width, height), or ''."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return f"{_short(box)} is not a box [x0, y0, x1, y1]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        return f"box {_short(box)} holds a value that is not a number"
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return f"box {_short(box)} holds NaN or infinity"
    if x1 <= x0 or y1 <= y0:
        what = "zero size" if (x1 == x0 or y1 == y0) else "inverted (x1 < x0 or y1 < y0)"
        return f"box {_short(box)} is {what}; boxes are [x0, y0, x1, y1], not [x, y, w, h]"
    if size is not None:
        w, h = size
        t = BOX_TOLERANCE
        if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
            return f"box {_short(box)} lies outside the {w}x{h} px image"
    return ""


def boxes_problem(cell: str, size: tuple[int, int] | None = None) -> str:
    """Why a lung_boxes / disease_boxes cell cannot be used, or '' (blank = unknown is fine)."""
    if cell == "":
        return ""
    try:
        boxes = json.loads(cell)
    except (ValueError, RecursionError):
        return f"{_short(cell)} is not JSON; expected a list of [x0, y0, x1, y1]"
    if not isinstance(boxes, list):
        return f"{_short(cell)} is not a list of boxes [[x0, y0, x1, y1], ...]"
    if len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
        return f"{_short(cell)} is one flat box; write a list of boxes: [{cell}]"
    for box in boxes:
        problem = box_problem(box, size)
        if problem:
            return problem
    return ""


def _short(value: object, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=True)
        return True
    except (TypeError, ValueError):
        return False


def is_file(path: str | os.PathLike) -> bool:
    """Path.is_file() for a path taken from a metadata cell: a name too long, or otherwise one the
    system refuses, is not a file here rather than an exception."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # ENAMETOOLONG, EACCES on a parent; ValueError: an embedded NUL
        return False


def probe_image(path: Path) -> tuple[tuple[int, int] | None, str]:
    """(width, height) from the file's header, or (None, why). Nothing is decoded (the cache does
    that); this refuses files that are missing, not images, or whose header claims more pixels
    than the cache's limit (a decompression bomb), before they enter a manifest."""
    path = Path(path)
    if not is_file(path):
        return None, "file not found"
    if path.suffix.lower() in (".dcm", ".dicom"):
        size, problem = _dicom_size(path)
    else:
        try:
            with warnings.catch_warnings():
                # The size is checked against the cache's own limit just below.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    size, problem = im.size, ""
        except Image.DecompressionBombError:
            return None, (f"image header claims more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (the cache's limit is "
                          f"{MAX_PIXELS:,}): refused as a possible decompression bomb; downscale it first if it is genuine")
        except PIL_ERRORS as err:
            return None, f"unreadable image: {err}"
    if size is None:
        return None, problem
    w, h = size
    if w <= 0 or h <= 0:
        return None, f"image header says {w}x{h} px; the file is damaged"
    if w * h > MAX_PIXELS:
        return None, (f"image header claims {w}x{h} px ({w * h:,} pixels, above the {MAX_PIXELS:,} limit): "
                      "refused as a possible decompression bomb; downscale it first if it is genuine")
    return (int(w), int(h)), ""


def _dicom_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    try:
        import pydicom
    except ImportError:
        return None, "DICOM file but pydicom is not installed (pip install 'cmtlib[data]')"
    try:
        with warnings.catch_warnings():
            # A damaged header makes pydicom warn per element; the refusal below says it once.
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        return (int(ds.Columns), int(ds.Rows)), ""
    except (pydicom.errors.InvalidDicomError, pydicom.errors.BytesLengthException, AttributeError, OSError, ValueError,
            TypeError, KeyError, IndexError, EOFError, NotImplementedError, struct.error) as err:
        # What pydicom raises on damaged headers (NotImplementedError: an unknown value representation).
        return None, f"unreadable DICOM: {type(err).__name__}: {err}"


def same_path_groups(paths: list[str]) -> list[list[int]]:
    """Indices of entries naming one file (compared after normalising '..' and '.'), in groups of 2+."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        if p:
            groups[os.path.normpath(os.path.abspath(p))].append(i)
    return [g for g in groups.values() if len(g) > 1]


def same_content_groups(paths: list[str]) -> list[list[int]]:
    """Indices of distinct files with byte-identical content, in groups of 2+. Only files of equal
    size are hashed, so this costs a stat per file and a read of the few that collide."""
    by_size: dict[int, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for i, p in enumerate(paths):
        key = os.path.normpath(os.path.abspath(p)) if p else ""
        if not key or key in seen:
            continue
        seen.add(key)
        try:
            by_size[os.stat(key).st_size].append(i)
        except OSError:
            continue
    groups: dict[str, list[int]] = defaultdict(list)
    for members in by_size.values():
        if len(members) < 2:
            continue
        # The first 64 KB tell different films apart; only files alike there are read whole.
        heads: dict[bytes, list[int]] = defaultdict(list)
        for i in members:
            heads[_digest(paths[i], 1 << 16)].append(i)
        for head, alike in heads.items():
            if head and len(alike) > 1:
                for i in alike:
                    groups[_digest(paths[i]).hex()].append(i)
    groups.pop("", None)  # files that could not be read
    return [g for g in groups.values() if len(g) > 1]


def file_digest(path: str | os.PathLike) -> bytes:
    """sha256 of a whole file; b'' when it cannot be read."""
    return _digest(str(path))


def _digest(path: str, limit: int = -1) -> bytes:
    """sha256 of a file's first `limit` bytes (all when -1); b'' when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(limit)).digest()
    except OSError:
        return b""
