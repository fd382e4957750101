"""The report chain: params -> executed notebooks -> self-contained HTML pages -> index.

`run_report` validates everything it can before anything runs (params keys, the notebooks'
parameter cells, the kernel), then executes notebooks/NN_*.ipynb in order with papermill, one
kernel per notebook, injecting exactly `params_file`, `run_dir` and `report_dir`. The report
folder is self-contained:

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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cmtlib.errors import CmtError
from cmtlib.experiments.plan import declared_needs, prepare, stop_beside
from cmtlib.fileio import write_json
from cmtlib.params import Params, dump_params, load_params
from cmtlib.report.chain.index import write_report_index, write_reports_index
from cmtlib.report.chain.kernel import select_kernel
from cmtlib.report.chain.render import PageRenderer, notebook_heading
from cmtlib.report.chain.schedule import Gate, run_pages
from cmtlib.report.pages.show import PLACEHOLDER_CLASS
from cmtlib.run import with_run_dir
from cmtlib.runtime import git_commit

INJECTED = ("params_file", "run_dir", "report_dir")
REPO = Path(__file__).resolve().parents[3]
DEFAULT_NOTEBOOKS = REPO / "notebooks"
# Environment override for the notebooks folder (tests, or a researcher's own chain).
NOTEBOOKS_ENV = "CMT_NOTEBOOKS"
_NUMBERED = re.compile(r"^(\d{2})_[\w-]+\.ipynb$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


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


def plain_error(ename: str, evalue: str, traceback: list[str] | None = None, lines: int = 12) -> str:
    """The error as plain text: its name and message, then the end of the traceback (no ANSI)."""
    tb = _ANSI.sub("", "\n".join(traceback or [])).strip().splitlines()
    tail = "\n".join(tb[-lines:]) if tb else ""
    head = f"{ename}: {evalue}" if evalue else ename
    return f"{head}\n\n{tail}" if tail else head


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
    """One chain run: executes, renders, records; the index is rewritten after every notebook."""

    def __init__(self, params: Params, params_path: str | Path, report_dir: Path, notebooks: list[Path], kernel: str) -> None:
        self.params, self.report_dir, self.notebooks, self.kernel = params, report_dir, notebooks, kernel
        self.records = [NotebookRecord(name=nb.stem, **_heading(nb)) for nb in notebooks]
        self.record: dict[str, Any] = {
            "run_name": params.run_name, "name": report_dir.name, "params_source": str(params_path),
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(REPO, short=True),
            "kernel": kernel, "python": sys.executable, "status": "running", "failed": "", "failed_html": "",
            "error": "", "total_s": 0.0, "notebooks": [], "experiments": {},
        }
        self.renderer = None
        # Pages run `report_jobs` at a time (0: one per CPU core); the index and the renderer are shared.
        self.jobs = params.report.report_jobs or (os.cpu_count() or 1)
        self.lock = threading.RLock()
        # Kernels run where `cmt report` runs (the repository root for `make report`), so relative
        # locations inside cmtlib (./data, ./runs) are the ones `cmt train` uses; every path the
        # chain injects is absolute.
        self.cwd = Path.cwd()

    def run(self) -> Path:
        try:
            return self._run()
        except BaseException:
            stop_beside()  # interrupted (Ctrl-C) or a bug: do not leave the baselines' process training
            raise

    def _run(self) -> Path:
        t_all = time.perf_counter()
        (self.report_dir / "notebooks").mkdir(exist_ok=True)
        self._write_index()
        gate = Gate({nb.stem: declared_needs(nb) or None for nb in self.notebooks})
        if self.jobs > 1:  # pages start as soon as what they read is made (schedule.Gate)
            experiments = _Background(self._experiments, gate)
            failure = None
        else:  # one thing at a time: the experiments, then the pages in order
            failure = self._experiments(gate)
        if failure is None:
            records = {nb.stem: (i, rec) for i, (nb, rec) in enumerate(zip(self.notebooks, self.records), 1)}

            def one(nb: Path) -> ReportError | None:
                i, rec = records[nb.stem]
                with self.lock:
                    print(f"[{i}/{len(self.notebooks)}] {nb.stem} ...", flush=True)  # pages may run side by side
                result = self._run_one(nb, rec)
                with self.lock:
                    print(f"[{i}/{len(self.notebooks)}] {nb.stem} {rec.status} {rec.seconds or 0:.1f} s"
                          + (f" (+{rec.render_seconds:.1f} s render)" if rec.render_seconds is not None else ""), flush=True)
                    self.record["total_s"] = round(time.perf_counter() - t_all, 2)
                    self._write_index()
                return result

            failure = run_pages(self.notebooks, one, self.jobs, gate)
        if self.jobs > 1:
            failure = experiments.join() or failure  # the experiments' failure came first: pages wait on it
        self.record["status"] = "failed" if failure else "ok"
        self.record["total_s"] = round(time.perf_counter() - t_all, 2)
        write_json(self.report_dir / "timings.json", {
            "kernel": self.kernel, "total_s": self.record["total_s"], "experiments": self.record["experiments"],
            "notebooks": {r.name: {"execute_s": r.seconds, "render_s": r.render_seconds, "status": r.status} for r in self.records},
        })
        index = self._write_index()
        # The list of reports lives in reports_dir; a report put elsewhere (--out) leaves that folder alone.
        if self.report_dir.parent == Path(self.params.report.reports_dir).resolve():
            try:
                write_reports_index(self.report_dir.parent)
            except OSError as err:  # the report itself is complete; the list of reports is a convenience
                print(f"cmt report: could not update {self.report_dir.parent / 'index.html'}: {err}", file=sys.stderr)
        if failure is not None:
            print(f"report (incomplete): {index}", file=sys.stderr)
            raise failure
        return index

    def _experiments(self, gate: Gate) -> ReportError | None:
        """Train and evaluate what the pages read (cmtlib.experiments.plan), with the training's
        progress on the console, telling `gate` what is made as it is made. A user error (CmtError)
        fails the report like a failed page; any other error is a bug and propagates with its
        traceback (the gate is closed first, so no page waits for ever)."""
        print(f"[0/{len(self.notebooks)}] experiments (data, the run and what the pages compare it with) ...", flush=True)
        step = self.record["experiments"] = {"status": "running", "seconds": None, "steps": {}, "error": ""}
        t0, failure = time.perf_counter(), None
        try:
            step["steps"] = prepare(self.params, self.report_dir / "run", self.report_dir, self.notebooks, jobs=self.jobs, made=gate.add)
            step["status"] = "ok"
        except CmtError as err:
            step.update(status="failed", error=f"{type(err).__name__}: {err}")
            failure = ReportError(f"the experiments step failed: {step['error']}")
            with self.lock:
                self.record.update(failed="experiments", error=step["error"])
        except BaseException:
            step["status"] = "failed"
            gate.finish(ReportError("the experiments step stopped with an error (its traceback follows)"))
            raise
        finally:
            step["seconds"] = round(time.perf_counter() - t0, 2)
            with self.lock:
                self._write_index()
        gate.finish(failure)
        print(f"[0/{len(self.notebooks)}] experiments {step['status']} {step['seconds']:.1f} s", flush=True)
        return failure

    def _write_index(self) -> Path:
        self.record["notebooks"] = [asdict(r) for r in self.records]
        return write_report_index(self.report_dir, self.record)

    def _run_one(self, nb: Path, rec: NotebookRecord) -> ReportError | None:
        import papermill
        from papermill.exceptions import PapermillExecutionError

        executed = self.report_dir / "notebooks" / nb.name
        rec.status, rec.executed = "running", f"notebooks/{nb.name}"
        parameters = {"params_file": str(self.report_dir / "params.yaml"), "run_dir": str(self.report_dir / "run"),
                      "report_dir": str(self.report_dir)}
        timeout = self.params.report.report_cell_timeout or None
        t0 = time.perf_counter()
        error: str = ""
        try:
            papermill.execute_notebook(
                str(nb), str(executed), parameters=parameters, kernel_name=self.kernel, cwd=str(self.cwd),
                progress_bar=False, log_output=False, execution_timeout=timeout, start_timeout=120,
                config=_kernel_config(), extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )
        except PapermillExecutionError as err:
            error = plain_error(err.ename, err.evalue, err.traceback)
        except Exception as err:  # noqa: BLE001 -- kernel died, cell timeout, unreadable notebook: same outcome, a failed page
            error = plain_error(type(err).__name__, str(err))
        rec.seconds = round(time.perf_counter() - t0, 2)
        rec.status = "failed" if error else ("placeholder" if _is_placeholder(executed) else "ok")
        rec.error = error
        render_error = self._render(nb, executed, rec, failed=bool(error))
        if render_error and not error:
            rec.status, rec.error = "failed", render_error
        if rec.status != "failed":
            return None
        with self.lock:
            if not self.record.get("failed"):  # the first page to fail is the one the index names
                self.record.update(failed=nb.stem, failed_html=rec.html, error=rec.error)
        where = f"; see {self.report_dir / rec.html}" if rec.html else ""
        return ReportError(f"notebook {nb.name} failed: {rec.error.splitlines()[0] if rec.error else 'unknown error'}{where}")

    def _render(self, nb: Path, executed: Path, rec: NotebookRecord, failed: bool) -> str:
        """Render the executed (or partial) notebook; returns an error text, '' on success."""
        if not executed.is_file():
            return f"{nb.name} produced no executed notebook to render"
        t0 = time.perf_counter()
        try:
            with self.lock:  # one nbconvert exporter for the chain; pages rendering one at a time take well under a second each
                if self.renderer is None:
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


def _kernel_config():
    """Encrypt the kernel's local sockets when the kernel supports it (ipykernel >= 7 warns on every
    start otherwise); kernels without CurveZMQ support start as before. The kernel's own log (not
    the notebook's output) is silenced with log_level=CRITICAL: jupyter_client interrupts a kernel
    before shutting it down, which ipykernel logs as an error on the console."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}})


class _Background:
    """`fn(*args)` in a thread; `join()` returns its result or raises its exception here."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._result: Any = None
        self._error: BaseException | None = None

        def body() -> None:
            try:
                self._result = fn(*args)
            except BaseException as err:  # handed to join(), which raises it in the caller's thread
                self._error = err

        # A daemon: Ctrl-C in the main thread ends `cmt report` without waiting for the training.
        self._thread = threading.Thread(target=body, name="cmt-experiments", daemon=True)
        self._thread.start()

    def join(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _heading(nb: Path) -> dict[str, str]:
    import nbformat

    title, description = notebook_heading(nbformat.read(nb, as_version=4))
    return {"title": title, "description": description}
