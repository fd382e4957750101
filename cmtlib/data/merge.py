"""`cmt data merge A.csv B.csv --out C.csv`: several manifests joined into one, before the split.

A relative path cell is relative to its own manifest's folder (DESIGN.md); in C it is rewritten
relative to C's folder when the file lies below that folder, and absolute otherwise, so every row
still points at its file. Columns are the union (a column one input lacks is empty = unknown in
its rows). Duplicate image ids are refused with their rows. The findings of each input
(`<stem>.quarantine.csv`, `.notes.csv`, `.not_imported.csv`) are joined beside C as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cmtlib.errors import MissingInputError
from cmtlib.data.manifest import (
    COLUMNS, NOT_IMPORTED_COLUMNS, NOTES_COLUMNS, PATH_COLUMNS, QUARANTINE_COLUMNS, ManifestError, check_manifest, import_findings,
    not_imported_path, notes_path, quarantine_path, read_manifest, resolve_path, write_listing, write_manifest,
)
from cmtlib.data.rules import same_path_groups


@dataclass
class MergeReport:
    out: Path
    inputs: list[tuple[Path, int]] = field(default_factory=list)  # (manifest, rows)
    findings: tuple[int, int, int] = (0, 0, 0)                     # quarantined, notes, not imported
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        df_rows = sum(n for _, n in self.inputs)
        q, n, ni = self.findings
        lines = [f"wrote {self.out}: {df_rows} rows from {len(self.inputs)} manifest(s)"]
        lines += [f"  {path}: {rows} rows" for path, rows in self.inputs]
        lines.append(f"findings joined beside it: {q} quarantined, {n} note(s), {ni} collection(s) not imported")
        lines += [f"note: {t}" for t in self.notes]
        return "\n".join(lines)


def rebase(cell: str, source: Path, out: Path) -> str:
    """A path cell of the manifest `source` as the manifest `out` must spell it."""
    if not cell or Path(cell).is_absolute():
        return cell
    target = Path(os.path.normpath(resolve_path(source, cell)))
    folder = Path(os.path.normpath(out.resolve().parent))
    if folder == target or folder in target.parents:
        return target.relative_to(folder).as_posix()
    return str(target)


def merge_manifests(inputs: list[str | os.PathLike], out: str | os.PathLike) -> MergeReport:
    """Join `inputs` into `out` (module docstring).

    Raises:
        MissingInputError: an input is not there. ManifestError: an input is not a manifest, an
            image id occurs twice (the rows are named), or the joined manifest breaks the contract.
    """
    out = Path(out)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ManifestError("cmt data merge needs at least one manifest to join")
    twice = sorted({str(p) for p in paths if sum(q.resolve() == p.resolve() for q in paths) > 1})
    if twice:
        raise ManifestError(f"{', '.join(twice)} given twice; name each manifest once")
    for p in paths:
        if not p.is_file():
            raise MissingInputError(f"manifest not found: {p}")
        if p.resolve() == out.resolve():
            raise ManifestError(f"--out {out} is also an input; write the merge to a new file")
    frames, origin = [], []
    report = MergeReport(out)
    for p in paths:
        df = read_manifest(p)
        if "image_id" not in df.columns or "path" not in df.columns:
            raise ManifestError(f"{p} lacks image_id or path; is it a manifest (cmt data import)?")
        for col in PATH_COLUMNS:
            if col in df.columns:
                df[col] = [rebase(v, p, out) for v in df[col]]
        frames.append(df)
        origin += [f"{p} row {i + 2}" for i in range(len(df))]
        report.inputs.append((p, len(df)))
    merged = pd.concat(frames, ignore_index=True).fillna("").astype(str)
    for col in COLUMNS:
        if col not in merged.columns:
            merged[col] = ""  # unknown (DESIGN.md), as write_manifest would add it
    _refuse_duplicates(merged, origin)
    problems = check_manifest(merged)
    if problems:
        raise ManifestError("the merged manifest would break the contract (nothing written): " + "; ".join(problems))
    same = same_path_groups([str(resolve_path(out, v)) if v else "" for v in merged["path"]])
    if same:
        report.notes.append(f"{len(same)} file(s) listed under two image ids, e.g. {', '.join(origin[i] for i in same[0])}; "
                            "`cmt data check` names any whose labels differ, and the split keeps each together")
    write_manifest(merged, out)
    report.findings = _join_findings(paths, out)
    return report


def _refuse_duplicates(merged: pd.DataFrame, origin: list[str]) -> None:
    dup = merged["image_id"].duplicated(keep=False) & (merged["image_id"] != "")
    if not dup.any():
        return
    groups: dict[str, list[str]] = {}
    for i in dup[dup].index:
        groups.setdefault(merged.at[i, "image_id"], []).append(origin[i])
    listed = "; ".join(f"{iid} at {', '.join(rows)}" for iid, rows in list(groups.items())[:10])
    more = f"; and {len(groups) - 10} more" if len(groups) > 10 else ""
    raise ManifestError(f"{len(groups)} image id(s) occur more than once: {listed}{more}. The same collection "
                        "imported twice? Keep one copy (or import them under different --source names); nothing written")


def _join_findings(paths: list[Path], out: Path) -> tuple[int, int, int]:
    parts = [import_findings(p) for p in paths]
    joined = [pd.concat([part[k] for part in parts], ignore_index=True).drop_duplicates() for k in range(3)]
    write_listing(joined[0], quarantine_path(out), QUARANTINE_COLUMNS)
    write_listing(joined[1], notes_path(out), NOTES_COLUMNS)
    write_listing(joined[2], not_imported_path(out), NOT_IMPORTED_COLUMNS)
    return len(joined[0]), len(joined[1]), len(joined[2])
