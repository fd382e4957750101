"""The collection kinds `cmt data import` knows, each declared once, by its own importer module.

An importer module ends with `register(CollectionKind(...))`: its name, how it finds its folders
under a ROOT, how it reads one, how `auto` recognises its folder, the import options it reads and
a plain line per source for the data page. Everything that lists kinds reads this registry: the
CLI's choices for `cmt data import`, `auto`'s detection, `data_kind` in params
(cmtlib.data.prepare), the data page's notes on each source, and the import's option checks.
`kinds()` imports every module of this package first, so a new importer is one new module here
(docs/CONTRIBUTING.md); a module outside the package registers itself when it is imported.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cmtlib.errors import UnknownNameError

if TYPE_CHECKING:  # the types only: common.py imports pandas, and this module stays light
    from cmtlib.data.collections.common import CollectionResult, ImportContext

AUTO = "auto"
# Import options a kind may read from its ImportContext beyond the ones every kind takes
# (allow_outside_root, the finding vocabulary): the csv kind's column mapping, constants and
# source name, CheXpert's reading of uncertain labels.
OPTIONS = ("column_map", "constants", "source", "uncertain")
# How sure a detector is: the collection's own marker files; its layout with something wrong
# (imported anyway, so that the summary says what is wrong); not this kind.
MARKED, LOOKS_LIKE, NO = 2, 1, 0


@dataclass(frozen=True)
class CollectionKind:
    """One importer.

    Attributes:
        name: the KIND of `cmt data import KIND` and of `data_kind` in params.
        find: ROOT -> the folders (or files) of this kind under it; raises a CmtError naming what it
            looked for when there is none.
        read: (one of those, ImportContext) -> CollectionResult.
        detect: folder -> MARKED, LOOKS_LIKE or NO, for `auto`; None: `auto` never picks this kind
            (the csv kind, which needs a column mapping).
        options: which of OPTIONS it reads; `required`: those it cannot import without (a kind with
            any cannot be a `data_kind`, which passes no options).
        sources: source name -> one plain line about that collection for the data page.
        companions: folder -> the folders it reads beside it (annotation repositories), which
            `auto` then counts as used rather than unknown.
        check: ImportContext -> None, raising a CmtError for options it cannot work with, before
            any file is read.
        help: one line for `cmt data import --help`.
    """

    name: str
    find: Callable[[Path], list[Path]]
    read: Callable[[Path, "ImportContext"], "CollectionResult"]
    detect: Callable[[Path], int] | None = None
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    companions: Callable[[Path], list[Path]] | None = None
    check: Callable[["ImportContext"], None] | None = None
    help: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - set(OPTIONS)) + sorted(set(self.required) - set(self.options))
        if unknown:
            raise ValueError(f"collection kind {self.name}: options {unknown} are not among {OPTIONS} (or required but not taken)")


_KINDS: dict[str, CollectionKind] = {}


def register(kind: CollectionKind) -> CollectionKind:
    """Add a kind (at the end of its importer module). A name registered twice is a mistake that
    would make one importer shadow another, so it raises."""
    if kind.name == AUTO or (kind.name in _KINDS and _KINDS[kind.name] is not kind):
        raise ValueError(f"collection kind {kind.name!r} is already defined; pick another name")
    _KINDS[kind.name] = kind
    return kind


@functools.cache
def _load_package() -> None:
    """Import every module of this package (once per process), so that each importer has
    registered itself."""
    package = importlib.import_module("cmtlib.data.collections")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def kinds() -> dict[str, CollectionKind]:
    """Every registered kind by name, sorted by name (a copy): the same order whichever module
    was imported first."""
    _load_package()
    return dict(sorted(_KINDS.items()))


def kind_names() -> tuple[str, ...]:
    """The KINDs `cmt data import` accepts: every registered kind, then auto."""
    return (*kinds(), AUTO)


def data_kinds() -> tuple[str, ...]:
    """The kinds `data_kind` may name: auto and the kinds that need no option."""
    return tuple(n for n, k in kinds().items() if not k.required) + (AUTO,)


def get(name: str) -> CollectionKind:
    found = kinds()
    if name not in found:
        raise UnknownNameError(f"unknown collection kind {name!r}; valid: {', '.join((*found, AUTO))}")
    return found[name]


def options_of(name: str) -> tuple[str, ...]:
    """The options a kind reads; auto reads those of every kind it can pick."""
    if name == AUTO:
        return tuple(sorted({o for k in kinds().values() if k.detect for o in k.options}))
    return get(name).options


def source_notes() -> dict[str, str]:
    """Source name -> the line the data page says about it, for every registered kind."""
    return {s: note for k in kinds().values() for s, note in k.sources.items()}
