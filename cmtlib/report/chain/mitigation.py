"""`cmt mitigation`: shortcut mitigations trained and judged side by side on held-out folds
(cmtlib.experiments.mitigation, a study: one Dask task per run and per judgement), then one summary
page (cmtlib.report.pages.mitigation). Run again into the same folder, it reuses the finished runs.

    reports/mitigation/ (or --out)
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

import pandas as pd

from cmtlib.errors import ConfigError
from cmtlib.experiments.ablation import config_names
from cmtlib.experiments.mitigation import THUMB_PX, parse_fold, run_matrix
from cmtlib.experiments.study import check, study_folder
from cmtlib.fileio import write_json, write_text
from cmtlib.params import load_params
from cmtlib.report.chain.index import write_reports_index
from cmtlib.report.chain.render import study_page
from cmtlib.report.pages.mitigation import difference_table, summary_table
from cmtlib.report.pages.tables import to_html


def run_mitigation(paths: Iterable[str | Path], folds: Iterable[str], seeds: Iterable[int] = (0,), out: str | Path | None = None,
                   overrides: Iterable[str] | dict = (), scheduler: str | None = None, jobs: int | None = None) -> Path:
    """Train and judge each params file on each fold and seed, one task per run (and per judgement);
    returns the summary page's path. Every file is checked before any worker starts; a run that
    fails is named on the page and the others go on, then StudyError says what did not finish.
    `scheduler` / `jobs` default to the first file's `scheduler` and `report_jobs`."""
    paths = [Path(p) for p in paths]
    folds = [parse_fold(f, i + 1) for i, f in enumerate(folds)]
    if not paths or not folds:
        raise ConfigError("cmt mitigation needs at least one params file and one --fold (e.g. --fold 'figure1:source=figure1')")
    overrides = overrides if isinstance(overrides, dict) else list(overrides)
    all_params = [load_params(p, overrides) for p in paths]  # every file checked before anything trains
    names, first, seeds = config_names(all_params), all_params[0], list(seeds)
    folder = study_folder(out or Path(first.report.reports_dir) / "mitigation")
    print(f"mitigation folder: {folder}", flush=True)
    results, outcomes = run_matrix(list(zip(names, all_params)), folds, seeds, folder,
                                   scheduler=first.experiments.scheduler if scheduler is None else scheduler,
                                   jobs=first.report.report_jobs if jobs is None else jobs)
    bad = [o for o in outcomes if not o.done]
    failed = "; ".join(f"{o.name} {o.status}: {o.error.splitlines()[0] if o.error else ''}" for o in bad)
    page = write_summary(folder, results, [f"{f.name} ({'; '.join(f.filters)})" for f in folds], seeds, failed=failed,
                         variants=names)
    reports_dir = Path(first.report.reports_dir).resolve()
    if folder.parent == reports_dir:
        try:
            write_reports_index(reports_dir)
        except OSError as err:
            print(f"cmt mitigation: could not update {reports_dir / 'index.html'}: {err}", file=sys.stderr)
    check(outcomes, page)
    return page


def write_summary(folder: Path, results: pd.DataFrame, folds: list[str], seeds: list[int], failed: str = "",
                  variants: list[str] | None = None) -> Path:
    """index.html, summary.json and report.json (so the list of reports shows the study); `failed`
    names the runs that did not finish (their films are not in the tables)."""
    judged = len(results) > 0
    summary, differences = (summary_table(results), difference_table(results)) if judged else (pd.DataFrame(), pd.DataFrame())
    variants = list(dict.fromkeys(results["variant"])) if judged else list(variants or [])
    now = _dt.datetime.now()
    html = study_page(
        "mitigation.html.j2", f"{folder.name}/index.html", now, name=folder.name,
        failed=f"runs that did not finish (left out of the tables): {failed}" if failed else "",
        folds="; ".join(folds), seeds=", ".join(map(str, seeds)), variants=", ".join(variants), reference=variants[0] if variants else "",
        thumb_px=THUMB_PX, summary=to_html(summary.reset_index(names="measure"), max_rows=None),
        differences=to_html(differences.reset_index(names="measure"), max_rows=None) if len(differences.columns) else "")
    write_json(folder / "summary.json", {"measures": summary.to_dict(), "differences": differences.to_dict(), "folds": folds, "seeds": seeds,
                                         "failed": failed})
    write_json(folder / "report.json", {"name": folder.name, "kind": "mitigation", "date": now.isoformat(timespec="seconds"),
                                        "status": "failed" if failed else "ok"})
    return write_text(folder / "index.html", html)
