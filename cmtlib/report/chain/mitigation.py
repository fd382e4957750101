"""`cmt mitigation`: shortcut mitigations trained and judged side by side on held-out folds
(cmtlib.experiments.mitigation), then one summary page (cmtlib.report.pages.mitigation).

    reports/mitigation-<date>[-N]/
        index.html      the measures per variant and the paired differences to the first variant
        summary.json    the same tables, machine-readable
        results.csv     one row per judged film and run
        runs/<variant>/<fold>-s<seed>/   the run folders
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Iterable
from pathlib import Path

import jinja2
import pandas as pd

from cmtlib import __version__
from cmtlib.errors import ConfigError
from cmtlib.experiments.ablation import unique_names
from cmtlib.experiments.mitigation import THUMB_PX, parse_fold, run_matrix
from cmtlib.fileio import write_json, write_text
from cmtlib.params import load_params
from cmtlib.report.chain.index import write_reports_index
from cmtlib.report.chain.render import TEMPLATES, check_self_contained, report_css
from cmtlib.report.chain.runner import unique_dir
from cmtlib.report.pages.mitigation import difference_table, summary_table
from cmtlib.report.pages.tables import to_html


def run_mitigation(paths: Iterable[str | Path], folds: Iterable[str], seeds: Iterable[int] = (0,), out: str | Path | None = None,
                   overrides: Iterable[str] | dict = ()) -> Path:
    """Train and judge each params file on each fold and seed; returns the summary page's path."""
    paths = [Path(p) for p in paths]
    folds = [parse_fold(f, i + 1) for i, f in enumerate(folds)]
    if not paths or not folds:
        raise ConfigError("cmt mitigation needs at least one params file and one --fold (e.g. --fold 'figure1:source=figure1')")
    overrides = overrides if isinstance(overrides, dict) else list(overrides)
    all_params = [load_params(p, overrides) for p in paths]  # every file checked before anything trains
    names = unique_names(all_params)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M")
    folder = unique_dir(Path(out).resolve() if out else (Path(all_params[0].report.reports_dir) / f"mitigation-{stamp}").resolve())
    print(f"mitigation folder: {folder}", flush=True)
    results = run_matrix(list(zip(names, all_params)), folds, list(seeds), folder, progress=lambda m: print(m, flush=True))
    page = write_summary(folder, results, [f"{f.name} ({'; '.join(f.filters)})" for f in folds], list(seeds))
    reports_dir = Path(all_params[0].report.reports_dir).resolve()
    if folder.parent == reports_dir:
        try:
            write_reports_index(reports_dir)
        except OSError as err:
            print(f"cmt mitigation: could not update {reports_dir / 'index.html'}: {err}", file=sys.stderr)
    return page


def write_summary(folder: Path, results: pd.DataFrame, folds: list[str], seeds: list[int]) -> Path:
    """index.html, summary.json and report.json (so the list of reports shows the study)."""
    summary, differences = summary_table(results), difference_table(results)
    variants = list(dict.fromkeys(results["variant"]))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    now = _dt.datetime.now()
    html = env.get_template("mitigation.html.j2").render(
        name=folder.name, css=report_css(), version=__version__, now=now.strftime("%Y-%m-%d %H:%M"), failed="",
        folds="; ".join(folds), seeds=", ".join(map(str, seeds)), variants=", ".join(variants), reference=variants[0],
        thumb_px=THUMB_PX, summary=to_html(summary.reset_index(names="measure"), max_rows=None),
        differences=to_html(differences.reset_index(names="measure"), max_rows=None) if len(differences.columns) else "")
    check_self_contained(html, f"{folder.name}/index.html")
    write_json(folder / "summary.json", {"measures": summary.to_dict(), "differences": differences.to_dict(), "folds": folds, "seeds": seeds})
    write_json(folder / "report.json", {"name": folder.name, "kind": "mitigation", "date": now.isoformat(timespec="seconds"), "status": "ok"})
    return write_text(folder / "index.html", html)
