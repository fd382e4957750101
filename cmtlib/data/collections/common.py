"""Rules every collection adapter shares: finding -> labels (DESIGN.md, Manifest table), view
normalisation, source-prefixed ids, number cleaning, image probing and the per-source record that
the import summary is built from.

Box coordinate frame: every `lung_boxes` / `disease_boxes` cell is written in the pixels of the
file that the row's `path` points at (x to the right, y down, [x0, y0, x1, y1]). The cache scales
boxes from that file's own pixel size, so a collection whose boxes were drawn on another copy
(NIH's 1024-px release, whose files here are 64-px thumbnails) is rescaled at import.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from cmtlib.data.manifest import COLUMNS, ManifestError, format_boxes

# (label_healthy, label_covid, label_other); '' = unknown.
HEALTHY = ("1", "0", "0")
COVID = ("0", "1", "0")
OTHER = ("0", "0", "1")
UNKNOWN = ("", "", "")
# Collections gathered before COVID-19 existed cannot hold a COVID image (DESIGN.md table); the
# same labels serve a finding that only says "not COVID".
UNKNOWN_PRE2020 = ("", "0", "")

_NORMAL = {"no finding", "no findings", "normal", "healthy"}
_UNKNOWN = {"", "todo", "unknown", "uncertain", "nan", "?", "n/a", "na"}
_COVID = re.compile(r"covid|sars-cov-2|sars cov 2|2019-ncov")
_NOT_COVID = re.compile(r"non[- ]?covid|not covid|covid(-19)? negative")


def labels_for_finding(finding: str, pre2020: bool = False) -> tuple[str, str, str]:
    """Map a collection's raw finding text to the three labels of the DESIGN.md table.

    COVID-19 wins over anything it is combined with ("COVID-19, ARDS", "Pneumonia/Viral/COVID-19");
    any other named disease is "other"; blank, todo and uncertain are unknown, except that
    pre-2020 collections know the image is not COVID-19.
    """
    text = str(finding).strip().lower()
    if text in _UNKNOWN:
        return UNKNOWN_PRE2020 if pre2020 else UNKNOWN
    if text in _NORMAL:
        return HEALTHY
    if _NOT_COVID.search(text):
        # "non-COVID" says what it is not, not whether it is healthy or another disease.
        return UNKNOWN_PRE2020
    if _COVID.search(text):
        if pre2020:
            raise ManifestError(f"finding {finding!r} names COVID-19 in a pre-2020 collection; check the source")
        return COVID
    return OTHER


# View spellings met in the collections; anything lateral is excluded, anything else unknown.
_VIEWS = {
    "pa": "PA", "ap": "AP", "ap erect": "AP", "ap upright": "AP", "erect ap": "AP",
    "ap supine": "AP Supine", "supine ap": "AP Supine", "ap_supine": "AP Supine", "supine": "AP Supine",
}
LATERAL = "lateral views (excluded)"  # the skip reason every adapter counts laterals under
_LATERAL = {"l", "ll", "rl", "lateral", "lat", "left lateral", "right lateral"}


def normalise_view(raw: str) -> tuple[str, str]:
    """Return (kind, view): kind is 'frontal' (view = PA, AP, AP Supine), 'blank' (view = ''),
    'lateral' (to exclude) or 'other' (to exclude: axial, coronal, '?', ...)."""
    text = " ".join(str(raw).strip().lower().split())
    if text == "":
        return "blank", ""
    if text in _VIEWS:
        return "frontal", _VIEWS[text]
    if text in _LATERAL:
        return "lateral", ""
    return "other", ""


# Five or more dot-separated numbers (1.2.840.113564...), or a 2.25.<UUID as integer> UID.
_UID = re.compile(r"\d+(?:\.\d+){4,}|(?:^|\D)2\.25\.\d{10,}")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def looks_like_uid(name: str) -> bool:
    """A DICOM UID (dotted digit run like 1.2.840.113564...) identifies a study; keep it out of ids."""
    return bool(_UID.search(str(name)))


def prefixed(source: str, local: str) -> str:
    local = str(local).strip()
    if local == "":
        return ""
    if looks_like_uid(local):
        raise ManifestError(f"refusing id {local!r} from {source}: it holds a DICOM UID; map a neutral id column")
    return f"{source}:{local}"


def safe_name(image_id: str) -> str:
    """A file-system-safe name for files derived from an image id (masks)."""
    return _SAFE.sub("_", image_id.replace(":", "__"))


def clean_number(text: str) -> str:
    """A numeric cell as a plain string ('5.0' -> '5'); '' when blank or not a number."""
    text = str(text).strip()
    if text == "":
        return ""
    try:
        value = float(text)
    except ValueError:
        return ""
    if value != value:  # NaN
        return ""
    return str(int(value)) if value.is_integer() else f"{value:g}"


def clean_sex(text: str) -> str:
    t = str(text).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(t, "")


def probe_image(path: Path) -> tuple[tuple[int, int] | None, str]:
    """(width, height) from the file's header, or (None, reason). The cache decodes fully later;
    this only catches files that are missing or not images at all, before they enter a manifest."""
    if not path.is_file():
        return None, "file not found"
    if path.suffix.lower() in (".dcm", ".dicom"):
        try:
            import pydicom
        except ImportError:
            return None, "DICOM file but pydicom is not installed (pip install 'cmtlib[data]')"
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return (int(ds.Columns), int(ds.Rows)), ""
        except (pydicom.errors.InvalidDicomError, AttributeError, OSError) as err:
            return None, f"unreadable DICOM: {err}"
    try:
        with Image.open(path) as im:
            return im.size, ""
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return None, f"unreadable image: {err}"


def scale_boxes(boxes: list[list[float]], frame: tuple[int, int], size: tuple[int, int]) -> list[list[float]]:
    """Boxes drawn on a (width, height) `frame` moved to a file of (width, height) `size`."""
    sx, sy = size[0] / frame[0], size[1] / frame[1]
    return [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]


def xywh_to_xyxy(box: list[float]) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


@dataclass
class SourceStats:
    """What one collection contributed, and what it left out and why (for the summary)."""

    source: str
    folder: Path
    skipped: Counter = field(default_factory=Counter)   # reason -> rows left out, not quarantined
    kept: Counter = field(default_factory=Counter)      # reason -> rows kept with a caveat
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] += n

    def keep(self, reason: str, n: int = 1) -> None:
        if n:
            self.kept[reason] += n


@dataclass
class CollectionResult:
    """Rows (manifest columns, plus extras), quarantine entries and stats of one or more sources."""

    rows: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    stats: list[SourceStats] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        for col in COLUMNS:
            if col not in df.columns:
                df[col] = ""
        return df.fillna("").astype(str)

    def extend(self, other: "CollectionResult") -> None:
        self.rows += other.rows
        self.quarantine += other.quarantine
        self.stats += other.stats


def base_row(source: str, image_id: str, path: Path, patient_id: str, finding: str, labels: tuple[str, str, str]) -> dict:
    """A manifest row with the label columns set; a healthy image's disease region is known empty."""
    row = {c: "" for c in COLUMNS}
    row.update(image_id=image_id, path=str(path), patient_id=patient_id, source=source, finding=str(finding).strip())
    row["label_healthy"], row["label_covid"], row["label_other"] = labels
    if labels[0] == "1":
        row["disease_boxes"] = format_boxes([])
    return row


def quarantine_entry(image_id: str, path: Path | str, reason: str) -> dict:
    return {"image_id": image_id, "path": str(path), "reason": reason}


def read_table(path: Path, encodings: tuple[str, ...] = ("utf-8",), **kwargs) -> pd.DataFrame:
    """A metadata CSV with every cell a string ('' = blank). Names the encoding to use on failure."""
    last: UnicodeDecodeError | None = None
    for enc in encodings:
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding=enc, **kwargs)
        except UnicodeDecodeError as err:
            last = err
    raise ManifestError(f"{path} is not {' or '.join(encodings)} text ({last}); re-save it as UTF-8")


def require_columns(df: pd.DataFrame, columns: list[str] | tuple[str, ...], where: Path, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ManifestError(f"{where} lacks column(s) {', '.join(missing)} (it has: {', '.join(map(str, df.columns))}){hint}")


def walk_dirs(root: Path, max_depth: int = 3) -> list[Path]:
    """root and the folders below it, breadth first, hidden folders left out, sorted for stable ids."""
    out, level = [root], [root]
    for _ in range(max_depth):
        level = sorted(d for p in level for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        out += level
    return out


@dataclass
class ImportContext:
    """Where derived files go: masks composed at import live in `<out stem>_masks/` beside the
    manifest, referenced relative to the manifest's folder (DESIGN.md: path relative to it)."""

    out: Path
    uncertain: str = "unknown"

    def mask_path(self, source: str, image_id: str, kind: str) -> tuple[Path, str]:
        rel = f"{self.out.stem}_masks/{source}/{safe_name(image_id)}_{kind}.png"
        return self.out.parent / rel, rel
