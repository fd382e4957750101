"""The COVIDx contributions of agchung (DarwinAI / Waterloo): Figure1 and Actualmed.

Figure1 (`source = figure1`): `metadata.csv` is latin-1 text with no file-name column; an image
is named by its `patientid` cell (`COVID-00003a.jpg`, `COVID-00003b.jpg`), and a trailing letter
marks another image of the same patient (patient `figure1:COVID-00003`). Files are found by
globbing `images/<patientid>.*`.

Actualmed (`source = actualmed`): `metadata.csv` names each file in `imagename`; those names are
DICOM UIDs (`CR.1.2.840.113564....png`), so ids are built from the anonymised patient id instead
(`actualmed:ANON239`, with `-2`, `-3`, ... for a patient's further images).

Both hold frontal films only, so a blank view is kept as ''; "AP erect" is AP. Neither gives a
licence per image (license left empty). Two Figure1 files of one name (`COVID-00003a.jpg` and
`.png`) are one image when their bytes are identical, quarantined when they differ at one size,
and one duplicate group (`figure1:COVID-00003a_<W>px`) at different sizes (rows.same_name_copies).
"""

from __future__ import annotations

import re
from pathlib import Path

from cmtlib.data.collections.common import (
    CollectionResult, ImportContext, SourceStats, base_row, header_of, prefixed, require_columns,
    size_tag, walk_dirs,
)
from cmtlib.data.collections.registry import LOOKS_LIKE, MARKED, NO, CollectionKind, register
from cmtlib.data.collections.rows import (
    RowError, admit_image, cell, frontal_view, line_of, note_damaged, quarantine_bad_lines, row_guard, same_name_copies,
)
from cmtlib.data.manifest import DUPLICATE_GROUP, ManifestError
from cmtlib.data.tables import read_table

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")
# Columns that decide a row (a byte that cannot be read there costs the row), and the others read.
FIGURE1_CRITICAL = ("patientid", "finding", "view")
ACTUALMED_CRITICAL = ("patientid", "finding", "imagename", "view")
USED = ("offset", "sex", "age")
_PATIENT = re.compile(r"^(.*\d)[a-z]$")


def _header(folder: Path) -> set[str]:
    meta = folder / "metadata.csv"
    if not meta.is_file() or not (folder / "images").is_dir():
        return set()
    return header_of(meta, encoding="latin-1")


def is_figure1(folder: Path) -> bool:
    cols = _header(folder)
    return {"patientid", "finding", "view"} <= cols and not cols & {"filename", "imagename"} \
        and any((folder / "images").glob("COVID-*"))


def is_actualmed(folder: Path) -> bool:
    return {"patientid", "finding", "imagename"} <= _header(folder)


def is_candidate(folder: Path) -> bool:
    """metadata.csv beside images/ that is not ieee8023's (no filename column): a Figure1 or
    Actualmed copy, or one whose header is broken, which `read` then names."""
    return (folder / "metadata.csv").is_file() and (folder / "images").is_dir() and "filename" not in _header(folder)


def find(root: Path) -> list[Path]:
    found = [d for d in walk_dirs(root, max_depth=2) if is_candidate(d)]
    if not found:
        raise ManifestError(f"no Figure1 or Actualmed collection under {root}: expected metadata.csv "
                            "(patientid, finding, and imagename for Actualmed) beside an images/ folder")
    return found


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    if is_actualmed(folder):
        return read_actualmed(folder, ctx)
    if is_figure1(folder):
        return read_figure1(folder, ctx)
    raise ManifestError(schema_problem(folder))


def schema_problem(folder: Path) -> str:
    """Why metadata.csv beside images/ is neither Figure1's nor Actualmed's (a collection is never dropped unnamed)."""
    cols = _header(folder)
    if not cols:
        return f"{folder / 'metadata.csv'} has no readable header line; fetch it again"
    figure1 = sorted({"patientid", "finding", "view"} - cols)
    actualmed = sorted({"patientid", "finding", "imagename"} - cols)
    named = "" if any((folder / "images").glob("COVID-*")) else "; and no images/COVID-* files, as Figure1 names them"
    return (f"{folder / 'metadata.csv'} is neither Figure1's (lacks {', '.join(figure1) or 'nothing'}{named}) nor "
            f"Actualmed's (lacks {', '.join(actualmed) or 'nothing'}); it has: {', '.join(sorted(cols))}")


def _fill(row: dict, r, view: str, size: tuple[int, int], where: str) -> dict:
    # Raw text: validate.py cleans age, offset and sex, and notes what it has to leave unknown.
    row.update(view=view, sex=cell(r.get("sex", "")), age=cell(r.get("age", "")), offset_days=cell(r.get("offset", "")),
               _size=size, _where=where)
    return row


def read_figure1(folder: Path, ctx: ImportContext) -> CollectionResult:
    source = "figure1"
    # The upstream file is latin-1 (e.g. "38°" in the notes); reading it as UTF-8 fails.
    table = read_table(folder / "metadata.csv", encodings=("utf-8", "latin-1"), critical=FIGURE1_CRITICAL)
    require_columns(table.frame, ["patientid", "finding", "view"], table.path)
    stats = SourceStats(source, folder)
    result = CollectionResult(stats=[stats])
    quarantine_bad_lines(table, result, source)
    files: dict[str, list[Path]] = {}
    for p in sorted((folder / "images").iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.setdefault(p.stem, []).append(p)
    used: set[str] = set()
    for line, r in table.frame.iterrows():
        with row_guard(result, source, line_of(table, line)) as guard:
            local = cell(r["patientid"])
            if not local:
                raise RowError("patientid is blank: it names the image file, so there is no image to import")
            guard.image_id = image_id = prefixed(source, local)
            guard.path = str(folder / "images" / f"{local}.*")
            view = frontal_view(r["view"], stats)
            if view is None:
                continue
            if not files.get(local):
                raise RowError("file not found: no images/<patientid>.* for this row")
            used.add(local)
            m = _PATIENT.match(local)
            patient = prefixed(source, m.group(1) if m else local)
            copies = same_name_copies(result, ctx, image_id, files[local], folder, guard.where)
            for path, size in copies:
                several = len(copies) > 1
                row = base_row(source, prefixed(source, f"{local}_{size_tag(size)}") if several else image_id, path, patient,
                               r["finding"], ctx.labels(r["finding"]))
                if several:
                    row[DUPLICATE_GROUP] = image_id
                result.rows.append(_fill(row, r, view, size, guard.where))
                note_damaged(table, line, row["image_id"], result, USED)
    stats.skip("image files without a metadata row", len(set(files) - used))
    return result


def read_actualmed(folder: Path, ctx: ImportContext) -> CollectionResult:
    source = "actualmed"
    table = read_table(folder / "metadata.csv", encodings=("utf-8", "latin-1"), critical=ACTUALMED_CRITICAL)
    require_columns(table.frame, ["patientid", "finding", "imagename"], table.path)
    stats = SourceStats(source, folder)
    result = CollectionResult(stats=[stats])
    quarantine_bad_lines(table, result, source)
    seen: dict[str, int] = {}
    for line, r in table.frame.iterrows():
        with row_guard(result, source, line_of(table, line)) as guard:
            view = frontal_view(r.get("view", ""), stats)
            if view is None:
                continue
            patient_local = cell(r["patientid"]) or f"row{line}"
            seen[patient_local] = seen.get(patient_local, 0) + 1
            k = seen[patient_local]
            guard.image_id = image_id = prefixed(source, patient_local if k == 1 else f"{patient_local}-{k}")
            name = cell(r["imagename"])
            if not name:
                raise RowError("imagename is blank: no image to import")
            path = folder / "images" / name
            guard.path = str(path)
            size = admit_image(result, ctx, image_id, path, folder / "images", guard.where)
            if size is None:
                continue
            row = base_row(source, image_id, path, prefixed(source, patient_local), r["finding"], ctx.labels(r["finding"]))
            result.rows.append(_fill(row, r, view, size, guard.where))
            note_damaged(table, line, image_id, result, USED)
    listed = {cell(n) for n in table.frame["imagename"]}
    stats.skip("image files without a metadata row", sum(1 for p in (folder / "images").iterdir() if p.name not in listed))
    return result


def detect(folder: Path) -> int:
    """MARKED: Figure1's or Actualmed's metadata.csv (never ieee8023's: no filename column);
    LOOKS_LIKE: metadata.csv beside images/ with a header that names no files."""
    header = _header(folder)
    if "filename" in header:
        return NO
    if is_figure1(folder) or is_actualmed(folder):
        return MARKED
    return LOOKS_LIKE if header and is_candidate(folder) else NO


register(CollectionKind(
    "covidx", find, read, detect,
    sources={"figure1": "Figure 1 COVID-19 chest X-ray collection (agchung)",
             "actualmed": "Actualmed COVID-19 chest X-ray collection, normal films (agchung)"},
    help="the COVIDx contributions of agchung: Figure1 and Actualmed (metadata.csv beside images/)"))
