"""CheXpert (Irvin et al. 2019), `source = chexpert`, from `train.csv` / `valid.csv`.

Columns: Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, then the observations, each 1
(positive), 0 (negative), -1 (uncertain) or blank (not mentioned). Lateral films are left out and
counted. Labels (label_covid is always 0: the collection predates COVID-19):

- any disease observation positive -> other disease (0, 0, 1);
- else any uncertain -> unknown, or as `--uncertain positive|negative` says;
- else No Finding = 1 -> healthy (1, 0, 0), disease region known empty;
- else unknown (blank means "not mentioned", not "absent").

An observation column counts only when the finding vocabulary recognises its name (cmtlib.data
.findings): a disease (other), No Finding (healthy), or Support Devices, which is not a disease and
is left out of that decision. A column it does not recognise gives no label (one note for the
source, and the summary lists it); `--finding 'NAME=other'` adds it. Patient ids come from the
path (`chexpert:patient00001`); Path is resolved against the CSV's folder, its parent (the
upstream layout: `CheXpert-v1.0-small/train/...` beside the CSV's parent) or with its first
part dropped; when more than one of these exists, rows.same_name_copies decides (identical bytes:
one image, noted; one size, different bytes: quarantined; several sizes: one duplicate group).
The file name says the view too (`view1_frontal.jpg`): a row whose Frontal/Lateral contradicts it
is quarantined, since a lateral film must not enter a frontal-only manifest and which of the two
is right is unknown. `finding` records the positive observations, uncertain ones marked
`(uncertain)`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cmtlib.data.collections.common import (
    LATERAL, CollectionResult, ImportContext, SourceStats, base_row, header_of,
    prefixed, require_columns, size_tag, walk_dirs,
)
from cmtlib.data.collections.registry import MARKED, NO, CollectionKind, register
from cmtlib.data.collections.rows import (
    RowError, cell, frontal_view, line_of, note_damaged, quarantine_bad_lines, row_guard, same_name_copies,
)
from cmtlib.data.findings import HEALTHY, OTHER, UNKNOWN_PRE2020, Vocabulary
from cmtlib.data.manifest import DUPLICATE_GROUP, ManifestError
from cmtlib.data.rules import is_file
from cmtlib.data.tables import read_table

SOURCE = "chexpert"
CSV_NAMES = ("train.csv", "valid.csv")
REQUIRED = ("Path", "Frontal/Lateral", "No Finding")
KNOWN = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"}
USED = ("Sex", "Age")  # every other column decides the row: a byte that cannot be read there costs it
_PATIENT = re.compile(r"patient\d+")
_NAMED_VIEW = re.compile(r"_(frontal|lateral)$", re.IGNORECASE)


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


def observation_classes(columns: list[str], vocabulary: Vocabulary) -> dict[str, str | None]:
    """Observation column -> its class in the vocabulary (healthy, other, covid, unknown, ...), or
    None when the vocabulary does not recognise the name."""
    return {c: vocabulary.classify(c).cls for c in columns}


def labels_for_row(values: dict[str, int | None], uncertain: str, classes: dict[str, str | None]) -> tuple[str, str, str]:
    """The labels of one row's observation values (module docstring); `classes`: each column's class
    (observation_classes)."""
    disease = [v for k, v in values.items() if classes.get(k) in ("other", "covid")]
    if uncertain != "unknown":
        disease = [(1 if uncertain == "positive" else 0) if v == -1 else v for v in disease]
    healthy = any(v == 1 for k, v in values.items() if classes.get(k) == "healthy")
    if any(v == 1 for v in disease):
        return UNKNOWN_PRE2020 if healthy else OTHER  # No Finding and a disease: which is right is unknown
    if any(v == -1 for v in disease):
        return UNKNOWN_PRE2020
    return HEALTHY if healthy else UNKNOWN_PRE2020


def _candidates(csv_dir: Path, rel: str) -> list[Path]:
    """The files a Path cell may name (module docstring): those that exist, or the first guess
    (then reported as not found)."""
    p = Path(rel)
    if p.is_absolute():
        return [p]
    candidates = [csv_dir / p, csv_dir.parent / p]
    if len(p.parts) > 1:
        candidates.append(csv_dir / Path(*p.parts[1:]))
    found = list(dict.fromkeys(Path(os.path.normpath(c)) for c in candidates if is_file(c)))
    return found or [candidates[0]]


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    for table_path in tables(folder):
        table = read_table(table_path, critical=lambda c: c not in USED)
        require_columns(table.frame, REQUIRED, table_path, "; is this CheXpert's train.csv / valid.csv?")
        quarantine_bad_lines(table, result, SOURCE)
        observations = [c for c in table.frame.columns if c not in KNOWN]
        classes = observation_classes(observations, ctx.vocabulary)
        for c in (c for c, cls in classes.items() if cls is None):
            n = int((table.frame[c].map(cell) != "").sum())
            stats.unrecognised[c] += n
            result.note(f"{SOURCE}:*", "finding", c, f"{table_path.name}: observation column {c!r} is not in the finding "
                        f"vocabulary (docs/CONTRACTS.md): its values ({n} not blank) give no label; --finding '{c}=other' adds it")
        for line, r in table.frame.iterrows():
            with row_guard(result, SOURCE, line_of(table, line)) as guard:
                for row in _rows(folder, r, classes, guard, ctx, result):
                    result.rows.append(row)
                    note_damaged(table, line, row["image_id"], result, USED)
    if ctx.uncertain != "unknown":
        stats.notes.append(f"uncertain (-1) observations read as {ctx.uncertain}")
    return result


def _rows(folder: Path, r, classes: dict[str, str | None], guard, ctx: ImportContext, result: CollectionResult) -> list[dict]:
    stats = result.stats[0]
    if cell(r["Frontal/Lateral"]).lower() == "lateral":
        _check_named_view(r, "lateral")
        stats.skip(LATERAL)
        return []
    view = frontal_view(r.get("AP/PA", ""), stats, "AP/PA")
    if view is None:
        return []
    parts = Path(cell(r["Path"])).with_suffix("").parts if cell(r["Path"]) else ()
    at = next((k for k, part in enumerate(parts) if _PATIENT.fullmatch(part)), None)
    if at is None:
        raise RowError(f"Path {cell(r['Path'])!r} has no patientNNNNN folder to take the patient from")
    _check_named_view(r, "frontal")
    # patient00001_study1_view1_frontal: unique within CheXpert, no file-name extension.
    guard.image_id = image_id = prefixed(SOURCE, "_".join(parts[at:]))
    paths = _candidates(folder, cell(r["Path"]))
    guard.path = str(paths[0])
    # The upstream layout puts the CSV inside CheXpert-v1.0-small/ and paths start with that name.
    copies = same_name_copies(result, ctx, image_id, paths, folder, guard.where)
    if not copies:
        return []
    values = {c: _value(r[c]) for c in classes if classes[c] is not None}
    unreadable = {c: v for c, v in values.items() if isinstance(v, str)}
    if any(v == 1 for c, v in values.items() if classes[c] == "covid"):
        raise RowError("an observation naming COVID-19 is positive in a pre-2020 collection; check the source")
    labels = labels_for_row(values, ctx.uncertain, classes) if not unreadable else UNKNOWN_PRE2020
    for c, v in unreadable.items():
        result.note(image_id, "label_healthy", v, f"observation {c} is {v!r}, not 1, 0, -1 or blank: labels left unknown")
    rows = []
    for path, size in copies:
        several = len(copies) > 1
        row = base_row(SOURCE, f"{image_id}_{size_tag(size)}" if several else image_id, path, prefixed(SOURCE, parts[at]),
                       _finding(values, classes), labels)
        row.update(view=view, sex=cell(r.get("Sex", "")), age=cell(r.get("Age", "")), _size=size, _where=guard.where)
        if several:
            row[DUPLICATE_GROUP] = image_id
        rows.append(row)
    return rows


def _check_named_view(r, view: str) -> None:
    """A file name that says the other view (`view1_frontal.jpg` on a Lateral row) makes the row's
    view unknown: quarantined (module docstring)."""
    named = _NAMED_VIEW.search(Path(cell(r["Path"])).stem)
    if named and named.group(1).lower() != view:
        raise RowError(f"Frontal/Lateral says {cell(r['Frontal/Lateral'])!r} but the file name says {named.group(1).lower()}: "
                       "which is right is unknown (a lateral film must not enter a frontal-only manifest); fix one of them")


def _finding(values: dict[str, int | None], classes: dict[str, str | None]) -> str:
    """The positive observations joined by '|', uncertain ones marked; 'No Finding' alone when it is
    the only positive one besides devices (CheXpert marks no other observation then)."""
    positive = [k for k, v in values.items() if v == 1]
    healthy = [k for k in positive if classes.get(k) == "healthy"]
    if healthy and all(classes.get(k) in ("healthy", "unknown") for k in positive):
        return healthy[0]
    return "|".join(positive + [f"{k} (uncertain)" for k, v in values.items() if v == -1])


def detect(folder: Path) -> int:
    return MARKED if tables(folder) else NO


register(CollectionKind(
    "chexpert", find, read, detect, options=("uncertain",),
    sources={SOURCE: "CheXpert, Stanford (pre-2020 films: no COVID-19)"},
    help="CheXpert: train.csv / valid.csv (Path, Frontal/Lateral, AP/PA, observations)"))
