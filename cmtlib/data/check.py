"""`cmt data check`'s value rules: the same rules the importers apply (cmtlib/data/rules.py), so a
manifest written by hand or by another tool is held to what an import would have let through.

`check_manifest` (manifest.py) covers the contract (columns, label values, ids, split leaks);
`value_problems` adds ages, offsets, boxes (read against each image's header size), one file
listed twice with different labels, two rows of one duplicate group (one picture) whose known
labels contradict each other, and a label carried by a finding the vocabulary does not recognise (cmtlib.data.findings:
a label comes only from recognised text). No image is decoded; only a film with boxes has its
header read. `label_conflicts` is what `cmt data split` uses to leave such labels unknown rather
than split on a guess.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable

import pandas as pd

from cmtlib.data.findings import vocabulary
from cmtlib.data.manifest import DUPLICATE_GROUP, LABEL_COLUMNS, resolve_path
from cmtlib.data.rules import boxes_problem, clean_age, clean_offset, probe_image, same_path_groups

BOX_COLUMNS = ("lung_boxes", "disease_boxes")
LIMIT = 20  # messages per rule; the rest are counted


def _resolved(df: pd.DataFrame, manifest_path: str | os.PathLike) -> list[str]:
    folder = str(resolve_path(manifest_path, "."))  # one Path for the folder, plain strings per row
    return [p if not p or os.path.isabs(p) else os.path.join(folder, p) for p in df["path"]]


def label_conflicts(df: pd.DataFrame, manifest_path: str | os.PathLike, paths: list[str] | None = None) -> list[list[int]]:
    """Row positions naming one file (the same path once '..' is resolved) whose labels differ.
    Byte-identical files under two names are the duplicate search's business (the split groups them)."""
    paths = paths if paths is not None else _resolved(df, manifest_path)
    labels = list(zip(*(df[c] for c in LABEL_COLUMNS)))
    return [g for g in same_path_groups(paths) if len({labels[i] for i in g}) > 1]


def value_problems(df: pd.DataFrame, manifest_path: str | os.PathLike, findings: Iterable[str] = ()) -> list[str]:
    """Every value an import would have left unknown, as messages naming the rows (CSV line numbers).
    `findings`: 'TEXT=CLASS' entries the import added to the vocabulary (--finding)."""
    found: dict[str, list[str]] = defaultdict(list)
    ids = df["image_id"].tolist() if "image_id" in df.columns else [""] * len(df)
    for column, clean in (("age", clean_age), ("offset_days", clean_offset)):
        for i, value in enumerate(df[column] if column in df.columns else []):
            why = clean(value)[1]
            if value and why:
                found[column].append(f"row {i + 2} ({ids[i]}): {why}")
    paths = _resolved(df, manifest_path) if "path" in df.columns else [""] * len(df)
    columns = {c: df[c].tolist() for c in BOX_COLUMNS if c in df.columns}
    for i in range(len(df)):
        cells = {c: values[i] for c, values in columns.items() if values[i] not in ("", "[]")}
        # Only a film with boxes needs its size: its header is read, nothing is decoded.
        size = probe_image(paths[i])[0] if cells and paths[i] else None
        for column, value in cells.items():
            why = boxes_problem(value, size)
            if why:
                found[column].append(f"row {i + 2} ({ids[i]}): {why}")
    if "disease_boxes" in df.columns and "label_healthy" in df.columns:
        for i, (healthy, cell) in enumerate(zip(df["label_healthy"], df["disease_boxes"])):
            if healthy == "1" and cell not in ("", "[]"):
                found["disease_boxes"].append(f"row {i + 2} ({ids[i]}): disease boxes on a film labelled healthy")
    if "path" in df.columns and all(c in df.columns for c in LABEL_COLUMNS):
        for group in label_conflicts(df, manifest_path, paths):
            rows = ", ".join(f"row {i + 2} ({ids[i]}: {'/'.join(df[c].iloc[i] or '?' for c in LABEL_COLUMNS)})" for i in group)
            found["labels"].append(f"one file with different labels (healthy/covid/other) at {rows}")
    if all(c in df.columns for c in LABEL_COLUMNS):
        found["labels"] += _group_conflicts(df, ids)
        if "finding" in df.columns:
            found["finding"] += _unrecognised_with_labels(df, ids, findings)
    out = []
    for rule, messages in found.items():
        if not messages:
            continue
        more = f"; and {len(messages) - LIMIT} more" if len(messages) > LIMIT else ""
        out.append(f"{rule}: " + "; ".join(messages[:LIMIT]) + more)
    return out


def _labels(df: pd.DataFrame, i: int) -> str:
    return "/".join(df[c].iloc[i] or "?" for c in LABEL_COLUMNS)


def _group_conflicts(df: pd.DataFrame, ids: list[str]) -> list[str]:
    """Rows of one duplicate group (copies of one picture) whose known labels contradict each other
    (1 against 0): one of them is wrong. An unknown label contradicts nothing."""
    if DUPLICATE_GROUP not in df.columns:
        return []
    out = []
    columns = [df[c].tolist() for c in LABEL_COLUMNS]
    rows: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(df[DUPLICATE_GROUP]):
        if group:
            rows[group].append(i)
    for group, members in rows.items():
        if any(len({values[i] for i in members} - {""}) > 1 for values in columns):
            listed = ", ".join(f"row {i + 2} ({ids[i]}: {_labels(df, i)})" for i in members)
            out.append(f"duplicate group {group} (one picture) has contradicting labels (healthy/covid/other) at {listed}")
    return out


def _unrecognised_with_labels(df: pd.DataFrame, ids: list[str], findings: Iterable[str]) -> list[str]:
    """Rows whose finding the vocabulary does not recognise but which carry a label (healthy, other
    disease, or COVID-19; a 0 for COVID-19 alone is what a pre-2020 collection knows without any text)."""
    vocab = vocabulary(list(findings))
    verdicts: dict[str, object] = {}
    out = []
    for i, (finding, h, c, o) in enumerate(zip(df["finding"], *(df[col] for col in LABEL_COLUMNS))):
        if not (h or o or c == "1"):
            continue
        if finding not in verdicts:
            verdicts[finding] = vocab.classify(finding)
        verdict = verdicts[finding]
        if not verdict.recognised:
            out.append(f"row {i + 2} ({ids[i]}): finding {finding!r} is not in the finding vocabulary ({verdict.why}) "
                       f"but the row carries labels {_labels(df, i)} (healthy/covid/other); a label comes only from "
                       "recognised text (docs/CONTRACTS.md): fix the finding, or pass --finding 'TEXT=CLASS' if the "
                       "import was given it")
    return out
