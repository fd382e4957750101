"""Rules every collection adapter shares: view normalisation, source-prefixed ids, number
cleaning, the import's options (ImportContext, with the finding vocabulary that turns finding text
into labels: cmtlib/data/findings.py), and the per-source record that the import summary is built
from. Per-row reading (bad lines, paths, image headers) is in rows.py; value
rules shared with `cmt data check` are in cmtlib/data/rules.py.

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

# Finding text is read by cmtlib.data.findings; importers reach the vocabulary through their
# ImportContext (the user's --finding entries added).
from cmtlib.data.findings import BUILT_IN, Vocabulary
from cmtlib.data.manifest import COLUMNS, ManifestError, format_boxes
# probe_image lives with the rules `cmt data check` shares; importers reach it through here.
from cmtlib.data.rules import format_number, normalise_text, parse_number, probe_image  # noqa: F401

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
    text = normalise_text(raw).replace("_", " ")
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
    """A numeric cell as a plain string ('5.0' -> '5'); '' when blank, not a number or not finite.
    Ages and offsets are cleaned with range checks where rows are finalised (validate.py)."""
    value, _ = parse_number(text)
    return "" if value is None else format_number(value)


def clean_sex(text: str) -> str:
    return {"m": "M", "male": "M", "f": "F", "female": "F"}.get(normalise_text(text), "")


def scale_boxes(boxes: list[list[float]], frame: tuple[int, int], size: tuple[int, int]) -> list[list[float]]:
    """Boxes drawn on a (width, height) `frame` moved to a file of (width, height) `size`."""
    sx, sy = size[0] / frame[0], size[1] / frame[1]
    return [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]


ASPECT_TOLERANCE = 0.01  # relative; annotation tools and resizers round a side by a pixel


def place_boxes(boxes: list[list[float]], frame: tuple[int, int], size: tuple[int, int]) -> tuple[list[list[float]] | None, str]:
    """(boxes in the file's pixels, '') for boxes drawn on a (width, height) `frame`, or (None, why)
    when the file has another aspect ratio: the annotation then contradicts the file (a crop, or
    another picture), and stretching the boxes would place them on the wrong anatomy."""
    if tuple(frame) == tuple(size):
        return boxes, ""
    if abs((frame[0] / frame[1]) / (size[0] / size[1]) - 1) > ASPECT_TOLERANCE:
        return None, (f"the annotation was drawn on a {frame[0]}x{frame[1]} px image and the file is {size[0]}x{size[1]} px "
                      "(another aspect ratio: a crop or another picture)")
    return scale_boxes(boxes, frame, size), ""


def size_tag(size: tuple[int, int]) -> str:
    """'64px' for a 64 x 64 file, '640x480px' otherwise: tells apart the copies of one image at
    several sizes (`<id>_<tag>`, one duplicate group)."""
    return f"{size[0]}px" if size[0] == size[1] else f"{size[0]}x{size[1]}px"


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
    unrecognised: Counter = field(default_factory=Counter)  # finding text the vocabulary does not know -> rows

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] += n

    def keep(self, reason: str, n: int = 1) -> None:
        if n:
            self.kept[reason] += n


@dataclass
class CollectionResult:
    """Rows (manifest columns, plus extras), quarantine entries, field notes and stats of one or
    more sources. A row may carry private keys (`_size`: the file's (width, height); `_where`: the
    metadata line it came from) that validate.py reads and `frame()` drops."""

    rows: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    stats: list[SourceStats] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)  # NOTES_COLUMNS: a field left unknown and why

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame([{k: v for k, v in row.items() if not k.startswith("_")} for row in self.rows])
        for col in COLUMNS:
            if col not in df.columns:
                df[col] = ""
        return df.fillna("").astype(str)

    def extend(self, other: "CollectionResult") -> None:
        self.rows += other.rows
        self.quarantine += other.quarantine
        self.stats += other.stats
        self.notes += other.notes

    def note(self, image_id: str, column: str, value: object, reason: str) -> None:
        """Record that `column` of `image_id` was left unknown (or the row dropped) and why.
        image_id '<source>:*' stands for every image of that source."""
        self.notes.append({"image_id": image_id, "column": column, "value": str(value)[:200], "reason": reason})

    def source_stats(self, source: str) -> SourceStats | None:
        return next((s for s in self.stats if s.source == source), None)


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


def require_columns(df: pd.DataFrame, columns: list[str] | tuple[str, ...], where: Path, hint: str = "") -> None:
    """A clear error for a required column that is missing, or present twice (which one holds the
    truth would be a guess)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        if len(df.columns) == 1 and any(sep in str(df.columns[0]) for sep in (";", "\t", "|")):
            hint += "; its header is one column: is it separated by ';' or tabs instead of commas? Save it as a comma-separated CSV"
        raise ManifestError(f"{where} lacks column(s) {', '.join(missing)} (it has: {', '.join(map(str, df.columns))}){hint}")
    twice = [c for c in columns if f"{c}.1" in df.columns]
    if twice:
        raise ManifestError(f"{where} has column(s) {', '.join(twice)} more than once; which one holds the values is unknown, "
                            "keep one")


def walk_dirs(root: Path, max_depth: int = 3) -> list[Path]:
    """root and the folders below it, breadth first, hidden folders left out, sorted for stable ids.
    A folder that cannot be listed (permissions) is passed over."""
    out, level = [root], [root]
    for _ in range(max_depth):
        level = sorted(d for p in level for d in _subdirs(p))
        out += level
    return out


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return []


def header_of(path: Path, encoding: str = "utf-8") -> set[str]:
    """The column names on a CSV's first line (stripped), or an empty set when it cannot be read:
    collection detection must not stop at a file it only peeks into."""
    try:
        with path.open(encoding=encoding, errors="replace") as f:
            line = f.readline(1 << 16)
    except OSError:
        return set()
    names = {c.strip().strip('"').lstrip("\ufeff") for c in line.strip().split(",")}
    return names - {""}


@dataclass
class ImportContext:
    """An import's options, read by the kinds that declare them (registry.OPTIONS), and where
    derived files go: masks composed at import live in `<out stem>_masks/` beside the manifest,
    referenced relative to the manifest's folder (DESIGN.md: path relative to it).

    `allow_outside_root`: image paths may leave the collection's folder (--allow-outside-root);
    otherwise such a row is quarantined. `vocabulary`: the finding vocabulary with the user's
    --finding entries. `column_map`, `constants`, `source`: the csv kind's --map, --const, --source.
    `uncertain`: how CheXpert's -1 reads (unknown, positive, negative)."""

    out: Path
    uncertain: str = "unknown"
    allow_outside_root: bool = False
    vocabulary: Vocabulary = field(default_factory=lambda: BUILT_IN)
    column_map: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def labels(self, finding: str, pre2020: bool = False) -> tuple[str, str, str]:
        """The labels a finding gives (findings.Vocabulary.labels); unknown when not recognised."""
        return self.vocabulary.labels(finding, pre2020)

    def mask_path(self, source: str, image_id: str, kind: str) -> tuple[Path, str]:
        rel = f"{self.out.stem}_masks/{source}/{safe_name(image_id)}_{kind}.png"
        return self.out.parent / rel, rel
