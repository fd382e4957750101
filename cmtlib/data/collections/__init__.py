"""Collection adapters: turn a public chest X-ray collection into one manifest (DESIGN.md).

`import_collection(kind, root, out)` finds the collection(s) of `kind` under `root`, maps each
row to the manifest contract (labels from the finding vocabulary, cmtlib/data/findings.py; views
normalised, laterals left out and counted, source-prefixed ids), writes `out` and beside it,
atomically, `<out stem>.quarantine.csv` (rows left out, and why), `<out stem>.notes.csv` (fields
left unknown, and why) and `<out stem>.not_imported.csv` (collections found but not imported, and
why), and returns an `ImportReport` whose `summary()` says what was imported and what was left out,
including the finding texts the vocabulary did not recognise.

A broken row, box or annotation costs only itself (rows.py, validate.py); a collection that
cannot be imported at all (a user error: a `CmtError`) is listed as not imported while the
others of the same import go on; only when nothing at all is imported does the import stop.

Kinds: one per importer module of this package, each declared there (registry.py): ieee8023,
covidx (Figure1 + Actualmed), nih (ChestX-ray14), chexpert, tbx11k, csv (any other collection
through a column mapping; see generic_csv.py); and auto (every known collection under a folder).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cmtlib.errors import CmtError, MissingInputError
from cmtlib.data.collections import auto
from cmtlib.data.collections.common import LATERAL, CollectionResult, ImportContext, SourceStats
from cmtlib.data.collections.registry import AUTO, CollectionKind, get, kind_names, kinds, options_of
from cmtlib.data.collections.validate import finalise
from cmtlib.data.findings import vocabulary
from cmtlib.data.manifest import (
    DUPLICATE_GROUP, NOT_IMPORTED_COLUMNS, NOTES_COLUMNS, ManifestError, check_manifest, not_imported_path, notes_path,
    quarantine_path, write_listing, write_manifest, write_quarantine,
)

UNCERTAIN = ("unknown", "positive", "negative")
# The CLI flag behind each kind option, for messages.
FLAGS = {"column_map": "--map", "constants": "--const", "source": "--source", "uncertain": "--uncertain"}
SHOWN_UNRECOGNISED = 10  # finding texts the summary names per source; the rest are counted

__all__ = ["import_collection", "ImportReport", "kind_names", "kinds"]


@dataclass
class ImportReport:
    """What an import wrote; `summary()` is what `cmt data import` prints."""

    kind: str
    root: Path
    manifest: Path
    quarantine: Path
    rows: pd.DataFrame
    stats: list[SourceStats]
    quarantined: list[dict]
    not_imported: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)
    notes: list[dict] = field(default_factory=list)  # NOTES_COLUMNS

    def count_by_source(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.rows["source"].value_counts().sort_index().items()}

    def skipped(self, source: str) -> Counter:
        total: Counter = Counter()
        for s in self.stats:
            if s.source == source:
                total.update(s.skipped)
        return total

    def summary(self) -> str:
        df = self.rows
        lines = [f"wrote {self.manifest}: {len(df)} images of {df['patient_id'].nunique()} patients from "
                 f"{df['source'].nunique()} source(s); quarantined {len(self.quarantined)} -> {self.quarantine}",
                 f"fields left unknown: {len(self.notes)} note(s) -> {notes_path(self.manifest)}; "
                 f"collections not imported: {len(self.not_imported)} -> {not_imported_path(self.manifest)}"]
        for st in self.stats:
            part = df[df["source"] == st.source]
            lines.append(f"{st.source} ({st.folder}): {len(part)} images, {part['patient_id'].nunique()} patients")
            lines.append(f"  labels: {_fmt(_label_classes(part))}")
            lines.append(f"  views: {_fmt(Counter(v or 'blank' for v in part['view']))}")
            lines.append(f"  annotations: {_fmt(_annotation_counts(part))}")
            q = sum(1 for e in self.quarantined if e["image_id"].startswith(f"{st.source}:"))
            if q:
                lines.append(f"  quarantined: {q} (see {self.quarantine.name})")
            n = Counter(e["column"] for e in self.notes if e["image_id"].startswith(f"{st.source}:"))
            if n:
                lines.append(f"  left unknown: {_fmt(n)} (see {notes_path(self.manifest).name})")
            lines.append(f"  unrecognised findings (no label from them; --finding TEXT=CLASS adds one): {_fmt_texts(st.unrecognised)}")
            lines.append(f"  laterals excluded: {st.skipped.get(LATERAL, 0)}")
            for reason, n in sorted(st.skipped.items()):
                if reason != LATERAL:
                    lines.append(f"  left out: {n} {reason}")
            for reason, n in sorted(st.kept.items()):
                lines.append(f"  kept: {n} {reason}")
            lines += [f"  note: {n}" for n in st.notes]
        for folder, why in self.not_imported:
            lines.append(f"not imported: {folder}: {why}")
        return "\n".join(lines)


def _fmt(counts: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _fmt_texts(counts: Counter) -> str:
    shown = ", ".join(f"{text!r} {n}" for text, n in counts.most_common(SHOWN_UNRECOGNISED))
    more = len(counts) - SHOWN_UNRECOGNISED
    return (shown + (f" and {more} more (see the notes file)" if more > 0 else "")) or "none"


def _label_classes(df: pd.DataFrame) -> Counter:
    out: Counter = Counter({"healthy": 0, "COVID-19": 0, "other disease": 0, "unknown": 0})
    for h, c, o in zip(df["label_healthy"], df["label_covid"], df["label_other"]):
        out["healthy" if h == "1" else "COVID-19" if c == "1" else "other disease" if o == "1" else "unknown"] += 1
    return out


def _annotation_counts(df: pd.DataFrame) -> Counter:
    out: Counter = Counter()
    out["lung boxes"] = int((df["lung_boxes"] != "").sum())
    out["lung masks"] = int((df["lung_mask"] != "").sum())
    if "lung_polygon_mask" in df.columns:
        out["lung_polygon_mask (extra)"] = int((df["lung_polygon_mask"] != "").sum())
    out["disease masks"] = int((df["disease_mask"] != "").sum())
    out["disease boxes"] = int(df["disease_boxes"].str.startswith("[[").sum())
    out["disease known empty"] = int((df["disease_boxes"] == "[]").sum())
    if DUPLICATE_GROUP in df.columns:
        groups = df.loc[df[DUPLICATE_GROUP] != "", DUPLICATE_GROUP]
        out[f"images in duplicate groups ({groups.nunique()} groups)"] = len(groups)
    return out


def import_collection(kind: str, root: str | os.PathLike, out: str | os.PathLike, column_map: dict[str, str] | None = None,
                      source: str = "", uncertain: str = "unknown", constants: dict[str, str] | None = None,
                      allow_outside_root: bool = False, findings: list[str] | dict[str, str] | None = None) -> ImportReport:
    """Import the collection(s) of `kind` under `root` into the manifest `out`.

    Args:
        kind: a registered kind (registry.kind_names()), or auto.
        root: the collection's folder, or a folder above it (searched two levels down).
        out: manifest CSV to write; masks composed at import go to `<out stem>_masks/` beside it.
        column_map: csv kind only: manifest column (or option) -> your CSV's column, or a template
            of your columns such as 'png/{image_id}.png' (generic_csv.py).
        source: csv kind only: the source name that prefixes ids.
        uncertain: chexpert (also through auto): how to read -1 labels: unknown, positive, negative.
        constants: csv kind only: manifest column -> one value for every row (--const).
        allow_outside_root: keep rows whose image path leaves the collection's folder (quarantined otherwise).
        findings: entries added to the finding vocabulary, 'TEXT=CLASS' strings (--finding; CLASS one
            of healthy, covid, other, unknown) or a mapping text -> class.

    Raises:
        CmtError: bad options, or nothing importable (the message lists why for each collection).
    """
    if kind != AUTO:
        get(kind)  # an unknown kind raises UnknownNameError, listing the valid ones
    # Image paths are written absolute: a root given relative to the shell's folder would not
    # resolve against the manifest's folder, which is how DESIGN.md reads relative paths.
    root, out = Path(root).resolve(), Path(out)
    if not root.exists():
        raise MissingInputError(f"collection folder not found: {root}")
    ctx = ImportContext(out=out, uncertain=uncertain, allow_outside_root=allow_outside_root, vocabulary=vocabulary(findings),
                        column_map=dict(column_map or {}), constants=dict(constants or {}), source=source)
    _check_options(kind, ctx)
    if kind == AUTO:
        result, not_imported = auto.read(root, ctx)
    else:
        result, not_imported = _read_kind(get(kind), root, ctx)
    finalise(result, ctx.vocabulary)
    df = result.frame()
    if df.empty:
        raise ManifestError(f"no images imported from {root} as {kind}; nothing written"
                            + "".join(f"\n  {f}: {why}" for f, why in not_imported)
                            + "".join(f"\n  {e['image_id']}: {e['reason']}" for e in result.quarantine[:10]))
    problems = check_manifest(df)
    if problems:  # validate.py should have made every row fit the contract
        raise ManifestError(f"import of {root} as {kind} broke the manifest contract: " + "; ".join(problems))
    write_manifest(df, out)
    qpath = write_quarantine(result.quarantine, quarantine_path(out))
    write_listing(result.notes, notes_path(out), NOTES_COLUMNS)
    write_listing([_not_imported_entry(f, why) for f, why in not_imported], not_imported_path(out), NOT_IMPORTED_COLUMNS)
    return ImportReport(kind, root, out, qpath, df, result.stats, result.quarantine, not_imported, result.notes)


def _check_options(kind: str, ctx: ImportContext) -> None:
    """Every option given must be one the kind reads (registry: a kind declares its options)."""
    if ctx.uncertain not in UNCERTAIN:
        raise ManifestError(f"uncertain must be one of {', '.join(UNCERTAIN)}, got {ctx.uncertain!r}")
    given = {"column_map": bool(ctx.column_map), "constants": bool(ctx.constants), "source": bool(ctx.source),
             "uncertain": ctx.uncertain != "unknown"}
    taken = options_of(kind)
    for option in (o for o, on in given.items() if on and o not in taken):
        takers = [n for n, k in kinds().items() if option in k.options]
        raise ManifestError(f"{FLAGS[option]} is for the {' and '.join(takers)} kind{'s' if len(takers) > 1 else ''} only; "
                            f"{kind} does not read it")
    if kind != AUTO and get(kind).check:
        get(kind).check(ctx)


def _read_kind(kind: CollectionKind, root: Path, ctx: ImportContext) -> tuple[CollectionResult, list[tuple[str, str]]]:
    """Every collection of `kind` under `root`; one that fails with a user error is listed, not fatal."""
    result, not_imported = CollectionResult(), []
    for folder in kind.find(root):
        try:
            result.extend(kind.read(folder, ctx))
        except CmtError as err:
            not_imported.append((auto.rel(folder, root), f"{kind.name} collection, import failed: {err}"))
    return result, not_imported


def _not_imported_entry(folder: str, why: str) -> dict:
    first = why.split(" ", 1)[0]
    return {"collection": first if first in kinds() else "", "folder": folder, "reason": why}
