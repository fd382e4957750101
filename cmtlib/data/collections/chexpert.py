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
    LATERAL, HEALTHY, OTHER, UNKNOWN_PRE2020, CollectionResult, ImportContext, SourceStats, base_row, clean_number,
    clean_sex, normalise_view, prefixed, probe_image, quarantine_entry, read_table, require_columns, walk_dirs,
)
from cmtlib.data.manifest import ManifestError

SOURCE = "chexpert"
CSV_NAMES = ("train.csv", "valid.csv")
REQUIRED = ("Path", "Frontal/Lateral", "No Finding")
NOT_DISEASE = {"No Finding", "Support Devices"}
KNOWN = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"}
_PATIENT = re.compile(r"patient\d+")


def tables(folder: Path) -> list[Path]:
    out = []
    for name in CSV_NAMES:
        p = folder / name
        if p.is_file() and "Frontal/Lateral" in p.open(encoding="utf-8", errors="replace").readline():
            out.append(p)
    return out


def find(root: Path) -> list[Path]:
    found = [d for d in walk_dirs(root, max_depth=2) if tables(d)]
    if not found:
        raise ManifestError(f"no CheXpert table under {root}: expected train.csv or valid.csv with columns {', '.join(REQUIRED)}")
    return found


def _value(cell: str, where: str) -> int | None:
    cell = cell.strip()
    if cell == "":
        return None
    try:
        v = int(float(cell))
    except ValueError:
        v = 99
    if v not in (1, 0, -1):
        raise ManifestError(f"{where}: value {cell!r}; CheXpert labels are 1, 0, -1 or blank")
    return v


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
    return next((c for c in candidates if c.exists()), candidates[0])


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    for table_path in tables(folder):
        table = read_table(table_path)
        require_columns(table, REQUIRED, table_path, "; is this CheXpert's train.csv / valid.csv?")
        observations = [c for c in table.columns if c not in KNOWN]
        for i, r in table.iterrows():
            where = f"{table_path.name} line {i + 2}"
            if r["Frontal/Lateral"].strip().lower() == "lateral":
                stats.skip(LATERAL)
                continue
            kind, view = normalise_view(r.get("AP/PA", ""))
            if kind in ("lateral", "other"):
                stats.skip(LATERAL if kind == "lateral" else f"AP/PA {r['AP/PA'].strip()!r} (not PA/AP)")
                continue
            parts = Path(r["Path"].strip()).with_suffix("").parts
            at = next((k for k, part in enumerate(parts) if _PATIENT.fullmatch(part)), None)
            if at is None:
                raise ManifestError(f"{where}: Path {r['Path']!r} has no patientNNNNN folder to take the patient from")
            # patient00001_study1_view1_frontal: unique within CheXpert, no file-name extension.
            image_id = prefixed(SOURCE, "_".join(parts[at:]))
            path = _resolve(folder, r["Path"].strip())
            size, problem = probe_image(path)
            if size is None:
                result.quarantine.append(quarantine_entry(image_id, path, problem))
                continue
            values = {c: _value(r[c], f"{where}, {c}") for c in observations}
            labels = labels_for_row(values, ctx.uncertain)
            row = base_row(SOURCE, image_id, path, prefixed(SOURCE, parts[at]), _finding(values), labels)
            row.update(view=view, sex=clean_sex(r.get("Sex", "")), age=clean_number(r.get("Age", "")))
            result.rows.append(row)
    if ctx.uncertain != "unknown":
        stats.notes.append(f"uncertain (-1) observations read as {ctx.uncertain}")
    return result


def _finding(values: dict[str, int | None]) -> str:
    if values.get("No Finding") == 1:
        return "No Finding"
    parts = [k for k, v in values.items() if v == 1] + [f"{k} (uncertain)" for k, v in values.items() if v == -1]
    return "|".join(parts)
