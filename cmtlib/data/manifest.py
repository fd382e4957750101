"""The manifest: one CSV row per image, the single hand-off between data and everything else.

Every value is kept as a string; an empty string means unknown, never 0 (DESIGN.md). Readers that
need numbers convert with `label_array`, which maps unknown to NaN.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.errors import CmtError, MissingInputError
from cmtlib.fileio import atomic_path

COLUMNS: tuple[str, ...] = (
    "image_id", "path", "patient_id", "source", "view", "sex", "age", "offset_days", "finding",
    "license", "label_healthy", "label_covid", "label_other", "lung_mask", "disease_mask",
    "lung_boxes", "disease_boxes", "split",
)
LABEL_COLUMNS: tuple[str, ...] = ("label_healthy", "label_covid", "label_other")
LABEL_VALUES = frozenset({"", "0", "1"})
VIEWS = frozenset({"PA", "AP", "AP Supine", ""})
# train / val / test (DESIGN.md); holdout: a fold held out entirely and judged as external
# (cmtlib.data.holdout); excluded: films that share a patient or a duplicate group with the holdout,
# used for nothing; empty: not assigned.
SPLITS = frozenset({"train", "val", "test", "holdout", "excluded", ""})
UNUSED_SPLITS = frozenset({"excluded", ""})
# Optional columns written by `cmt data split` / the cache; absent in a fresh import.
DUPLICATE_GROUP = "duplicate_group"

# Columns holding file paths (absolute, or relative to the manifest's folder); extras included.
PATH_COLUMNS: tuple[str, ...] = ("path", "lung_mask", "disease_mask", "lung_polygon_mask")

QUARANTINE_COLUMNS: tuple[str, ...] = ("image_id", "path", "reason")
# Fields an import (or split) left unknown, or rows it listed once, and why (docs/CONTRACTS.md).
NOTES_COLUMNS: tuple[str, ...] = ("image_id", "column", "value", "reason")
# Collections `cmt data import` found (or folders it looked at) but did not import, and why.
NOT_IMPORTED_COLUMNS: tuple[str, ...] = ("collection", "folder", "reason")


class ManifestError(CmtError, ValueError):
    """A manifest that breaks the contract; the message names the rows and how to fix them."""


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS})


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest with every cell as a string ('' = unknown).

    Raises:
        MissingInputError: no file there. ManifestError: a file that is not a readable CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"manifest not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ManifestError(f"{path} cannot be read as a manifest CSV ({err}); was it cut short or edited by hand? "
                            "Write it again (cmt data import) or fix the line named") from err


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write atomically, contract columns first (missing ones added empty), extras after."""
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    order = list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]
    df = df[order].fillna("").astype(str)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def resolve_path(manifest_path: str | os.PathLike, value: str) -> Path:
    """A manifest path cell: absolute as is, else relative to the manifest's folder."""
    p = Path(value)
    return p if p.is_absolute() else (Path(manifest_path).resolve().parent / p)


def absolute_paths(df: pd.DataFrame, manifest_path: str | os.PathLike) -> pd.DataFrame:
    """A copy whose path cells are absolute, so it can be written to another folder than
    `manifest_path`'s and still point at the same files."""
    df = df.copy()
    for col in PATH_COLUMNS:
        if col in df.columns:
            df[col] = [str(resolve_path(manifest_path, v)) if v else "" for v in df[col]]
    return df


def label_array(df: pd.DataFrame, column: str) -> np.ndarray:
    """Float array of a label column: 1.0, 0.0, or NaN for unknown."""
    return pd.to_numeric(df[column].replace("", np.nan), errors="raise").to_numpy(dtype=float)


def parse_boxes(cell: str) -> list[list[float]] | None:
    """`lung_boxes` / `disease_boxes` cell -> list of [x0, y0, x1, y1]; None when unknown ('')."""
    if cell == "":
        return None
    try:
        boxes = json.loads(cell)
    except (ValueError, RecursionError) as err:
        raise ManifestError(f"boxes must be a JSON list of [x0, y0, x1, y1], got {cell[:80]!r} ({err})") from err
    if not isinstance(boxes, list) or not all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
            for b in boxes):
        raise ManifestError(f"boxes must be a JSON list of [x0, y0, x1, y1] numbers, got {cell[:80]!r}")
    return [[float(v) for v in b] for b in boxes]


def format_boxes(boxes: list[list[float]] | None) -> str:
    if boxes is None:
        return ""
    return json.dumps([[round(float(v), 1) for v in b] for b in boxes])


def manifest_hash(path: str | os.PathLike) -> str:
    """Short content hash of a manifest file, shown on report pages to identify the data."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def quarantine_path(manifest_path: str | os.PathLike) -> Path:
    """`<manifest stem>.quarantine.csv` beside the manifest (DESIGN.md)."""
    p = Path(manifest_path)
    return p.with_name(f"{p.stem}.quarantine.csv")


def write_quarantine(entries: list[dict], path: str | os.PathLike) -> Path:
    """Write quarantine entries (image_id, path, reason) atomically; an empty list writes a header."""
    return write_listing(entries, path, QUARANTINE_COLUMNS)


def read_quarantine(path: str | os.PathLike) -> pd.DataFrame:
    return _read_listing(path, QUARANTINE_COLUMNS)


def notes_path(manifest_path: str | os.PathLike) -> Path:
    """`<manifest stem>.notes.csv`: fields left unknown at import, with the reason."""
    p = Path(manifest_path)
    return p.with_name(f"{p.stem}.notes.csv")


def not_imported_path(manifest_path: str | os.PathLike) -> Path:
    """`<manifest stem>.not_imported.csv`: collections found under ROOT but not imported, and why."""
    p = Path(manifest_path)
    return p.with_name(f"{p.stem}.not_imported.csv")


def write_listing(entries: list[dict] | pd.DataFrame, path: str | os.PathLike, columns: tuple[str, ...]) -> Path:
    """Write a quarantine, notes or not-imported listing atomically; empty writes the header only."""
    df = pd.DataFrame(entries, columns=list(columns)).fillna("").astype(str)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def _read_listing(path: str | os.PathLike, columns: tuple[str, ...]) -> pd.DataFrame:
    """A listing as strings; absent (an import from before these files) reads as empty."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=list(columns), dtype=str)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ManifestError(f"{path} cannot be read ({err}); import the collection again to rewrite it") from err
    for col in columns:
        if col not in df.columns:
            df[col] = ""
    return df


def import_findings(manifest_path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """What the import behind a manifest left out or left unknown, for reports.

    Returns:
        (quarantine, notes, not_imported), read from `<stem>.quarantine.csv` (image_id, path,
        reason), `<stem>.notes.csv` (image_id, column, value, reason; image_id `<source>:*` = every
        image of that source) and `<stem>.not_imported.csv` (collection, folder, reason) beside the
        manifest; each empty (with its columns) when its file is absent.
    """
    return (_read_listing(quarantine_path(manifest_path), QUARANTINE_COLUMNS),
            _read_listing(notes_path(manifest_path), NOTES_COLUMNS),
            _read_listing(not_imported_path(manifest_path), NOT_IMPORTED_COLUMNS))


def carry_findings(source: str | os.PathLike, target: str | os.PathLike, notes: list[dict] | None = None) -> None:
    """Write `source`'s findings beside `target` (a derived manifest: its absolute-path copy, its
    split), adding `notes`, so that whoever reads `target` sees what its import left out."""
    if Path(source).resolve() == Path(target).resolve() and not notes:
        return
    quarantine, old_notes, not_imported = import_findings(source)
    write_listing(quarantine, quarantine_path(target), QUARANTINE_COLUMNS)
    write_listing(pd.concat([old_notes, pd.DataFrame(notes or [], columns=list(NOTES_COLUMNS))]), notes_path(target), NOTES_COLUMNS)
    write_listing(not_imported, not_imported_path(target), NOT_IMPORTED_COLUMNS)


def _rows(df: pd.DataFrame, mask: pd.Series, limit: int = 8) -> str:
    ids = df.loc[mask, "image_id"].tolist() if "image_id" in df.columns else []
    lines = [f"row {i + 2}" + (f" ({iid})" if iid else "") for i, iid in zip(np.flatnonzero(mask.to_numpy()), ids)]
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return ", ".join(lines[:limit]) + more


def check_manifest(df: pd.DataFrame) -> list[str]:
    """Every contract violation as a message that names the rows (CSV line numbers); [] when valid."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        return [f"manifest lacks column(s) {', '.join(missing)}; see DESIGN.md (Manifest)"]
    problems: list[str] = []
    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        problems.append(f"duplicate image_id at {_rows(df, dup)}")
    blank = df["image_id"] == ""
    if blank.any():
        problems.append(f"empty image_id at {_rows(df, blank)}")
    for col in LABEL_COLUMNS:
        bad = ~df[col].isin(LABEL_VALUES)
        if bad.any():
            values = sorted(set(df.loc[bad, col]))[:5]
            problems.append(f"{col} has values {values} (allowed: 1, 0, empty) at {_rows(df, bad)}")
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        problems.append(f"split has values {sorted(set(df.loc[bad, 'split']))[:5]} (allowed: train, val, test, holdout, excluded, empty) at {_rows(df, bad)}")
    bad = ~df["view"].isin(VIEWS)
    if bad.any():
        problems.append(f"view has values {sorted(set(df.loc[bad, 'view']))[:5]} (allowed: PA, AP, AP Supine, empty) at {_rows(df, bad)}")
    for col in ("lung_boxes", "disease_boxes"):
        for i, cell in enumerate(df[col]):
            try:
                parse_boxes(cell)
            except (ValueError, ManifestError) as err:
                problems.append(f"{col} at row {i + 2} ({df['image_id'].iloc[i]}): {err}")
    problems += _leaks(df, "patient_id", "patient")
    if DUPLICATE_GROUP in df.columns:
        problems += _leaks(df, DUPLICATE_GROUP, "duplicate group")
    return problems


def _leaks(df: pd.DataFrame, key: str, what: str) -> list[str]:
    """A patient (or duplicate group) whose images sit in more than one split leaks test data."""
    assigned = df[~df["split"].isin(UNUSED_SPLITS) & (df[key] != "")]
    n_splits = assigned.groupby(key)["split"].nunique()
    leaking = n_splits[n_splits > 1].index
    out = []
    for k in leaking[:20]:
        mask = df[key] == k
        splits = sorted(set(df.loc[mask, "split"]) - UNUSED_SPLITS)
        out.append(f"{what} {k} is in splits {splits}: {_rows(df, mask)}")
    if len(leaking) > 20:
        out.append(f"... and {len(leaking) - 20} more {what}s in two splits")
    return out
