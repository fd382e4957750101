"""Tables for the report pages: functions take DataFrames / dicts and return DataFrames (or HTML).

Nothing here prints image file paths or DICOM identifiers: images are named by `image_id` only,
path columns are dropped and path-like text in free-text cells is redacted.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

UNKNOWN = "(unknown)"
SPLIT_ORDER = ("train", "val", "test")
CLASS_ORDER = ("COVID-19", "healthy", "other disease", UNKNOWN)
# Columns that hold file locations (manifest, cache index, quarantine): never shown.
PATH_COLUMNS = frozenset({"path", "lung_mask", "disease_mask", "file", "filename", "file_name", "source_path"})
# Absolute paths (/x, ~/x, C:\\x), ./ or ../ relative paths, and any token naming an image or DICOM file.
_PATH_TEXT = re.compile(
    r"""(?<![\w.])(?:[A-Za-z]:[\\/]|~?/|\.\.?[\\/])[^\s'",;]+"""
    r"""|[^\s'",;:()\[\]]+\.(?:png|jpe?g|dcm|dicom|tiff?|bmp|gif|npy)\b""",
    re.IGNORECASE,
)

# The headline numbers of every report: (metrics.json key, label, plain-language meaning).
HEADLINE = (
    ("covid.auc", "COVID-19 AUC", "how well COVID-19 scores separate COVID-19 from other films (1 = perfectly, 0.5 = chance)"),
    ("covid.sens_at_spec99", "Sensitivity at 99 % specificity", "share of COVID-19 films flagged when only 1 in 100 non-COVID films is falsely flagged"),
    ("covid.eer", "Equal error rate", "the error rate where missed COVID-19 films and false alarms are equally frequent (lower is better)"),
    ("lung.dice", "Lung Dice", "overlap of the outlined lungs with the reference outline (1 = identical)"),
)


def redact_paths(text: str) -> str:
    """Replace file paths and image file names in free text with `<file>`."""
    return _PATH_TEXT.sub("<file>", str(text))


def safe_table(df: pd.DataFrame) -> pd.DataFrame:
    """A copy without path columns and with path-like text redacted (for any table shown)."""
    keep = [c for c in df.columns if str(c).lower() not in PATH_COLUMNS and not str(c).lower().endswith("_path")]
    out = df[keep].copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(lambda v: redact_paths(v) if isinstance(v, str) else v)
    return out


def _is_one(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.replace("", np.nan), errors="coerce") == 1


def class_label(df: pd.DataFrame) -> pd.Series:
    """One class name per row from the label columns: COVID-19, healthy, other disease, or unknown."""
    out = pd.Series(UNKNOWN, index=df.index, dtype=object)
    for col, name in (("label_other", "other disease"), ("label_healthy", "healthy"), ("label_covid", "COVID-19")):
        if col in df.columns:
            out[_is_one(df[col])] = name
    return out


def _values(df: pd.DataFrame, column: str) -> pd.Series:
    if column == "class":
        return class_label(df)
    if column not in df.columns:
        raise KeyError(f"table needs column {column!r}; the manifest has {', '.join(map(str, df.columns))}")
    return df[column].fillna("").astype(str).replace("", UNKNOWN)


def counts_table(df: pd.DataFrame, by: str, columns: str = "split") -> pd.DataFrame:
    """Image counts with one row per value of `by` ('class' = the label), one column per split,
    and totals. Empty values count as '(unknown)'; splits appear in train, val, test order."""
    rows = _values(df, by)
    cols = _values(df, columns) if columns else pd.Series("images", index=df.index)
    table = pd.crosstab(rows, cols)
    order = [c for c in (*SPLIT_ORDER, *sorted(table.columns)) if c in table.columns]
    table = table[list(dict.fromkeys(order))]
    row_order = [r for r in CLASS_ORDER if r in table.index] if by == "class" else sorted(table.index, key=lambda v: (v == UNKNOWN, v))
    table = table.loc[row_order]
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name = by
    table.columns.name = None
    return table.astype(int)


def licence_table(df: pd.DataFrame) -> pd.DataFrame:
    """Images per licence with their share; an empty licence is '(not given)'."""
    lic = df["license"].fillna("").astype(str).replace("", "(not given)") if "license" in df.columns else pd.Series("(not given)", index=df.index)
    counts = lic.value_counts()
    return pd.DataFrame({"licence": counts.index, "images": counts.to_numpy(),
                         "share": [f"{100 * n / max(len(df), 1):.1f} %" for n in counts.to_numpy()]})


def quarantine_table(df: pd.DataFrame) -> pd.DataFrame:
    """image_id and reason only (the reason with any path redacted)."""
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=["image_id", "reason"])
    out = pd.DataFrame({"image_id": df["image_id"].astype(str),
                        "reason": df["reason"].astype(str).map(redact_paths) if "reason" in df.columns else ""})
    return out.drop_duplicates().reset_index(drop=True)


def notes_table(df: pd.DataFrame | None) -> pd.DataFrame:
    """Fields the import left unknown: image, field, the value it found (paths hidden) and why."""
    cols = ["image_id", "field", "value found", "reason"]
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=cols)
    hidden = df["column"].astype(str).isin(("path", "lung_mask", "disease_mask"))
    value = df["value"].astype(str).map(redact_paths).where(~hidden, "(a file name: not shown)")
    out = pd.DataFrame({"image_id": df["image_id"].astype(str), "field": df["column"].astype(str), "value found": value,
                        "reason": df["reason"].astype(str).map(redact_paths)}, columns=cols)
    return out.drop_duplicates().reset_index(drop=True)


def not_imported_table(df: pd.DataFrame | None) -> pd.DataFrame:
    """Collections the import could not use, with the reason (their folders are not shown)."""
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=["collection", "reason"])
    return pd.DataFrame({"collection": df["collection"].astype(str),
                         "reason": df["reason"].astype(str).map(redact_paths)}).drop_duplicates().reset_index(drop=True)


def params_table(flat: dict[str, Any], owner: dict[str, str] | None = None, sections: Iterable[str] = ()) -> pd.DataFrame:
    """Parameters as rows (section, parameter, value), sorted by section then name; `sections`
    keeps only those sections (owner maps key -> section, as cmtlib.params.key_owner())."""
    sections = set(sections)
    rows = [{"section": (owner or {}).get(k, ""), "parameter": k, "value": _fmt_value(v)} for k, v in flat.items()
            if not sections or (owner or {}).get(k, "") in sections]
    return pd.DataFrame(rows, columns=["section", "parameter", "value"]).sort_values(["section", "parameter"]).reset_index(drop=True)


def _fmt_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if v else "(none)"
    if v == "":
        return "(default)"
    return str(v)


def get_path(d: dict | None, dotted: str) -> Any:
    """`metrics["covid"]["auc"]` as get_path(metrics, "covid.auc"); None when absent."""
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def as_number(v: Any) -> float | None:
    """A finite float, or None (missing, NaN, infinite, not a number)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def ci_text(value: Any, low: Any = None, high: Any = None, digits: int = 3) -> str:
    """'0.953 (95 % CI 0.921 to 0.978)'; 'not available' when the value is missing."""
    v = as_number(value)
    if v is None:
        return "not available"
    lo, hi = as_number(low), as_number(high)
    text = f"{v:.{digits}f}"
    if lo is not None and hi is not None:
        text += f" (95 % CI {lo:.{digits}f} to {hi:.{digits}f})"
    return text


def headline_table(metrics: dict | None) -> pd.DataFrame:
    """The report's headline metrics: metric, value, ci_low, ci_high, text, meaning."""
    rows = []
    for key, label, meaning in HEADLINE:
        section, name = key.split(".")
        block = get_path(metrics, section) if metrics else None
        value = get_path(block, name) if isinstance(block, dict) else None
        low = block.get(f"{name}_ci_low") if isinstance(block, dict) else None
        high = block.get(f"{name}_ci_high") if isinstance(block, dict) else None
        rows.append({"metric": label, "value": as_number(value), "ci_low": as_number(low), "ci_high": as_number(high),
                     "text": ci_text(value, low, high), "meaning": meaning, "key": key})
    return pd.DataFrame(rows)


def epoch_times(history: pd.DataFrame) -> pd.DataFrame:
    """Seconds per epoch (from a `seconds` / `time` / `epoch_time` column); empty if not recorded."""
    col = next((c for c in ("epoch_seconds", "seconds", "epoch_time", "time", "duration") if c in history.columns), None)
    if col is None or history.empty:
        return pd.DataFrame(columns=["epoch", "seconds"])
    epochs = history["epoch"] if "epoch" in history.columns else pd.Series(range(1, len(history) + 1))
    return pd.DataFrame({"epoch": epochs.to_numpy(), "seconds": pd.to_numeric(history[col], errors="coerce").round(1).to_numpy()})


def to_html(df: pd.DataFrame, max_rows: int | None = None, index: bool = False, digits: int = 3) -> str:
    """HTML table (class cmt-table) with the rows beyond `max_rows` counted, not shown."""
    shown = df if max_rows is None or len(df) <= max_rows else df.head(max_rows)
    body = shown.to_html(classes="cmt-table", border=0, index=index, na_rep="–", escape=True,
                         float_format=lambda x: f"{x:.{digits}f}")
    if len(shown) < len(df):
        body += f'<p class="cmt-caption">… and {len(df) - len(shown)} more rows (of {len(df)}).</p>'
    return body


def dict_rows(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column HTML table of (label, value) pairs; values are escaped."""
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)
    return f'<table class="cmt-table">{cells}</table>'
