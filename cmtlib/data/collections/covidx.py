"""The COVIDx contributions of agchung (DarwinAI / Waterloo): Figure1 and Actualmed.

Figure1 (`source = figure1`): `metadata.csv` is latin-1 text with no file-name column; an image
is named by its `patientid` cell (`COVID-00003a.jpg`, `COVID-00003b.jpg`), and a trailing letter
marks another image of the same patient (patient `figure1:COVID-00003`). Files are found by
globbing `images/<patientid>.*`.

Actualmed (`source = actualmed`): `metadata.csv` names each file in `imagename`; those names are
DICOM UIDs (`CR.1.2.840.113564....png`), so ids are built from the anonymised patient id instead
(`actualmed:ANON239`, with `-2`, `-3`, ... for a patient's further images).

Both hold frontal films only, so a blank view is kept as ''; "AP erect" is AP. Neither gives a
licence per image (license left empty).
"""

from __future__ import annotations

import re
from pathlib import Path

from cmtlib.data.collections.common import (
    LATERAL, CollectionResult, ImportContext, SourceStats, base_row, clean_number, clean_sex, labels_for_finding,
    normalise_view, prefixed, probe_image, quarantine_entry, read_table, require_columns, walk_dirs,
)
from cmtlib.data.manifest import ManifestError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")
_PATIENT = re.compile(r"^(.*\d)[a-z]$")


def _header(folder: Path) -> set[str]:
    meta = folder / "metadata.csv"
    if not meta.is_file() or not (folder / "images").is_dir():
        return set()
    return {c.strip() for c in meta.open(encoding="latin-1").readline().strip().split(",")}


def is_figure1(folder: Path) -> bool:
    cols = _header(folder)
    return {"patientid", "finding", "view"} <= cols and not cols & {"filename", "imagename"} \
        and any((folder / "images").glob("COVID-*"))


def is_actualmed(folder: Path) -> bool:
    return {"patientid", "finding", "imagename"} <= _header(folder)


def find(root: Path) -> list[Path]:
    found = [d for d in walk_dirs(root, max_depth=2) if is_figure1(d) or is_actualmed(d)]
    if not found:
        raise ManifestError(f"no Figure1 or Actualmed collection under {root}: expected metadata.csv "
                            "(patientid, finding, and imagename for Actualmed) beside an images/ folder")
    return found


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    return read_actualmed(folder) if is_actualmed(folder) else read_figure1(folder)


def _frontal_view(raw: str, stats: SourceStats) -> str | None:
    kind, view = normalise_view(raw)
    if kind == "lateral":
        stats.skip(LATERAL)
        return None
    if kind == "other":
        stats.skip(f"view {raw.strip()!r} is not a frontal film")
        return None
    return view


def _fill(row: dict, r, view: str) -> dict:
    row.update(view=view, sex=clean_sex(r.get("sex", "")), age=clean_number(r.get("age", "")),
               offset_days=clean_number(r.get("offset", "")))
    return row


def _note_ages(meta, stats: SourceStats) -> None:
    odd = sorted({a.strip() for a in meta.get("age", []) if a.strip() and clean_number(a) == ""})
    if odd:
        stats.notes.append(f"age not a number, left empty: {', '.join(odd)}")


def read_figure1(folder: Path) -> CollectionResult:
    source = "figure1"
    meta_path = folder / "metadata.csv"
    # The upstream file is latin-1 (e.g. "38°" in the notes); reading it as UTF-8 fails.
    meta = read_table(meta_path, encodings=("utf-8", "latin-1"))
    require_columns(meta, ["patientid", "finding", "view"], meta_path)
    stats = SourceStats(source, folder)
    result = CollectionResult(stats=[stats])
    files: dict[str, list[Path]] = {}
    for p in sorted((folder / "images").iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.setdefault(p.stem, []).append(p)
    used: set[str] = set()
    for _, r in meta.iterrows():
        local = r["patientid"].strip()
        view = _frontal_view(r["view"], stats)
        if view is None:
            continue
        image_id = prefixed(source, local)
        matches = files.get(local, [])
        if not matches:
            result.quarantine.append(quarantine_entry(image_id, folder / "images" / f"{local}.*", "file not found: no images/<patientid>.* for this row"))
            continue
        if len(matches) > 1:
            stats.keep(f"rows with several files of one name, first kept ({', '.join(p.name for p in matches)})")
        used.add(local)
        path = matches[0]
        size, problem = probe_image(path)
        if size is None:
            result.quarantine.append(quarantine_entry(image_id, path, problem))
            continue
        m = _PATIENT.match(local)
        patient = prefixed(source, m.group(1) if m else local)
        row = base_row(source, image_id, path, patient, r["finding"], labels_for_finding(r["finding"]))
        result.rows.append(_fill(row, r, view))
    stats.skip("image files without a metadata row", len(set(files) - used))
    _note_ages(meta, stats)
    return result


def read_actualmed(folder: Path) -> CollectionResult:
    source = "actualmed"
    meta_path = folder / "metadata.csv"
    meta = read_table(meta_path, encodings=("utf-8", "latin-1"))
    require_columns(meta, ["patientid", "finding", "imagename"], meta_path)
    stats = SourceStats(source, folder)
    result = CollectionResult(stats=[stats])
    seen: dict[str, int] = {}
    for i, r in meta.iterrows():
        view = _frontal_view(r.get("view", ""), stats)
        if view is None:
            continue
        patient_local = r["patientid"].strip() or f"row{i + 2}"
        seen[patient_local] = seen.get(patient_local, 0) + 1
        k = seen[patient_local]
        image_id = prefixed(source, patient_local if k == 1 else f"{patient_local}-{k}")
        path = folder / "images" / r["imagename"].strip()
        size, problem = probe_image(path)
        if size is None:
            result.quarantine.append(quarantine_entry(image_id, path, problem))
            continue
        row = base_row(source, image_id, path, prefixed(source, patient_local), r["finding"], labels_for_finding(r["finding"]))
        result.rows.append(_fill(row, r, view))
    listed = {n.strip() for n in meta["imagename"]}
    stats.skip("image files without a metadata row", sum(1 for p in (folder / "images").iterdir() if p.name not in listed))
    _note_ages(meta, stats)
    return result
