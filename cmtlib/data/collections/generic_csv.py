"""Any other collection, through a CSV and a column mapping (`cmt data import csv`).

ROOT is the CSV file, or a folder holding exactly one CSV (or name it with `--map csv=FILE`).
Each `--map COLUMN=YOURS` says which of your CSV's columns fills a manifest column:

    cmt data import csv /data/mycxr/labels.csv --out /data/mycxr/manifest.csv --source mycxr \\
        --map path=File --map finding=Diagnosis --map patient_id=Subject --map view=Projection

Manifest columns you can map: image_id, path (required), patient_id, view, sex, age,
offset_days, finding, license, label_healthy, label_covid, label_other, lung_mask, disease_mask,
lung_boxes, disease_boxes, split. At least `finding` or one label column is required.
Options given the same way (not columns):

    csv=FILE          the CSV inside a ROOT folder
    images=FOLDER     folder that relative image / mask paths start from (default: the CSV's)
    encoding=NAME     the CSV's text encoding (default utf-8; e.g. latin-1)
    pre2020=yes       images taken before COVID-19: label_covid 0 where otherwise unknown

Instead of a column, `--map` may give a template of your columns in braces: with a CSV that lists
ids rather than files, `--map path=png/{image_id}.png` (where `image_id` is one of your CSV's
columns) builds each path. `--const COLUMN=VALUE` sets a manifest column to one value for every row,
e.g. `--const finding=COVID-19` for a collection of one class.

`--source NAME` (required) prefixes every id (`NAME:...`). Labels come from `finding` through the
finding vocabulary (cmtlib.data.findings; a text it does not recognise gives no label, with a note;
`--finding TEXT=CLASS` adds one); a mapped label column (1/0/blank; also yes/no, true/false;
-1 = unknown) overrides it where it is not blank (a value that is none of these leaves that label
unknown, with a note). A `--const` finding or label the rules do not recognise is refused before
anything is read: it would stand for every row. A row with a blank path is quarantined. Views are
normalised (AP erect -> AP) and laterals left out and counted; a blank view is kept as '' (map a
view column if the collection holds laterals). Without image_id the id is the
image's path below the image folder (or the CSV line number when the file name is a DICOM UID);
without patient_id each image is its own patient. Boxes are JSON lists of [x0, y0, x1, y1] in the
image file's pixels. A relative path that leads out of the image folder ('../') is quarantined
unless `--allow-outside-root` says it is meant; absolute paths are taken as they are (DESIGN.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cmtlib.errors import ConfigError, MissingInputError
from cmtlib.data.collections.common import (
    CollectionResult, ImportContext, SourceStats, base_row, looks_like_uid, prefixed,
)
from cmtlib.data.collections.registry import CollectionKind, register
from cmtlib.data.collections.rows import (
    RowError, admit_image, cell, frontal_view, inside, line_of, note_damaged, quarantine_bad_lines, row_guard,
)
from cmtlib.data.manifest import COLUMNS, LABEL_COLUMNS, ManifestError, format_boxes, parse_boxes
from cmtlib.data.rules import is_file, normalise_text
from cmtlib.data.tables import Table, read_table

MAPPABLE = tuple(c for c in COLUMNS if c != "source")
CONSTANT = tuple(c for c in MAPPABLE if c not in ("image_id", "path"))  # one value for every row
OPTIONS = ("csv", "images", "encoding", "pre2020")
# Manifest columns whose CSV columns decide a row: a byte that cannot be read there costs the row.
CRITICAL = ("path", "image_id", "finding", "label_healthy", "label_covid", "label_other", "patient_id", "view")
_SOURCE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_YES = {"1", "1.0", "true", "yes", "y", "positive", "pos"}
_NO = {"0", "0.0", "false", "no", "n", "negative", "neg"}
_BLANK = {"", "nan", "-1", "-1.0", "uncertain", "unknown"}


def _csv_file(root: Path, name: str) -> Path:
    if root.is_file():
        return root
    if name:
        if not (root / name).is_file():
            raise MissingInputError(f"--map csv={name}: no such file in {root}")
        return root / name
    found = sorted(root.glob("*.csv")) + sorted(root.glob("*.csv.gz"))
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise ManifestError(f"{root} holds {len(found)} CSV files ({listed}); pass the CSV itself as ROOT or --map csv=FILE")
    return found[0]


def _check_map(column_map: dict[str, str], constants: dict[str, str], source: str) -> None:
    unknown = sorted(set(column_map) - set(MAPPABLE) - set(OPTIONS))
    if unknown:
        raise ManifestError(f"--map {', '.join(unknown)}: not a manifest column or option; columns: "
                            f"{', '.join(MAPPABLE)}; options: {', '.join(OPTIONS)}")
    wrong = sorted(set(constants) - set(CONSTANT))
    if wrong:
        raise ManifestError(f"--const {', '.join(wrong)}: not a column one value can fill; use one of {', '.join(CONSTANT)}"
                            " (image_id and path differ per row: --map them, e.g. --map path=png/{id}.png)")
    both = sorted(set(constants) & set(column_map))
    if both:
        raise ManifestError(f"{', '.join(both)} given both by --map and --const; keep one")
    if not source:
        raise ManifestError("the csv kind needs --source NAME (lower-case letters, digits, - or _) to prefix ids")
    if not _SOURCE.match(source):
        raise ManifestError(f"--source {source!r}: use lower-case letters, digits, - or _ (e.g. mycxr)")
    if "path" not in column_map:
        raise ManifestError("the csv kind needs --map path=COLUMN (or a template such as --map path=png/{id}.png): "
                            "each image's file path")
    given = set(column_map) | set(constants)
    if "finding" not in given and not set(LABEL_COLUMNS) & given:
        raise ManifestError("the csv kind needs --map finding=COLUMN, --const finding=TEXT or at least one of "
                            f"{', '.join(f'--map {c}=COLUMN' for c in LABEL_COLUMNS)}")


def _label(text: str) -> tuple[str, str]:
    """('1' / '0' / '', '') or ('', why) for a label cell."""
    t = normalise_text(text)
    if t in _YES:
        return "1", ""
    if t in _NO:
        return "0", ""
    if t in _BLANK:
        return "", ""
    return "", f"label value {cell(text)!r} is not 1, 0 or blank (also yes/no, true/false, -1)"


class Getter:
    """A manifest column's text on one CSV row: a column, a {column} template, or a constant."""

    def __init__(self, key: str, spec: str, columns: list[str], constant: bool = False) -> None:
        self.key, self.spec, self.constant = key, spec, constant
        self.fields = [] if constant else _PLACEHOLDER.findall(spec) if "{" in spec else None
        if self.fields is not None and not constant:
            missing = [f for f in self.fields if f not in columns] or ([] if self.fields else ["(none)"])
            if missing:
                raise ManifestError(f"--map {key}={spec}: template placeholder(s) {', '.join('{' + m + '}' for m in missing)} "
                                    f"name no column of your CSV; its columns are: {', '.join(columns)}")

    def __call__(self, r) -> str:
        if self.constant:
            return self.spec
        if self.fields is None:
            return cell(r[self.spec])
        blank = [f for f in self.fields if cell(r[f]) == ""]
        if blank:
            raise RowError(f"--map {self.key}={self.spec} needs {', '.join(blank)}, blank on this line")
        return _PLACEHOLDER.sub(lambda m: cell(r[m.group(1)]), self.spec)


def _getters(table: Table, column_map: dict[str, str], constants: dict[str, str]) -> dict[str, Getter]:
    columns = list(table.frame.columns)
    cols = {k: v for k, v in column_map.items() if k in MAPPABLE}
    missing = sorted(f"{v!r} (for {k})" for k, v in cols.items() if "{" not in v and v not in columns)
    if missing:
        raise ManifestError(f"{table.path.name} has no column {', '.join(missing)}; its columns are: {', '.join(columns)}")
    getters = {k: Getter(k, v, columns) for k, v in cols.items()}
    getters.update({k: Getter(k, v, columns, constant=True) for k, v in constants.items()})
    return getters


def find(root: Path) -> list[Path]:
    """The csv kind reads the CSV (or the folder holding it) it is given: no search."""
    return [root]


def _check_constants(constants: dict[str, str], ctx: ImportContext) -> None:
    """A constant finding or label stands for every row: one the rules do not recognise is refused."""
    if "finding" in constants and not ctx.vocabulary.classify(constants["finding"]).recognised:
        why = ctx.vocabulary.classify(constants["finding"]).why
        raise ConfigError(f"--const finding={constants['finding']}: not a finding the vocabulary recognises ({why}); "
                          f"add it with --finding '{constants['finding']}=healthy|covid|other|unknown' (docs/CONTRACTS.md)")
    for col in LABEL_COLUMNS:
        if col in constants and _label(constants[col])[1]:
            raise ConfigError(f"--const {col}={constants[col]}: {_label(constants[col])[1]}")


def _columns_of(column_map: dict[str, str], keys: tuple[str, ...]) -> set[str]:
    """Your CSV's columns behind the manifest columns `keys` (a template names several)."""
    out: set[str] = set()
    for key in keys:
        spec = column_map.get(key)
        if spec is not None:
            out |= set(_PLACEHOLDER.findall(spec)) if "{" in spec else {spec}
    return out


def check(ctx: ImportContext) -> None:
    """The options this kind needs, checked before any file is read."""
    _check_map(ctx.column_map, ctx.constants, ctx.source)
    _check_constants(ctx.constants, ctx)


def read(root: Path, ctx: ImportContext) -> CollectionResult:
    column_map, source, constants = ctx.column_map, ctx.source, ctx.constants
    csv_path = _csv_file(root, column_map.get("csv", ""))
    table = read_table(csv_path, encodings=(column_map.get("encoding", "utf-8"),), critical=_columns_of(column_map, CRITICAL))
    used = _columns_of(column_map, MAPPABLE)
    getters = _getters(table, column_map, constants)
    images = Path(column_map["images"]) if "images" in column_map else csv_path.parent
    if not images.is_absolute():
        images = csv_path.parent / images
    images = images.resolve()  # "/a/repo/../shared" -> "/a/shared", as the other importers write paths
    pre2020 = normalise_text(column_map.get("pre2020", "no")) in _YES
    stats = SourceStats(source, csv_path)
    result = CollectionResult(stats=[stats])
    quarantine_bad_lines(table, result, source)
    for line, r in table.frame.iterrows():
        with row_guard(result, source, line_of(table, line)) as guard:
            get = (lambda key: getters[key](r) if key in getters else "")
            row = _row(get, line, source, images, pre2020, guard, ctx, result)
            if row is not None:
                result.rows.append(row)
                note_damaged(table, line, row["image_id"], result, used)
    return result


def _row(get, line: int, source: str, images: Path, pre2020: bool, guard, ctx: ImportContext, result: CollectionResult) -> dict | None:
    stats = result.stats[0]
    rel = get("path")
    if rel == "":
        raise RowError("the path is blank: no image to import")
    absolute = Path(rel).is_absolute()
    path = Path(os.path.normpath(rel if absolute else images / rel))  # 'a/../b.png' written as 'b.png
    guard.image_id = image_id = _image_id(source, get("image_id"), rel, line, stats)
    guard.path = str(path)
    view = frontal_view(get("view"), stats)
    if view is None:
        return None
    if view == "":
        stats.keep("blank view kept as '' (assumed frontal)")
    # Absolute paths are the user's explicit choice (DESIGN.md); relative ones stay in the image folder.
    size = admit_image(result, ctx, image_id, path, None if absolute else images, guard.where)
    if size is None:
        return None
    labels = list(ctx.labels(get("finding"), pre2020=pre2020))
    for j, col in enumerate(LABEL_COLUMNS):
        value, why = _label(get(col))
        if why:
            result.note(image_id, col, get(col), f"{why}; left unknown")
            labels[j] = ""
        elif value:
            labels[j] = value
    patient = prefixed(source, get("patient_id"))
    if not patient:
        stats.keep("no patient id: the image is its own patient")
    row = base_row(source, image_id, path, patient or image_id, get("finding"), tuple(labels))
    row.update(view=view, sex=get("sex"), age=get("age"), offset_days=get("offset_days"), license=get("license"),
               split=get("split"), _size=size, _where=guard.where)
    for col in ("lung_boxes", "disease_boxes"):
        if get(col):
            row[col] = _boxes(get(col))
    for col in ("lung_mask", "disease_mask"):
        if get(col):
            row[col] = _mask(get(col), col, images, image_id, ctx, result)
    return row


def _mask(value: str, col: str, images: Path, image_id: str, ctx: ImportContext, result: CollectionResult) -> str:
    mask = Path(value) if Path(value).is_absolute() else images / value
    if not Path(value).is_absolute() and not ctx.allow_outside_root and not inside(mask, images):
        result.note(image_id, col, value, "path leaves the image folder; left unknown (--allow-outside-root accepts it)")
        return ""
    if not is_file(mask):
        result.stats[0].keep(f"{col} file not found: left unknown")
        result.note(image_id, col, value, f"{col} file not found; left unknown")
        return ""
    return str(mask)


def _image_id(source: str, mapped: str, rel: str, line: int, stats: SourceStats) -> str:
    if Path(rel).name in ("", ".", ".."):
        raise RowError(f"path {rel!r} names a folder, not an image file")
    if mapped:
        return prefixed(source, mapped)
    if looks_like_uid(Path(rel).name):
        stats.keep("file names are DICOM UIDs: id from the CSV line number")
        return prefixed(source, f"line{line}")
    return prefixed(source, Path(rel).with_suffix("").as_posix().lstrip("./").replace("/", "_"))


def _boxes(text: str) -> str:
    """The cell in the manifest's own spelling; a cell that cannot be parsed is kept as given, and
    validate.py leaves it unknown with the reason."""
    try:
        return format_boxes(parse_boxes(text))
    except ManifestError:
        return text


register(CollectionKind(
    "csv", find, read, detect=None, options=("column_map", "constants", "source"), required=("column_map", "source"),
    check=check, help="any other collection: your CSV and a column mapping (--map COLUMN=YOURS, --const, --source)"))
