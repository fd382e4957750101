"""CheXpert (Irvin et al. 2019), `source = chexpert`, from `train.csv` / `valid.csv`.

Columns: Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, then the observations, each 1
(positive), 0 (negative), -1 (uncertain) or blank (not mentioned). Lateral films are left out and
counted. Labels (label_covid is always 0: the collection predates COVID-19):

- any disease observation positive -> other disease (0, 0, 1);
- else any uncertain -> unknown, or as `--uncertain positive|negative` says;
- else No Finding = 1 -> healthy (1, 0, 0), disease region known empty;
- else unknown (blank means "not mentioned", not "absent").

Support Devices is not a disease and is left out of that decision. Patient ids come from the
path (`chexpert:patient00001`); Path is resolved against the CSV's folder, its parent (the
upstream layout: `CheXpert-v1.0-small/train/...` beside the CSV's parent) or with its first
part dropped. `finding` records the positive observations, uncertain ones marked `(uncertain)`.
"""

from __future__ import annotations

import re
from pathlib import Path

from cmtlib.data.collections.common import (
    LATERAL, HEALTHY, OTHER, UNKNOWN_PRE2020, CollectionResult, ImportContext, SourceStats, base_row, header_of,
    normalise_view, prefixed, require_columns, walk_dirs,
)
from cmtlib.data.collections.rows import RowError, admit_image, cell, line_of, quarantine_bad_lines, row_guard
from cmtlib.data.manifest import ManifestError
from cmtlib.data.rules import is_file
from cmtlib.data.tables import read_table

SOURCE = "chexpert"
CSV_NAMES = ("train.csv", "valid.csv")
REQUIRED = ("Path", "Frontal/Lateral", "No Finding")
NOT_DISEASE = {"No Finding", "Support Devices"}
KNOWN = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"}
_PATIENT = re.compile(r"patient\d+")


def tables(folder: Path) -> list[Path]:
    return [folder / name for name in CSV_NAMES if (folder / name).is_file() and "Frontal/Lateral" in header_of(folder / name)]


def find(root: Path) -> list[Path]:
    found = [d for d in walk_dirs(root, max_depth=2) if tables(d)]
    if not found:
        raise ManifestError(f"no CheXpert table under {root}: expected train.csv or valid.csv with columns {', '.join(REQUIRED)}")
    return found


def _value(text: str) -> int | None | str:
    """1, 0, -1, None (blank = not mentioned), or the text itself when it is none of these."""
    text = cell(text)
    if text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v in (1, 0, -1) else text


def labels_for_row(values: dict[str, int | None], uncertain: str) -> tuple[str, str, str]:
    disease = [v for k, v in values.items() if k not in NOT_DISEASE]
    if uncertain != "unknown":
        disease = [(1 if uncertain == "positive" else 0) if v == -1 else v for v in disease]
    if any(v == 1 for v in disease):
        return OTHER
    if any(v == -1 for v in disease):
        return UNKNOWN_PRE2020
    if values.get("No Finding") == 1:
        return HEALTHY
    return UNKNOWN_PRE2020


def _resolve(csv_dir: Path, rel: str) -> Path:
    p = Path(rel)
    if p.is_absolute():
        return p
    candidates = [csv_dir / p, csv_dir.parent / p]
    if len(p.parts) > 1:
        candidates.append(csv_dir / Path(*p.parts[1:]))
    return next((c for c in candidates if is_file(c)), candidates[0])


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    for table_path in tables(folder):
        table = read_table(table_path)
        require_columns(table.frame, REQUIRED, table_path, "; is this CheXpert's train.csv / valid.csv?")
        quarantine_bad_lines(table, result, SOURCE)
        observations = [c for c in table.frame.columns if c not in KNOWN]
        for line, r in table.frame.iterrows():
            with row_guard(result, SOURCE, line_of(table, line)) as guard:
                row = _row(folder, r, observations, guard, ctx, result)
                if row is not None:
                    result.rows.append(row)
    if ctx.uncertain != "unknown":
        stats.notes.append(f"uncertain (-1) observations read as {ctx.uncertain}")
    return result


def _row(folder: Path, r, observations: list[str], guard, ctx: ImportContext, result: CollectionResult) -> dict | None:
    stats = result.stats[0]
    if cell(r["Frontal/Lateral"]).lower() == "lateral":
        stats.skip(LATERAL)
        return None
    kind, view = normalise_view(r.get("AP/PA", ""))
    if kind in ("lateral", "other"):
        stats.skip(LATERAL if kind == "lateral" else f"AP/PA {cell(r['AP/PA'])!r} (not PA/AP)")
        return None
    parts = Path(cell(r["Path"])).with_suffix("").parts if cell(r["Path"]) else ()
    at = next((k for k, part in enumerate(parts) if _PATIENT.fullmatch(part)), None)
    if at is None:
        raise RowError(f"Path {cell(r['Path'])!r} has no patientNNNNN folder to take the patient from")
    # patient00001_study1_view1_frontal: unique within CheXpert, no file-name extension.
    guard.image_id = image_id = prefixed(SOURCE, "_".join(parts[at:]))
    path = _resolve(folder, cell(r["Path"]))
    guard.path = str(path)
    # The upstream layout puts the CSV inside CheXpert-v1.0-small/ and paths start with that name.
    size = admit_image(result, ctx, image_id, path, folder, guard.where)
    if size is None:
        return None
    values = {c: _value(r[c]) for c in observations}
    unreadable = {c: v for c, v in values.items() if isinstance(v, str)}
    labels = labels_for_row(values, ctx.uncertain) if not unreadable else UNKNOWN_PRE2020
    for c, v in unreadable.items():
        result.note(image_id, "label_healthy", v, f"observation {c} is {v!r}, not 1, 0, -1 or blank: labels left unknown")
    row = base_row(SOURCE, image_id, path, prefixed(SOURCE, parts[at]), _finding(values), labels)
    row.update(view=view, sex=cell(r.get("Sex", "")), age=cell(r.get("Age", "")), _size=size, _where=guard.where)
    return row


def _finding(values: dict[str, int | None]) -> str:
    if values.get("No Finding") == 1:
        return "No Finding"
    parts = [k for k, v in values.items() if v == 1] + [f"{k} (uncertain)" for k, v in values.items() if v == -1]
    return "|".join(parts)
