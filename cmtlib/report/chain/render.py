"""Executed notebook -> one self-contained HTML page (nbconvert).

Self-contained means a clinician can open the file from a USB stick on a machine without
internet: code inputs and prompts hidden, images embedded as data URIs, our small stylesheet
inlined, and no scripts at all (nbconvert's lab template would fetch require.js, MathJax and
mermaid from CDNs). `check_self_contained` enforces it on every page written.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

from cmtlib import __version__
from cmtlib.fileio import write_text

TEMPLATES = Path(__file__).parent / "templates"
CSS_PATH = TEMPLATES / "report.css"
# Cells papermill adds to a failed notebook (a red banner and an anchor with an `In [n]` prompt);
# the page shows its own notice instead. `remove-cell` lets a notebook author drop a cell.
REMOVED_TAGS = ("papermill-error-cell-tag", "remove-cell")

# Anything a browser would load from elsewhere: src= on any tag (except data: URIs), <link href>,
# CSS url(...) and @import. Hyperlinks (<a href>) are not loads and are allowed.
_SRC = re.compile(r"""<(?P<tag>[a-zA-Z][\w-]*)\b[^>]*?\s(?P<attr>src|srcset|data)\s*=\s*(?P<q>["']?)(?P<url>[^"'\s>]*)""", re.IGNORECASE)
_LINK = re.compile(r"""<link\b[^>]*\shref\s*=\s*["']?(?P<url>[^"'\s>]*)""", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*["']?(?P<url>[^"')\s]*)""", re.IGNORECASE)
_IMPORT = re.compile(r"""@import\s+(?:url\()?\s*["']?(?P<url>[^"')\s;]*)""", re.IGNORECASE)


class RenderError(RuntimeError):
    """A page that would not be self-contained, or a notebook nbconvert cannot render."""


def report_css() -> str:
    return CSS_PATH.read_text(encoding="utf-8")


def study_page(template: str, where: str, now: _dt.datetime, **context: Any) -> str:
    """A study's summary page from templates/<template>, with what every page carries (the stylesheet,
    the version, the time), checked self-contained (`where` names it in an error)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    html = env.get_template(template).render(css=report_css(), version=__version__, now=now.strftime("%Y-%m-%d %H:%M"), **context)
    check_self_contained(html, where)
    return html


def external_refs(html: str) -> list[str]:
    """Every resource the page would load from outside itself (empty for a self-contained page)."""
    found: list[str] = []
    for m in _SRC.finditer(html):
        url = m.group("url")
        if url and not url.lower().startswith("data:") and not url.startswith("#"):
            found.append(f"<{m.group('tag')} {m.group('attr')}={url}>")
    found += [f"<link href={m.group('url')}>" for m in _LINK.finditer(html)]
    found += [f"url({m.group('url')})" for m in _CSS_URL.finditer(html) if m.group("url") and not m.group("url").lower().startswith("data:")]
    found += [f"@import {m.group('url')}" for m in _IMPORT.finditer(html)]
    return sorted(set(found))


def check_self_contained(html: str, where: str) -> None:
    """Raise RenderError naming what `where` would load from elsewhere (scripts, styles, images)."""
    refs = external_refs(html)
    if "<script" in html.lower():
        refs.append("<script> element")
    if refs:
        raise RenderError(f"{where} is not self-contained: it would load {', '.join(refs[:8])}. "
                          "Embed images (display a Figure, or data: URIs) and drop scripts; see cmtlib/report/render.py")


class PageRenderer:
    """Renders notebooks with one nbconvert exporter (building one costs ~0.3 s; reuse it)."""

    def __init__(self) -> None:
        from nbconvert import HTMLExporter
        from nbconvert.preprocessors import TagRemovePreprocessor

        exporter = HTMLExporter(
            template_name=TEMPLATES.name,
            extra_template_basedirs=[str(TEMPLATES.parent)],
            exclude_input=True,
            exclude_input_prompt=True,
            exclude_output_prompt=True,
            embed_images=True,
        )
        remover = TagRemovePreprocessor(remove_cell_tags=set(REMOVED_TAGS), enabled=True)
        exporter.register_preprocessor(remover, enabled=True)
        self.exporter = exporter
        self.css = report_css()

    def render(self, notebook: str | Path, html_path: str | Path, *, title: str = "", run_name: str = "",
               seconds: float | None = None, failed: bool = False, index_href: str = "index.html") -> Path:
        """Write `html_path` from an executed notebook; returns the path. Raises RenderError."""
        import nbformat

        notebook = Path(notebook)
        nb = nbformat.read(notebook, as_version=4)
        resources: dict[str, Any] = {
            "metadata": {"name": notebook.stem, "path": str(notebook.parent)},
            "cmt": {
                "title": title or notebook_title(nb, notebook.stem),
                "css": self.css,
                "run_name": run_name,
                "seconds": seconds,
                "failed": failed,
                "index_href": index_href,
                "version": __version__,
                "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            },
        }
        try:
            html, _ = self.exporter.from_notebook_node(nb, resources=resources)
        except Exception as err:
            raise RenderError(f"nbconvert could not render {notebook.name}: {type(err).__name__}: {err}") from err
        check_self_contained(html, Path(html_path).name)
        return write_text(html_path, html)


def notebook_title(nb: Any, fallback: str) -> str:
    """The first markdown heading of a notebook, else `fallback`."""
    heading, _ = notebook_heading(nb)
    return heading or fallback


def notebook_heading(nb: Any) -> tuple[str, str]:
    """(title, one-line description) from the notebook's first markdown cell: its `# heading` and
    the first plain paragraph after it; ('', '') when the notebook has no markdown."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = [ln.strip() for ln in cell.source.splitlines()]
        title = next((ln.lstrip("#").strip() for ln in lines if ln.startswith("#")), "")
        body: list[str] = []
        for ln in lines:
            if ln.startswith("#") or (not ln and not body):
                continue
            if not ln:
                break
            body.append(ln)
        return title, " ".join(body)
    return "", ""
