"""Per-row reading shared by the importers: a row that cannot be used costs only itself.

- `frontal_view`: a row's view; laterals are counted, a view the import does not know is quarantined.
- `row_guard`: a `with` block around one metadata row; a `CmtError` raised inside it (a `RowError`
  from the helpers here, a ManifestError from the id and label rules) quarantines that row with
  the file line and the reason, and the loop goes on. Other exceptions are bugs and propagate.
- `admit_image`: a row's image must lie inside the collection's folder (unless the user allowed
  otherwise) and have a readable header within the cache's pixel limit; otherwise it is
  quarantined.
- `quarantine_bad_lines`: the lines `tables.read_table` could not trust, quarantined by line.
- `read_table_or_note`: a companion file (annotations, masks, scores) that cannot be read at all
  leaves its field unknown for the whole source, with a note, instead of stopping the import.
- `note_damaged`: cells `read_table` blanked on a kept line (bytes not valid in the file's encoding
  in a column that is not critical), noted on the row's image.
- `same_name_copies`: one image name found at several places in a collection: identical bytes are
  one file (kept once, noted), one size with different bytes is quarantined, several sizes are
  one picture at several sizes (a duplicate group for the caller).
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cmtlib.errors import CmtError
from cmtlib.data.collections.common import (
    LATERAL, CollectionResult, ImportContext, SourceStats, normalise_view, probe_image, quarantine_entry,
)
from cmtlib.data.rules import file_digest
from cmtlib.data.tables import Table, read_table


class RowError(CmtError):
    """One metadata row or annotation that cannot be used; the import quarantines it and goes on."""


@dataclass
class RowGuard:
    """What is known of the row so far, for its quarantine entry."""

    where: str
    image_id: str = ""
    path: str = ""


@contextlib.contextmanager
def row_guard(result: CollectionResult, source: str, where: str) -> Iterator[RowGuard]:
    """Quarantine the row when the block raises a CmtError; set `.image_id` / `.path` as they become known."""
    guard = RowGuard(where)
    try:
        yield guard
    except CmtError as err:
        result.quarantine.append(quarantine_entry(guard.image_id or f"{source}:{where}", guard.path or where, f"{where}: {err}"))


def frontal_view(raw: str, stats: SourceStats, column: str = "view") -> str | None:
    """The row's view: PA, AP, AP Supine, or '' when blank (the caller decides what a blank view
    means); None for a lateral film, left out and counted (DESIGN.md). A view the import does not
    know is not guessed either way: RowError (the row is quarantined with the text)."""
    kind, view = normalise_view(raw)
    if kind == "lateral":
        stats.skip(LATERAL)
        return None
    if kind == "other":
        raise RowError(f"{column} {cell(raw)!r} is not a view the import knows (PA, AP, AP Supine; a lateral is left "
                       "out): whether the film is frontal is unknown")
    return view


def line_of(table: Table, line: int) -> str:
    return f"{table.path.name} line {line}"


def quarantine_bad_lines(table: Table, result: CollectionResult, source: str) -> None:
    """Each line read_table left out, as a quarantine entry naming the file and line."""
    for line, why, _ in table.bad_lines:
        where = line_of(table, line)
        result.quarantine.append(quarantine_entry(f"{source}:{where}", f"{table.path}:{line}", f"{where} {why}"))


def inside(path: Path, root: Path) -> bool:
    """Whether `path` lies in `root`, compared after resolving '..' but not symbolic links: a
    collection folder of links to files elsewhere is the user's own layout."""
    p, r = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root))
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def admit_image(result: CollectionResult, ctx: ImportContext, image_id: str, path: Path, root: Path | None,
                where: str) -> tuple[int, int] | None:
    """The image's (width, height), or None after quarantining it (outside `root`, unreadable header).

    Args:
        root: the collection's folder; None = any location (absolute paths of a user's CSV).
    """
    if root is not None and not ctx.allow_outside_root and not inside(path, root):
        result.quarantine.append(quarantine_entry(image_id, path, (
            f"{where}: path leaves the collection's folder {root} ('..' or an absolute path in the metadata); "
            "fix the path, or import with --allow-outside-root if that is intended")))
        return None
    size, problem = probe_image(path)
    if size is None:
        result.quarantine.append(quarantine_entry(image_id, path, problem))
    return size


def read_table_or_note(path: Path, result: CollectionResult, source: str, column: str, **kwargs) -> Table | None:
    """A companion table, or None after noting that `column` stays unknown for the whole source."""
    try:
        return read_table(path, **kwargs)
    except CmtError as err:
        result.note(f"{source}:*", column, path, f"{err}; {column} left unknown")
        return None


def cell(value: object) -> str:
    """A table cell as stripped text."""
    return str(value).strip()


def note_damaged(table: Table, line: int, image_id: str, result: CollectionResult, used: Collection[str] = ()) -> None:
    """A note per cell of this line that `read_table` blanked: bytes not valid in the file's
    encoding in a column that is not critical. `used`: the columns the import reads (left unknown);
    any other column is one the import does not use (the row is kept as it is)."""
    for column, shown in table.damaged.get(line, ()):
        what = "left unknown" if column in used else "a column the import does not use; the row is kept"
        result.note(image_id, column, shown, f"{line_of(table, line)}: holds bytes that are not text in the file's encoding "
                    f"({table.encoding}); {what}")


def same_name_copies(result: CollectionResult, ctx: ImportContext, image_id: str, paths: list[Path], root: Path | None,
                     where: str) -> list[tuple[Path, tuple[int, int]]]:
    """The files to import for one image name found at `paths`, as (path, (width, height)), one
    per size, sorted by size (module docstring). Never a silent choice: every copy left out is
    quarantined (different bytes at one size, or not admitted by `admit_image`) or noted (identical
    bytes: the first in sort order is kept)."""
    by_size: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for path in sorted(paths):
        size = admit_image(result, ctx, image_id, path, root, where)
        if size is not None:
            by_size[size].append(path)
    out = []
    for size, group in sorted(by_size.items()):
        digests = {file_digest(p) for p in group}
        if len(group) == 1 or (len(digests) == 1 and b"" not in digests):
            for other in group[1:]:
                result.note(image_id, "path", str(other), f"{where}: the same file (identical bytes) as {group[0]}; "
                            "imported once, from the first")
            result.stats[0].keep("images found at two or more places with identical bytes: imported once (see notes)",
                                 int(len(group) > 1))
            out.append((group[0], size))
            continue
        listed = ", ".join(str(p) for p in group)
        for path in group:
            result.quarantine.append(quarantine_entry(image_id, path, (
                f"{where}: {len(group)} files carry this image's name at one size ({size[0]}x{size[1]} px) with different "
                f"bytes ({listed}): which one the metadata describes is unknown; remove the wrong copy")))
    return out
