"""The report chain: params -> executed notebooks -> self-contained HTML pages -> index.

`run_report` validates everything it can before anything runs (params keys, the notebooks'
parameter cells, the kernel), then runs one task graph (cmtlib.experiments.graph) on a Dask cluster
(cmtlib.experiments.cluster: a local one sized to the machine, the one at the params key
`scheduler`, or none with `report_jobs: 1`): the experiments that make what the pages read
(cmtlib.experiments.plan) and one task per notebook/NN_*.ipynb, executed with papermill in a kernel
of its own with exactly `params_file`, `run_dir` and `report_dir` injected, each starting as soon as
what it reads is made (cmtlib.report.chain.schedule). The report folder is self-contained:

    reports/<run name>[-N]/
        index.html            headline results, links to the pages, facts, parameters
        NN_name.html          one page per notebook (code hidden)
        notebooks/NN_name.ipynb   the executed notebooks
        params.yaml           the resolved params (every key); re-run with it
        run/                  the training run (checkpoints, metrics.json, predictions.csv, ...)
        timings.json  report.json  facts.json
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cmtlib.errors import CmtError
from cmtlib.experiments.cluster import open_cluster
from cmtlib.experiments.graph import Outcome, finish_line, run_graph
from cmtlib.experiments.plan import experiment_tasks
from cmtlib.fileio import write_json
from cmtlib.params import Params, dump_params, load_params
from cmtlib.report.chain.index import write_report_index, write_reports_index
from cmtlib.report.chain.kernel import select_kernel
from cmtlib.report.chain.render import PageRenderer, notebook_heading
from cmtlib.report.chain.schedule import NotebookFailed, execute_page, page_tasks, plain_error
from cmtlib.report.pages.show import PLACEHOLDER_CLASS
from cmtlib.run import with_run_dir
from cmtlib.runtime import git_commit

INJECTED = ("params_file", "run_dir", "report_dir")
REPO = Path(__file__).resolve().parents[3]
DEFAULT_NOTEBOOKS = REPO / "notebooks"
# Environment override for the notebooks folder (tests, or a researcher's own chain).
NOTEBOOKS_ENV = "CMT_NOTEBOOKS"
_NUMBERED = re.compile(r"^(\d{2})_[\w-]+\.ipynb$")


class ReportError(CmtError, RuntimeError):
    """The chain could not run or a notebook failed; the message names the notebook and its page."""


@dataclass
class NotebookRecord:
    name: str
    title: str = ""
    description: str = ""
    status: str = "not run"  # not run | running | ok | placeholder (says it is not implemented) | failed
    seconds: float | None = None  # execution, kernel start included
    render_seconds: float | None = None
    html: str = ""  # relative to the report folder
    executed: str = ""
    error: str = ""


def find_notebooks(folder: str | Path, only: Iterable[str] = ()) -> list[Path]:
    """notebooks/NN_*.ipynb in number order; `only` keeps those named by number ('03') or stem."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob("*.ipynb") if _NUMBERED.match(p.name))
    if not found:
        raise ReportError(f"no numbered notebooks (NN_name.ipynb) in {folder}")
    # "3", 3 and "03" all name 03_*: YAML reads an unquoted 01 as the number 1.
    only = [f"{int(o):02d}" if str(o).isdigit() else str(o).removesuffix(".ipynb") for o in only]
    if only:
        keep = [p for p in found if p.stem in only or p.stem[:2] in only]
        unknown = [o for o in only if not any(p.stem == o or p.stem[:2] == o for p in found)]
        if unknown:
            raise ReportError(f"report_notebooks names {unknown}, not in {folder}; available: {', '.join(p.stem for p in found)}")
        found = keep
    return found


def check_parameters(notebooks: Iterable[Path]) -> None:
    """Each notebook must declare exactly params_file, run_dir and report_dir in its parameters cell
    (papermill only warns about a parameter a notebook does not declare)."""
    import papermill

    problems = []
    for nb in notebooks:
        declared = set(papermill.inspect_notebook(str(nb)))
        missing = [k for k in INJECTED if k not in declared]
        extra = sorted(declared - set(INJECTED))
        if not declared:
            problems.append(f"{nb.name} has no cell tagged 'parameters'")
        elif missing or extra:
            problems.append(f"{nb.name}: " + "; ".join(
                ([f"parameters cell lacks {', '.join(missing)}"] if missing else [])
                + ([f"declares {', '.join(extra)}, which the chain never sets (put settings in params/*.yaml)"] if extra else [])))
    if problems:
        raise ReportError("notebooks must declare exactly params_file, run_dir and report_dir in a cell tagged 'parameters': " + " | ".join(problems))


def unique_dir(base: Path) -> Path:
    """Create and return base, or base-2, base-3, ... if taken: another run is never overwritten."""
    base.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def run_report(params_path: str | Path, out: str | Path | None = None, overrides: Iterable[str] | dict = (),
               notebooks_dir: str | Path | None = None) -> Path:
    """Run the notebook chain for a params file; returns <report>/index.html.

    Raises ParamsError (unknown key, bad value) or ReportError (bad notebook, failed notebook)
    before writing anything, except a failed notebook: its report folder and index remain.
    """
    params = load_params(params_path, overrides)
    folder = Path(notebooks_dir or os.environ.get(NOTEBOOKS_ENV) or DEFAULT_NOTEBOOKS)
    notebooks = find_notebooks(folder, params.report.report_notebooks)
    check_parameters(notebooks)
    kernel = select_kernel(params.report.report_kernel)

    wanted = Path(out) if out else Path(params.report.reports_dir) / params.run_name
    report_dir = unique_dir(wanted.resolve())
    note = f" ({wanted} exists; not overwriting it)" if report_dir.name != wanted.name else ""
    print(f"report folder: {report_dir}{note}", flush=True)

    # The report's params.yaml repeats this run as it is: its name fixed, its run inside the report.
    params = with_run_dir(params, report_dir / "run")
    params = dataclasses.replace(params, report=dataclasses.replace(params.report, run_name=params.run_name))
    dump_params(params, report_dir / "params.yaml")
    return _Chain(params, params_path, report_dir, notebooks, kernel).run()


class _Chain:
    """One chain run: its graph of experiments and pages (cmtlib.report.chain.schedule), run on a
    cluster (cmtlib.experiments.cluster); pages are rendered and the index rewritten here as each ends."""

    def __init__(self, params: Params, params_path: str | Path, report_dir: Path, notebooks: list[Path], kernel: str) -> None:
        self.params, self.report_dir, self.notebooks, self.kernel = params, report_dir, notebooks, kernel
        self.records = {nb.stem: NotebookRecord(name=nb.stem, **_heading(nb)) for nb in notebooks}
        self.record: dict[str, Any] = {
            "run_name": params.run_name, "name": report_dir.name, "params_source": str(params_path),
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(REPO, short=True),
            "kernel": kernel, "python": sys.executable, "status": "running", "failed": "", "failed_html": "",
            "error": "", "total_s": 0.0, "notebooks": [], "experiments": {},
        }
        self.renderer = None
        self.failure: ReportError | None = None  # the first task to fail, as the chain reports it
        self.tasks: dict[str, dict[str, Any]] = {}  # key -> label, status, seconds, worker (timings.json)
        self.experiments: set[str] = set()  # keys of the experiments tasks not yet ended
        # Kernels run where `cmt report` runs (the repository root for `make report`), so relative
        # locations inside cmtlib (./data, ./runs) are the ones `cmt train` uses; every path the
        # chain injects is absolute.
        self.cwd = Path.cwd()
        self.t0 = time.perf_counter()

    def run(self) -> Path:
        self.t0 = time.perf_counter()
        (self.report_dir / "notebooks").mkdir(exist_ok=True)
        experiments, makes = experiment_tasks(self.params, self.report_dir / "run", self.report_dir, self.notebooks)
        pages = page_tasks(self.notebooks, makes, [t.key for t in experiments], execute_page, self._page_args)
        self.experiments = {t.key for t in experiments}
        self.record["experiments"] = {"status": "running" if experiments else "ok", "seconds": None if experiments else 0.0,
                                      "steps": {}, "error": ""}
        self._write_index()
        p = self.params
        with open_cluster(p.experiments.scheduler, p.report.report_jobs, threads=p.train.threads, device=p.train.device) as cluster:
            self.record["cluster"] = cluster.describe()
            run_graph(experiments + pages, cluster, on_done=self._done)
        self.record["status"] = "failed" if self.failure else "ok"
        self.record["total_s"] = round(time.perf_counter() - self.t0, 2)
        write_json(self.report_dir / "timings.json", {
            "kernel": self.kernel, "cluster": self.record.get("cluster", ""), "total_s": self.record["total_s"],
            "experiments": self.record["experiments"], "tasks": self.tasks,
            "notebooks": {r.name: {"execute_s": r.seconds, "render_s": r.render_seconds, "status": r.status} for r in self.records.values()},
        })
        index = self._write_index()
        # The list of reports lives in reports_dir; a report put elsewhere (--out) leaves that folder alone.
        if self.report_dir.parent == Path(self.params.report.reports_dir).resolve():
            try:
                write_reports_index(self.report_dir.parent)
            except OSError as err:  # the report itself is complete; the list of reports is a convenience
                print(f"cmt report: could not update {self.report_dir.parent / 'index.html'}: {err}", file=sys.stderr)
        if self.failure is not None:
            print(f"report (incomplete): {index}", file=sys.stderr)
            raise self.failure
        return index

    def _page_args(self, nb: Path) -> tuple:
        parameters = {"params_file": str(self.report_dir / "params.yaml"), "run_dir": str(self.report_dir / "run"),
                      "report_dir": str(self.report_dir)}
        return (str(nb), str(self.report_dir / "notebooks" / nb.name), parameters, self.kernel, str(self.cwd),
                self.params.report.report_cell_timeout or None)

    def _done(self, outcome: Outcome) -> str | None:
        """A task ended: record it (and render its page); the text added to its progress line."""
        self.tasks[outcome.key] = {"label": outcome.label, "status": outcome.status, "seconds": outcome.seconds, "worker": outcome.worker}
        extra = self._page_done(outcome) if outcome.key.startswith("page:") else self._experiment_done(outcome)
        self.record["total_s"] = round(time.perf_counter() - self.t0, 2)
        self._write_index()
        return extra

    def _experiment_done(self, outcome: Outcome) -> None:
        step = self.record["experiments"]
        step["steps"][outcome.key] = outcome.seconds
        self.experiments.discard(outcome.key)
        if outcome.status in ("failed", "lost") and not step["error"]:
            step["error"] = f"{outcome.error} ({outcome.label})"
            self._fail("experiments", "", step["error"], ReportError(f"the experiments step failed: {outcome.error} ({outcome.label})"))
        if not self.experiments:
            step["status"] = "failed" if step["error"] else "ok"
            step["seconds"] = round(time.perf_counter() - self.t0, 2)

    def _page_done(self, outcome: Outcome) -> str | None:
        stem = outcome.key.removeprefix("page:")
        rec, nb = self.records[stem], next(nb for nb in self.notebooks if nb.stem == stem)
        if outcome.status in ("skipped", "cancelled"):  # what it reads was not made: the page did not start
            rec.status, rec.error = "not run", outcome.error
            return None
        executed = self.report_dir / "notebooks" / nb.name
        rec.seconds, rec.executed = outcome.seconds, f"notebooks/{nb.name}"
        error = outcome.error.removeprefix(f"{NotebookFailed.__name__}: ") if not outcome.ok else ""
        rec.status = "failed" if error else ("placeholder" if _is_placeholder(executed) else "ok")
        rec.error = error
        render_error = self._render(nb, executed, rec, failed=bool(error))
        if render_error and not error:
            rec.status, rec.error = "failed", render_error
        if rec.status == "failed":
            where = f"; see {self.report_dir / rec.html}" if rec.html else ""
            first = rec.error.splitlines()[0] if rec.error else "unknown error"
            self._fail(stem, rec.html, rec.error, ReportError(f"notebook {nb.name} failed: {first}{where}"))
        render = f" (+{rec.render_seconds:.1f} s render)" if rec.render_seconds is not None else ""
        return finish_line(dataclasses.replace(outcome, error=rec.error), rec.status, render)

    def _fail(self, what: str, html: str, error: str, failure: ReportError) -> None:
        """The first failure is the one the index names and the command raises."""
        if self.failure is None:
            self.failure = failure
            self.record.update(failed=what, failed_html=html, error=error)

    def _write_index(self) -> Path:
        self.record["notebooks"] = [asdict(r) for r in self.records.values()]
        return write_report_index(self.report_dir, self.record)

    def _render(self, nb: Path, executed: Path, rec: NotebookRecord, failed: bool) -> str:
        """Render the executed (or partial) notebook; returns an error text, '' on success."""
        if not executed.is_file():
            return f"{nb.name} produced no executed notebook to render"
        t0 = time.perf_counter()
        try:
            if self.renderer is None:  # one nbconvert exporter for the chain
                self.renderer = PageRenderer()
            html = self.report_dir / f"{nb.stem}.html"
            self.renderer.render(executed, html, title=rec.title, run_name=self.params.run_name, seconds=rec.seconds, failed=failed)
            rec.html = html.name
            return ""
        except Exception as err:  # noqa: BLE001 -- a page that cannot be rendered fails the chain like a failed cell
            return plain_error(type(err).__name__, str(err))
        finally:
            rec.render_seconds = round(time.perf_counter() - t0, 2)


def _is_placeholder(executed: Path) -> bool:
    """Whether an executed notebook shows page.not_implemented (so the index does not call it 'ok')."""
    import nbformat

    if not executed.is_file():
        return False
    outputs = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])]
    return any(PLACEHOLDER_CLASS in str(o.get("data", {}).get("text/html", "")) for o in outputs)


def _heading(nb: Path) -> dict[str, str]:
    import nbformat

    title, description = notebook_heading(nbformat.read(nb, as_version=4))
    return {"title": title, "description": description}
