"""`cmt data import auto ROOT`: every known collection under ROOT in one manifest.

A folder is a collection when a registered kind recognises it (registry.py: each importer's
`detect`, by its marker files: ieee8023 / Figure1 / Actualmed: metadata.csv in their schema beside
images/; ChestX-ray14: Data_Entry_2017*.csv[.gz]; CheXpert: train.csv / valid.csv with
Frontal/Lateral; TBX11K: imgs/ + annotations/json/TBX11K_*.json). A kind sure of its markers wins
over one that only recognises the layout (metadata.csv beside images/ in no known schema is
imported as the closer of the two, so that the summary says what is wrong with it); among equals
the first by name wins. Folders a kind reads beside its collection (its `companions`: the
GeneralBlockchain segmentations, V7 polygons, severity scores of ieee8023) count as used. Every
other folder directly under ROOT is named in the summary with why it was not imported, as is a
collection that failed or whose ids clash with one already imported (the same collection twice).
A collection fails only with a user error (a `CmtError`: a metadata file that cannot be read, a
missing column); every other exception is a bug and stops the import with its traceback.
"""

from __future__ import annotations

from pathlib import Path

from cmtlib.errors import CmtError
from cmtlib.data.collections.common import CollectionResult, ImportContext, walk_dirs
from cmtlib.data.collections.registry import NO, CollectionKind, kinds

MAX_DEPTH = 3


def detect(folder: Path) -> str | None:
    """The kind of collection `folder` holds, by its marker files, or None."""
    best, score = None, NO
    for name, kind in kinds().items():
        found = kind.detect(folder) if kind.detect else NO
        if found > score:
            best, score = name, found
    return best


def _inside(path: Path, parents: list[Path]) -> bool:
    return any(p == path or p in path.parents for p in parents)


def read(root: Path, ctx: ImportContext) -> tuple[CollectionResult, list[tuple[str, str]]]:
    registered: dict[str, CollectionKind] = kinds()
    found: list[tuple[Path, str]] = []
    for d in walk_dirs(root, MAX_DEPTH):
        if _inside(d, [f for f, _ in found]):
            continue  # a collection's own subfolders (images/, annotations/) are part of it
        kind = detect(d)
        if kind:
            found.append((d, kind))
    result = CollectionResult()
    not_imported: list[tuple[str, str]] = []
    used: list[Path] = [f for f, _ in found]
    ids: set[str] = set()
    for folder, kind in found:
        if registered[kind].companions:
            used += registered[kind].companions(folder)
        try:
            part = registered[kind].read(folder, ctx)
        except CmtError as err:
            not_imported.append((rel(folder, root), f"{kind} collection, import failed: {err}"))
            continue
        new = {row["image_id"] for row in part.rows}
        clash = sorted(new & ids)
        if clash:
            not_imported.append((rel(folder, root), f"{kind} ids already imported from another folder "
                                 f"(e.g. {', '.join(clash[:3])}): the same collection twice?"))
            continue
        ids |= new
        result.extend(part)
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _inside(d, used) and not any(d in u.parents for u in used):
            not_imported.append((rel(d, root), f"no known collection marker ({_describe(d)})"))
    return result, not_imported


def rel(path: Path, root: Path) -> str:
    """The folder as the summary names it: relative to ROOT, or ROOT itself."""
    return str(path.relative_to(root)) if path != root else str(root)


def _describe(folder: Path) -> str:
    files = sorted(p.name for p in folder.rglob("*") if p.is_file())
    shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
    return f"{len(files)} files: {shown}" if files else "empty"
