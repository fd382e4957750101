"""The report's pages as tasks of its graph (cmtlib.experiments.graph), and how one page executes.

A page waits for the experiments tasks that make what its notebook declares it reads
(`{"cmtlib": {"needs": ["run", "classifier"]}}`, cmtlib.experiments.plan) and for the pages whose
side files it reads, declared as `{"cmtlib": {"after": ["07_cam"]}}` (none of the default chain
does today); a page that declares no needs waits for every experiments task. So the
data page runs while the run trains, the run's pages while the baselines train, and the CAM page as
soon as the classifier baselines are ready. A page whose needs failed does not run; the others do.

`execute_page` runs one notebook with papermill in a kernel of its own, wherever its task was
sent (a worker of the cluster, or this process); its rendering to HTML happens where the report is
written (cmtlib.report.chain.runner).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from cmtlib.errors import ConfigError
from cmtlib.experiments.graph import Task
from cmtlib.experiments.plan import declared_needs

PAGE_PRIORITY = 400  # below every experiments task (cmtlib.experiments.plan.PRIORITY); earlier pages first
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotebookFailed(Exception):
    """A notebook stopped with an error; the message is the error as plain text (runner.plain_error)."""


def declared_after(notebook: Path) -> set[str]:
    """The page stems a notebook's metadata says it runs after (cmtlib.after)."""
    meta = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {})
    return set((meta.get("cmtlib") or {}).get("after") or ())


def page_tasks(notebooks: list[Path], makes: dict[str, tuple[str, ...]], experiments: Iterable[str], run_page, args) -> list[Task]:
    """A task per notebook: `run_page(*args(nb))`, labelled `[i/N] stem`, after the experiments tasks
    that make its needs (`makes`: need -> task keys; `experiments`: every experiments task's key)
    and the pages it declares it runs after."""
    stems = {nb.stem for nb in notebooks}
    everything = tuple(experiments)
    tasks = []
    for i, nb in enumerate(notebooks, 1):
        declared = declared_needs(nb)
        waits = tuple(dict.fromkeys(k for need in sorted(declared) for k in makes.get(need, ()))) if declared else everything
        after = tuple(f"page:{s}" for s in sorted(declared_after(nb) & stems))
        tasks.append(Task(f"page:{nb.stem}", f"[{i}/{len(notebooks)}] {nb.stem}", run_page, args(nb), needs=waits + after,
                          priority=PAGE_PRIORITY - i, light=True))
    return _after_first(tasks)


def _after_first(tasks: list[Task]) -> list[Task]:
    """The tasks reordered so that each comes after the pages it waits on (the graph's order), the
    declared order kept otherwise."""
    placed: dict[str, Task] = {}
    pending = list(tasks)
    while pending:
        ready = next((t for t in pending if all(n in placed or not n.startswith("page:") for n in t.needs)), None)
        if ready is None:
            raise ConfigError(f"notebooks wait on each other in a circle (cmtlib.after): {', '.join(t.key[5:] for t in pending)}")
        pending.remove(ready)
        placed[ready.key] = ready
    return list(placed.values())


def execute_page(notebook: str, executed: str, parameters: dict, kernel: str, cwd: str, timeout: int | None) -> None:
    """Execute one notebook into `executed` (kept when it fails, for the partial page); raises
    NotebookFailed with the error as plain text."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            notebook, executed, parameters=parameters, kernel_name=kernel, cwd=cwd, progress_bar=False, log_output=False,
            execution_timeout=timeout, start_timeout=120, config=_kernel_config(), extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except PapermillExecutionError as err:
        raise NotebookFailed(plain_error(err.ename, err.evalue, err.traceback)) from None
    except Exception as err:  # noqa: BLE001 -- kernel died, cell timeout, unreadable notebook: same outcome, a failed page
        raise NotebookFailed(plain_error(type(err).__name__, str(err))) from None


def plain_error(ename: str, evalue: str, traceback: list[str] | None = None, lines: int = 12) -> str:
    """The error as plain text: its name and message, then the end of the traceback (no ANSI)."""
    tb = _ANSI.sub("", "\n".join(traceback or [])).strip().splitlines()
    tail = "\n".join(tb[-lines:]) if tb else ""
    head = f"{ename}: {evalue}" if evalue else ename
    return f"{head}\n\n{tail}" if tail else head


def _kernel_config():
    """Encrypt the kernel's local sockets when the kernel supports it (ipykernel >= 7 warns on every
    start otherwise); kernels without CurveZMQ support start as before. The kernel's own log (not
    the notebook's output) is silenced with log_level=CRITICAL: jupyter_client interrupts a kernel
    before shutting it down, which ipykernel logs as an error on the console."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}})
