"""The harness of the issue-17 tests (test_import_labels.py, test_import_entries.py): a case writes
one of the tiny collections of import_fuzz_builders.py, corrupts it, imports it, and states the
exact outcome against the clean import of the same builder: which rows are imported and with
which labels, which image ids are quarantined and why, which notes are new and why, what the
summary says. Nothing else may change: every other row keeps the clean import's labels, and no
other quarantine entry or note appears."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

import import_fuzz_builders as B
from cmtlib.data.check import value_problems
from cmtlib.data.collections import import_collection
from cmtlib.data.manifest import LABEL_COLUMNS, check_manifest, import_findings, read_manifest
from cmtlib.errors import CmtError

CSV_OPTIONS = {"column_map": B.CSV_MAP, "source": "mine"}


@dataclass
class Outcome:
    """One corrupted collection and what its import must give (module docstring)."""

    id: str
    kind: str
    corrupt: Callable[[Path], object]
    labels: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # ids whose labels differ from clean, or new ids
    absent: tuple[str, ...] = ()                                           # clean ids no longer imported
    quarantined: dict[str, str] = field(default_factory=dict)              # image_id -> text of every entry's reason
    notes: dict[tuple[str, str], str] = field(default_factory=dict)        # new notes: (image_id, column) -> reason text
    fields: dict[tuple[str, str], str] = field(default_factory=dict)       # (image_id, column) -> exact value
    summary: tuple[str, ...] = ()                                          # texts the import summary prints
    options: dict = field(default_factory=dict)
    n_quarantined: int | None = None                                       # entries in all, where ids repeat
    error: str = ""                                                        # the import refuses, naming this


@dataclass
class Imported:
    df: pd.DataFrame
    quarantine: pd.DataFrame
    notes: pd.DataFrame
    summary: str

    def labels(self) -> dict[str, tuple[str, ...]]:
        return {iid: tuple(row) for iid, row in zip(self.df["image_id"], self.df[list(LABEL_COLUMNS)].itertuples(index=False))}


def options(case: Outcome) -> dict:
    return case.options or (dict(CSV_OPTIONS) if case.kind == "csv" else {})


def import_built(kind: str, tmp: Path, corrupt: Callable[[Path], object] | None, opts: dict) -> Imported:
    root = B.BUILDERS[kind](tmp)
    if corrupt is not None:
        corrupt(tmp)
    out = tmp / "out" / "m.csv"
    report = import_collection(kind, root, out, **opts)
    df = read_manifest(out)
    assert check_manifest(df) == [] and value_problems(df, out, opts.get("findings", ())) == []
    q, notes, _ = import_findings(out)
    return Imported(df, q, notes, report.summary())


_clean: dict[str, Imported] = {}


def clean(kind: str, tmp_factory) -> Imported:
    if kind not in _clean:
        _clean[kind] = import_built(kind, tmp_factory.mktemp(f"clean-{kind}"), None, dict(CSV_OPTIONS) if kind == "csv" else {})
    return _clean[kind]


def check(case: Outcome, tmp: Path, tmp_factory) -> Imported | None:
    """Import the corrupted collection and assert the case's outcome exactly."""
    if case.error:
        with pytest.raises(CmtError, match=case.error):
            import_built(case.kind, tmp, case.corrupt, options(case))
        return None
    base = clean(case.kind, tmp_factory)
    run = import_built(case.kind, tmp, case.corrupt, options(case))
    old, new = base.labels(), run.labels()
    assert set(new) == (set(old) - set(case.absent)) | set(case.labels), f"{case.id}: imported ids {sorted(new)}"
    assert {i: new[i] for i in new} == {i: case.labels.get(i, old.get(i)) for i in new}, f"{case.id}: labels"
    got = run.quarantine.groupby("image_id")["reason"].apply(list).to_dict()
    assert set(got) == set(case.quarantined), f"{case.id}: quarantined {got}"
    for iid, text in case.quarantined.items():
        assert all(text in reason for reason in got[iid]), f"{case.id}: {iid} quarantined for {got[iid]}"
    if case.n_quarantined is not None:
        assert len(run.quarantine) == case.n_quarantined
    seen = Counter(zip(base.notes["image_id"], base.notes["column"]))
    fresh: dict[tuple[str, str], list[str]] = {}
    for iid, column, reason in zip(run.notes["image_id"], run.notes["column"], run.notes["reason"]):
        if seen[(iid, column)]:
            seen[(iid, column)] -= 1
            continue
        fresh.setdefault((iid, column), []).append(reason)
    assert set(fresh) == set(case.notes), f"{case.id}: new notes {fresh}"
    for key, text in case.notes.items():
        assert any(text in reason for reason in fresh[key]), f"{case.id}: note {key}: {fresh[key]}"
    rows = run.df.set_index("image_id")
    for (iid, column), value in case.fields.items():
        assert rows.loc[iid, column] == value, f"{case.id}: {iid} {column} is {rows.loc[iid, column]!r}"
    for text in case.summary:
        assert text in run.summary, f"{case.id}: summary lacks {text!r}:\n{run.summary}"
    return run


def edit_rows(path: Path, fn: Callable[[list[str]], list[str]], encoding: str = "utf-8") -> None:
    """Rewrite a CSV's lines (header included) through `fn`."""
    lines = path.read_bytes().decode(encoding).splitlines()
    path.write_bytes(("\n".join(fn(lines)) + "\n").encode(encoding))


def repeat_header(path: Path, after: int = 1, encoding: str = "utf-8") -> None:
    """The header line again after data line `after` (a file joined from two parts)."""
    edit_rows(path, lambda lines: lines[:after + 1] + [lines[0]] + lines[after + 1:], encoding)


def add_column(path: Path, name: str, values: list[str], encoding: str = "utf-8") -> None:
    edit_rows(path, lambda lines: [f"{lines[0]},{name}"] + [f"{line},{v}" for line, v in zip(lines[1:], values)], encoding)
