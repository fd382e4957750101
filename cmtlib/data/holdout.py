"""A fold held out entirely: the development yardstick for films from a collection the run never saw.

`holdout` filters (the `holdout` params key) pick rows by a manifest column: `column=value` (equal,
ignoring case and surrounding space) or `column~pattern` (a case-insensitive regular expression
search); conditions joined by ` & ` must all hold (`source=ieee8023 & location~^$`), and a row
matching any of the listed filters is held out. Matching rows get split `holdout`; rows that share a patient or a duplicate group with
them but do not match get split `excluded` (neither trained on nor judged: a duplicate of a held-out
film in training would leak it). Everything else keeps its split. Nothing here knows a collection:
the filters come from the params file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from cmtlib.errors import ConfigError

DUPLICATE_GROUP = "duplicate_group"


@dataclass(frozen=True)
class HoldoutFilter:
    column: str
    value: str
    regex: bool

    def matches(self, df: pd.DataFrame) -> pd.Series:
        cells = df[self.column].fillna("").astype(str).str.strip()
        if self.regex:
            return cells.str.contains(self.value, case=False, regex=True)
        return cells.str.casefold() == self.value.strip().casefold()


def parse_filter(text: str) -> HoldoutFilter:
    """`column=value` or `column~pattern`; ConfigError saying the form otherwise."""
    match = re.fullmatch(r"\s*([A-Za-z_][\w]*)\s*(=|~)\s*(.+?)\s*", str(text))
    if match is None:
        raise ConfigError(f"holdout filter {text!r}: write column=value or column~pattern (e.g. source=figure1, location~italy|canada)")
    column, op, value = match.groups()
    if op == "~":
        try:
            re.compile(value)
        except re.error as err:
            raise ConfigError(f"holdout filter {text!r}: {value!r} is not a regular expression ({err})") from err
    return HoldoutFilter(column, value, op == "~")


@dataclass
class HoldoutReport:
    held_out: int
    excluded: int
    filters: list[str]

    def summary(self) -> str:
        return (f"held out {self.held_out} film(s) by {'; '.join(self.filters)}; {self.excluded} other film(s) share a patient "
                "or a duplicate group with them and are excluded from training and evaluation")


def apply_holdout(df: pd.DataFrame, filters: list[str]) -> tuple[pd.DataFrame, HoldoutReport]:
    """A copy of a split manifest with the held-out rows and their patients' and duplicates' rows
    re-assigned (module docstring). Raises ConfigError for an unknown column or a filter matching nothing."""
    parsed = [[parse_filter(part) for part in str(f).split(" & ")] for f in filters]
    missing = sorted({c.column for f in parsed for c in f} - set(df.columns))
    if missing:
        raise ConfigError(f"holdout filters name column(s) {missing}, which the manifest lacks; it has {', '.join(df.columns)}")
    out = df.copy()
    held = pd.Series(False, index=out.index)
    for text, conditions in zip(filters, parsed):
        hit = pd.Series(True, index=out.index)
        for c in conditions:
            hit &= c.matches(out)
        if not hit.any():
            raise ConfigError(f"holdout filter {text!r} matches no film; check the value against the manifest")
        held |= hit
    touching = pd.Series(False, index=out.index)
    for key in ("patient_id", DUPLICATE_GROUP):
        if key in out.columns:
            keys = set(out.loc[held & (out[key] != ""), key])
            touching |= out[key].isin(keys) & (out[key] != "")
    excluded = touching & ~held
    out.loc[held, "split"] = "holdout"
    out.loc[excluded, "split"] = "excluded"
    return out, HoldoutReport(int(held.sum()), int(excluded.sum()), [str(f) for f in filters])
