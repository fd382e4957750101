"""What every result page (notebooks 02-09) says about its run, and the facts pages leave for the
report's index.

Builders are pure (DataFrames and strings in, DataFrames and strings out) and tested; the helpers
that show something on a page return None, like cmtlib.report.pages.show. Words are plain, for
clinicians; images are named by image_id only.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from cmtlib.fileio import read_json, write_json
from cmtlib.report.pages import show
from cmtlib.report.pages.data import SOURCE_NOTES
from cmtlib.report.pages.training import weights_text


def provenance_line(params: Any, predictions: pd.DataFrame | None = None) -> str:
    """Where the films come from, in one line (synthetic phantoms, or the named public collections)."""
    if params.data.data_kind == "synthetic":
        return ("Synthetic chest X-ray phantoms drawn by cmtlib, not patients: results here show that the method and "
                "software work, not how they would perform in a clinic.")
    sources = []
    if predictions is not None and "source" in predictions.columns:
        sources = sorted(predictions["source"].fillna("").astype(str).replace("", "unknown").unique())
    named = [f"{s} ({next((v for k, v in SOURCE_NOTES.items() if s.lower().startswith(k)), 'a public collection')})"
             for s in sources]
    return ("Public research collections of chest X-rays" + (f": {'; '.join(named)}" if named else "")
            + ". They are convenience samples, not a clinical population.")


def context_rows(params: Any, run: Any) -> list[tuple[str, str]]:
    """(label, text) rows every result page starts with: where the weights and the data come from."""
    return [("network's starting weights", weights_text(run.info)),
            ("data", provenance_line(params, run.predictions))]


def context(params: Any, run: Any) -> None:
    """Show `context_rows` as a small table."""
    show.facts(context_rows(params, run))


def bullets_html(items: Iterable[str], empty: str = "None.") -> str:
    items = [str(i) for i in items]
    if not items:
        return show.text_html(empty)
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def bullets(items: Iterable[str], empty: str = "None.") -> None:
    """A bulleted list of plain sentences (or `empty` said when there are none)."""
    show.show_html(bullets_html(items, empty))


def record_facts(report_dir: str | Path, **facts: Any) -> None:
    """Merge facts (quarantine count, manifest hash, ...) into <report_dir>/facts.json for the index.
    Returns None so that a notebook cell ending with it shows nothing."""
    path = Path(report_dir) / "facts.json"
    write_json(path, {**(read_json(path, {}) or {}), **facts})


def read_facts(report_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(report_dir) / "facts.json", {}) or {}
