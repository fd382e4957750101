"""What a notebook cell shows on a report page: a heading, a plain-language caption, a table, a
figure, a notice. Each helper displays its HTML in the notebook (so on the page) and returns None;
each has a pure `*_html` builder that the tests check.

Figures are embedded as PNG data: URIs inside the HTML output, so a page never depends on pyplot's
global state or on an inline backend being active, and the caption doubles as the alt text.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pandas as pd

from cmtlib.report.pages.tables import dict_rows, to_html

NOTICE_KINDS = ("info", "warning", "error", "ok", "todo")
# Marks a page-level "not implemented yet" notice; the chain lists such a page as a placeholder.
PLACEHOLDER_CLASS = "cmt-placeholder"
RESEARCH_ONLY = "Research use only — not a medical device. Nothing on this page may be used to diagnose or treat a patient."


def show_html(markup: str) -> None:
    """Display raw HTML in the running notebook (so on its page); outside IPython, nothing."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(HTML(markup))


# Each helper below has a pure `*_html` builder (tested) and a display function that returns None,
# so a helper on a cell's last line does not also print its markup as the cell's result.
def heading_html(text: str, level: int = 2) -> str:
    if level not in (1, 2, 3, 4):
        raise ValueError(f"heading level must be 1 to 4, got {level}")
    return f"<h{level}>{html.escape(text)}</h{level}>"


def heading(text: str, level: int = 2) -> None:
    """A section heading (h2 by default; the notebook's title is its first markdown cell)."""
    show_html(heading_html(text, level))


def caption_html(text: str) -> str:
    return f'<p class="cmt-caption">{html.escape(text)}</p>'


def caption(text: str) -> None:
    """Plain words under a figure or table: what it shows and how to read it."""
    show_html(caption_html(text))


def notice_html(text: str, kind: str = "info") -> str:
    if kind not in NOTICE_KINDS:
        raise ValueError(f"notice kind must be one of {', '.join(NOTICE_KINDS)}, got {kind!r}")
    return f'<div class="cmt-notice cmt-notice-{kind}">{html.escape(text)}</div>'


def notice(text: str, kind: str = "info") -> None:
    """A boxed notice; kind is info, warning, error, ok or todo (not implemented yet)."""
    show_html(notice_html(text, kind))


def not_implemented_html(what: str, planned: str = "") -> str:
    text = f"Not implemented yet: {what}. This page is a placeholder in the report chain and shows no results."
    if planned:
        text += f" Planned: {planned}"
    return notice_html(text, "todo").replace("cmt-notice-todo", f"cmt-notice-todo {PLACEHOLDER_CLASS}", 1)


def not_implemented(what: str, planned: str = "") -> None:
    """Say plainly that a page or section is a placeholder, so no one reads an empty page as a result."""
    show_html(not_implemented_html(what, planned))


def research_only() -> None:
    show_html(notice_html(RESEARCH_ONLY, "warning"))


def text_html(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def text(text: str) -> None:
    """A paragraph of plain text."""
    show_html(text_html(text))


def table_html(df: pd.DataFrame | None, caption_text: str = "", max_rows: int | None = 50, index: bool = False,
               digits: int = 3, empty: str = "No rows.") -> str:
    if df is None or len(df) == 0:
        markup = notice_html(empty, "info")
    else:
        markup = to_html(df, max_rows=max_rows, index=index, digits=digits)
    return markup + (caption_html(caption_text) if caption_text else "")


def table(df: pd.DataFrame | None, caption_text: str = "", max_rows: int | None = 50, index: bool = False,
          digits: int = 3, empty: str = "No rows.") -> None:
    """A DataFrame as a report table (long tables cut at max_rows, the rest counted); `empty` is
    said instead of an empty table."""
    show_html(table_html(df, caption_text, max_rows, index, digits, empty))


def facts(pairs: dict[str, Any] | list[tuple[str, Any]]) -> None:
    """A two-column table of labelled facts (e.g. device: CPU)."""
    items = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    show_html(dict_rows(items))


def figure_png(fig: Any, dpi: int | None = None) -> bytes:
    """PNG bytes of a matplotlib Figure (tight bounding box, the figure's own dpi by default)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def figure_html(fig: Any, caption_text: str = "", dpi: int | None = None) -> str:
    """The figure as an embedded PNG (data: URI) with its caption as alt text and below it."""
    if fig is None:
        return notice_html("No data for this figure.", "info")
    data = base64.b64encode(figure_png(fig, dpi)).decode("ascii")
    alt = html.escape(caption_text or "figure", quote=True)
    cap = f"<figcaption>{caption_html(caption_text)}</figcaption>" if caption_text else ""
    return f'<figure class="cmt-figure"><img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>'


def figure(fig: Any, caption_text: str = "", dpi: int | None = None) -> None:
    """Show a Figure (or a 'no data' notice for None) with its caption."""
    show_html(figure_html(fig, caption_text, dpi))
