"""The last step of every import: the value rules of cmtlib/data/rules.py applied row by row, then
the ambiguities only visible across rows. Nothing is guessed and nothing is dropped unseen:

- per field: an age outside 0-120 years, an offset outside -365 to 3,650 days, a sex that is not
  M or F, a box that is not finite, has no area, is inverted or lies outside the image: the field
  is left unknown and a note (image_id, column, value, reason) says why. A finding the vocabulary
  does not recognise (cmtlib/data/findings.py) gave no label: it is noted with the text and
  counted per source for the summary; disease boxes on a film labelled healthy are left unknown
  (one of the two is wrong). Any invalid box of a film makes that film's whole
  box field unknown (one lung box of two would teach "background" where the other lung is).
- one image id for two different files: every row involved is quarantined.
- one file listed twice: kept once when the rows agree (a note says so), quarantined when they
  disagree on the labels or the patient.
- byte-identical files under two names whose labels disagree: a note on each (not blanked: see
  `_same_content`).
"""

from __future__ import annotations

import os
from collections import defaultdict

from cmtlib.data.collections.common import CollectionResult, clean_sex, quarantine_entry
from cmtlib.data.findings import BUILT_IN, Vocabulary
from cmtlib.data.manifest import DUPLICATE_GROUP, LABEL_COLUMNS
from cmtlib.data.rules import boxes_problem, clean_age, clean_offset, normalise_text, same_content_groups

_SPLITS = {"": "", "train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Columns two rows of one file must agree on to be the same listing; anything else is ambiguous.
AGREE = (*LABEL_COLUMNS, "patient_id")
BOX_COLUMNS = ("lung_boxes", "disease_boxes")


def finalise(result: CollectionResult, vocabulary: Vocabulary = BUILT_IN) -> None:
    """Apply the module's rules to `result` in place."""
    for row in result.rows:
        _fields(row, result)
        _finding(row, result, vocabulary)
    result.rows = _same_id(result)
    result.rows = _same_file(result)
    _same_content(result)
    _split_leaks(result)


def _fields(row: dict, result: CollectionResult) -> None:
    iid = row["image_id"]
    for column, clean in (("age", clean_age), ("offset_days", clean_offset)):
        raw = row.get(column, "")
        value, why = clean(raw)
        if why:
            result.note(iid, column, raw, f"{why}; left unknown")
        row[column] = value
    sex = clean_sex(row.get("sex", ""))
    if row.get("sex", "").strip() and not sex:
        result.note(iid, "sex", row["sex"], "not M or F (male, female); left unknown")
    row["sex"] = sex
    for column in BOX_COLUMNS:
        why = boxes_problem(row.get(column, ""), row.get("_size"))
        if why:
            result.note(iid, column, row[column], f"{why}; {column} left unknown")
            row[column] = ""
    if row.get("label_healthy") == "1" and row.get("disease_boxes", "") not in ("", "[]"):
        # A lesion box on a film labelled healthy: one of the two is wrong, and which is unknown.
        result.note(iid, "disease_boxes", row["disease_boxes"], "disease boxes on a film labelled healthy; left unknown")
        row["disease_boxes"] = ""
    split = _SPLITS.get(normalise_text(row.get("split", "")))
    if split is None:
        result.note(iid, "split", row["split"], "not train, val or test; left unassigned (cmt data split assigns it)")
    row["split"] = split or ""


def _finding(row: dict, result: CollectionResult, vocabulary: Vocabulary) -> None:
    """A finding the vocabulary does not recognise gave no label: noted with the text, counted."""
    verdict = vocabulary.classify(row.get("finding", ""))
    if verdict.recognised:
        return
    text = row["finding"]
    labels = tuple(row.get(c, "") for c in LABEL_COLUMNS)
    symbols = "" if any(ch.isalpha() for ch in text) else " (numbers or symbols only)"
    what = ("labels left unknown" if labels == ("", "", "") else
            "labels left unknown (label_covid 0: a pre-2020 collection)" if labels == ("", "0", "") else
            f"the labels {'/'.join(v or '?' for v in labels)} (healthy/covid/other) come from the label columns")
    result.note(row["image_id"], "finding", text, f"finding {text!r} is not in the finding vocabulary{symbols}: {verdict.why}; "
                f"{what} (docs/CONTRACTS.md; --finding 'TEXT=CLASS' adds a text)")
    stats = result.source_stats(row["source"])
    if stats is not None:
        stats.unrecognised[text] += 1


def _where(row: dict) -> str:
    return row.get("_where") or row["path"]


def _same_id(result: CollectionResult) -> list[dict]:
    """Rows whose id names two or more different files are quarantined, all of them."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in result.rows:
        groups[row["image_id"]].append(row)
    dropped: set[int] = set()
    for iid, rows in groups.items():
        files = {_key(r["path"]) for r in rows}
        if len(files) == 1:
            continue
        dropped |= {id(r) for r in rows}
        listed = "; ".join(f"{_where(r)}: {r['path']}" for r in rows)
        for r in rows:
            result.quarantine.append(quarantine_entry(iid, r["path"], (
                f"image id {iid} is given to {len(files)} different files ({listed}): which one it means is unknown; "
                "give each file its own id")))
    return [r for r in result.rows if id(r) not in dropped]


def _key(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _same_file(result: CollectionResult) -> list[dict]:
    """One file listed twice: kept once when the rows agree, otherwise every row quarantined."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in result.rows:
        groups[_key(row["path"])].append(row)
    dropped: set[int] = set()
    for rows in groups.values():
        if len(rows) < 2:
            continue
        first = rows[0]
        disagree = [c for c in LABEL_COLUMNS if len({r.get(c, "") for r in rows}) > 1]
        # A patient counts only where one was given (an image of no named patient is its own).
        named = {r["patient_id"] for r in rows if r["patient_id"] != r["image_id"]}
        if len(named) > 1:
            disagree.append("patient_id")
        if disagree:
            values = "; ".join(f"{_where(r)}: " + ", ".join(f"{c} {r.get(c, '')!r}" for c in disagree) for r in rows)
            for r in rows:
                dropped.add(id(r))
                result.quarantine.append(quarantine_entry(r["image_id"], r["path"], (
                    f"the same file is listed {len(rows)} times with different {', '.join(disagree)} ({values}): "
                    "which is right is unknown; keep one row")))
            continue
        if named and first["patient_id"] == first["image_id"]:
            first["patient_id"] = named.pop()
        for r in rows[1:]:
            dropped.add(id(r))
            result.note(r["image_id"], "row", _where(r), f"the same file as {first['image_id']} ({_where(first)}) with the "
                        "same labels and patient: listed once")
            _blank_differences(first, r, result)
    return [r for r in result.rows if id(r) not in dropped]


def _blank_differences(first: dict, other: dict, result: CollectionResult) -> None:
    """Fields the two listings of one file disagree on (other than labels and patient) are unknown."""
    for column in first:
        if column.startswith("_") or column in AGREE or column in ("image_id", "path", DUPLICATE_GROUP):
            continue
        if first.get(column, "") != other.get(column, "") and first.get(column, ""):
            result.note(first["image_id"], column, first[column], f"the file is listed again with {column} "
                        f"{other.get(column, '')!r} ({_where(other)}); left unknown")
            first[column] = ""


def _same_content(result: CollectionResult) -> None:
    """Byte-identical files under two names whose labels disagree: a note on each. The labels are
    kept: identical bytes under two names are also what a placeholder or a test fixture looks like,
    and the split keeps the copies in one duplicate group whatever their labels."""
    rows = result.rows
    for group in same_content_groups([r["path"] for r in rows]):
        copies = [rows[i] for i in group]
        if len({tuple(r[c] for c in LABEL_COLUMNS) for r in copies}) < 2:
            continue
        names = ", ".join(f"{r['image_id']} ({'/'.join(r[c] or '?' for c in LABEL_COLUMNS)})" for r in copies)
        for r in copies:
            result.note(r["image_id"], "labels", "/".join(r[c] for c in LABEL_COLUMNS),
                        f"byte-identical to another file with other labels (healthy/covid/other: {names}); check which is right")


def _split_leaks(result: CollectionResult) -> None:
    """A patient given two splits by the collection's own split column: its split is unassigned."""
    splits: dict[str, set[str]] = defaultdict(set)
    for row in result.rows:
        if row.get("split"):
            splits[row["patient_id"]].add(row["split"])
    leaking = {p for p, s in splits.items() if len(s) > 1}
    for row in result.rows:
        if row["patient_id"] in leaking and row.get("split"):
            result.note(row["image_id"], "split", row["split"], f"patient {row['patient_id']} is in splits "
                        f"{sorted(splits[row['patient_id']])}; left unassigned so that no patient straddles two")
            row["split"] = ""
