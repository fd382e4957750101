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

`--source NAME` (required) prefixes every id (`NAME:...`). Labels come from `finding` by the
DESIGN.md table; a mapped label column (1/0/blank; also yes/no, true/false; -1 = unknown)
overrides it where it is not blank. Views are normalised (AP erect -> AP) and laterals left out
and counted; a blank view is kept as '' (map a view column if the collection holds laterals).
Without image_id the id is the image's path below the image folder (or the CSV line number when
the file name is a DICOM UID); without patient_id each image is its own patient. Boxes are JSON
lists of [x0, y0, x1, y1] in the image file's pixels.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cmtlib.errors import MissingInputError
from cmtlib.data.collections.common import (
    LATERAL, CollectionResult, ImportContext, SourceStats, base_row, clean_number, clean_sex, labels_for_finding,
    looks_like_uid, normalise_view, prefixed, probe_image, quarantine_entry, read_table,
)
from cmtlib.data.manifest import COLUMNS, LABEL_COLUMNS, ManifestError, format_boxes, parse_boxes

MAPPABLE = tuple(c for c in COLUMNS if c != "source")
OPTIONS = ("csv", "images", "encoding", "pre2020")
_SOURCE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
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


def _check_map(column_map: dict[str, str], source: str) -> None:
    unknown = sorted(set(column_map) - set(MAPPABLE) - set(OPTIONS))
    if unknown:
        raise ManifestError(f"--map {', '.join(unknown)}: not a manifest column or option; columns: "
                            f"{', '.join(MAPPABLE)}; options: {', '.join(OPTIONS)}")
    if not source:
        raise ManifestError("the csv kind needs --source NAME (lower-case letters, digits, - or _) to prefix ids")
    if not _SOURCE.match(source):
        raise ManifestError(f"--source {source!r}: use lower-case letters, digits, - or _ (e.g. mycxr)")
    if "path" not in column_map:
        raise ManifestError("the csv kind needs --map path=COLUMN: the column holding each image's file path")
    if "finding" not in column_map and not set(LABEL_COLUMNS) & set(column_map):
        raise ManifestError("the csv kind needs --map finding=COLUMN or at least one of "
                            f"{', '.join(f'--map {c}=COLUMN' for c in LABEL_COLUMNS)}")


def _label(cell: str, column: str, line: int) -> str:
    t = cell.strip().lower()
    if t in _YES:
        return "1"
    if t in _NO:
        return "0"
    if t in _BLANK:
        return ""
    raise ManifestError(f"line {line}, column {column}: label value {cell!r}; use 1, 0 or blank (also yes/no, true/false, -1)")


def read(root: Path, ctx: ImportContext, column_map: dict[str, str], source: str) -> CollectionResult:
    _check_map(column_map, source)
    csv_path = _csv_file(root, column_map.get("csv", ""))
    table = read_table(csv_path, encodings=(column_map.get("encoding", "utf-8"),))
    cols = {k: v for k, v in column_map.items() if k in MAPPABLE}
    missing = sorted(f"{v!r} (for {k})" for k, v in cols.items() if v not in table.columns)
    if missing:
        raise ManifestError(f"{csv_path.name} has no column {', '.join(missing)}; its columns are: {', '.join(table.columns)}")
    images = Path(column_map["images"]) if "images" in column_map else csv_path.parent
    if not images.is_absolute():
        images = csv_path.parent / images
    images = images.resolve()  # "/a/repo/../shared" -> "/a/shared", as the other importers write paths
    pre2020 = column_map.get("pre2020", "no").strip().lower() in _YES
    stats = SourceStats(source, csv_path)
    result = CollectionResult(stats=[stats])
    for i, r in table.iterrows():
        line = i + 2
        get = (lambda key: str(r[cols[key]]).strip() if key in cols else "")
        kind, view = normalise_view(get("view"))
        if kind in ("lateral", "other"):
            stats.skip(LATERAL if kind == "lateral" else f"view {get('view')!r} (not PA/AP)")
            continue
        if kind == "blank":
            stats.keep("blank view kept as '' (assumed frontal)")
        rel = get("path")
        if rel == "":
            stats.skip("rows with a blank path")
            continue
        path = Path(rel) if Path(rel).is_absolute() else images / rel
        image_id = _image_id(source, get("image_id"), rel, line, stats)
        size, problem = probe_image(path)
        if size is None:
            result.quarantine.append(quarantine_entry(image_id, path, problem))
            continue
        labels = list(labels_for_finding(get("finding"), pre2020=pre2020))
        for j, col in enumerate(LABEL_COLUMNS):
            explicit = _label(get(col), cols.get(col, col), line) if col in cols else ""
            labels[j] = explicit or labels[j]
        patient = prefixed(source, get("patient_id"))
        if not patient:
            stats.keep("no patient id: the image is its own patient")
        row = base_row(source, image_id, path, patient or image_id, get("finding"), tuple(labels))
        row.update(view=view, sex=clean_sex(get("sex")), age=clean_number(get("age")),
                   offset_days=clean_number(get("offset_days")), license=get("license"), split=get("split"))
        for col in ("lung_boxes", "disease_boxes"):
            if col in cols and get(col):
                row[col] = _boxes(get(col), col, line)
        for col in ("lung_mask", "disease_mask"):
            if get(col):
                mask = Path(get(col)) if Path(get(col)).is_absolute() else images / get(col)
                if mask.is_file():
                    row[col] = str(mask)
                else:
                    stats.keep(f"{col} file not found: left unknown")
        result.rows.append(row)
    ids = pd.Series([row["image_id"] for row in result.rows], dtype=str)
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        raise ManifestError(f"{len(dup)} image id(s) occur twice in {csv_path.name} (e.g. {', '.join(dup[:5])}); "
                            "--map image_id=COLUMN with a unique id column")
    return result


def _image_id(source: str, mapped: str, rel: str, line: int, stats: SourceStats) -> str:
    if mapped:
        return prefixed(source, mapped)
    if looks_like_uid(Path(rel).name):
        stats.keep("file names are DICOM UIDs: id from the CSV line number")
        return prefixed(source, f"line{line}")
    return prefixed(source, Path(rel).with_suffix("").as_posix().lstrip("./").replace("/", "_"))


def _boxes(cell: str, column: str, line: int) -> str:
    try:
        return format_boxes(parse_boxes(cell))
    except ValueError as err:
        raise ManifestError(f"line {line}, {column}: {err}; expected a JSON list of [x0, y0, x1, y1]") from err
