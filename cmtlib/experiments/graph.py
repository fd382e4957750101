"""A task graph, run by Dask distributed on a cluster (cmtlib.experiments.cluster) or here, one task
after another: what the report chain and every study are made of.

    tasks = [Task("data", "data", prepare_data, (params,)),
             Task("run", "the run", ensure_run, (params, run_dir), needs=("data",))]
    outcomes = run_graph(tasks, cluster)          # key -> Outcome

A task is a call of a module-level function (pickled by reference for the workers). It starts once
every task it `needs` has finished; if one of those did not finish ok it does not run ('skipped',
naming which). An exception is the task's outcome ('failed': the error in one line, and the end of
the traceback and of the console output as `detail`), and every task not waiting on it goes on. A
task whose worker died while running it is tried once more on another worker (a local cluster's
setting; a user's scheduler applies its own `allowed-failures`), then reported 'lost'.

On a cluster, a task is handed to Dask when the tasks it needs have ended (their outcomes are its
arguments), the ready ones by `priority`, highest first; on a local cluster a compute task also
waits for a free compute slot, so that it starts on the worker that is free (`_run_on`).

Progress: a line when a task starts (on which worker) and one when it ends, with its time. On a
cluster a task's own console output (training's progress bars) is kept off the console; the run
folders keep their logs. Without a cluster (`Cluster.synchronous`) the tasks run in this process in
the order given, their output shown as it comes: the mode for debugging.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cmtlib.data.prepare import data_dir

STATUSES = ("ok", "failed", "skipped", "lost", "cancelled")
TAIL_LINES = 30  # of the traceback and of the task's console output kept in `detail`


@dataclass
class Task:
    """One node of the graph (module docstring)."""

    key: str  # unique in the graph
    label: str  # how progress lines name it
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # keys of the tasks it waits for
    priority: int = 0
    inputs: bool = False  # call fn(..., inputs={key: value of each needed task})
    # Light: it takes no CPU of its worker (a report page: its kernel is a process of its own), so on a
    # local cluster it runs beside the worker's one compute task (cmtlib.experiments.cluster.COMPUTE).
    light: bool = False


@dataclass
class Outcome:
    key: str
    label: str
    status: str  # one of STATUSES
    value: Any = None
    seconds: float | None = None
    worker: str = ""  # the worker's address ('' when run here)
    error: str = ""  # one line: what went wrong
    detail: str = ""  # the end of the traceback and of the task's console output

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Context:
    """What every task of one graph runs with, wherever it runs."""

    data_dir: str = ""  # $CMT_DATA_DIR of the client: workers started elsewhere use the same
    threads: int = 0  # torch + BLAS threads of a worker (0 = leave the process's setting)
    capture: bool = False  # keep the tasks' console output off the console
    topic: str = ""  # the Dask event topic progress goes to ('' = call `tell`)

    def apply(self) -> None:
        if self.data_dir:
            os.environ["CMT_DATA_DIR"] = self.data_dir
        if self.threads:
            from cmtlib.runtime import set_threads

            set_threads(self.threads)


def check_order(tasks: Iterable[Task]) -> list[Task]:
    """The tasks, checked: unique keys, each needing only tasks listed before it."""
    seen: set[str] = set()
    out = list(tasks)
    for t in out:
        if t.key in seen:
            raise ValueError(f"two tasks have the key {t.key!r}")
        missing = [n for n in t.needs if n not in seen]
        if missing:
            raise ValueError(f"task {t.key!r} needs {missing}, not listed before it")
        seen.add(t.key)
    return out


def run_graph(tasks: Iterable[Task], cluster, on_done: Callable[[Outcome], str | None] | None = None,
              say: Callable[[str], None] = print) -> dict[str, Outcome]:
    """Run every task on `cluster` (a cmtlib.experiments.cluster.Cluster); key -> Outcome.

    `on_done(outcome)` is called here as each task ends (in the order they end); a text it returns is
    printed as the task's progress line instead of `finish_line(outcome)`. Ctrl-C cancels what was
    submitted and propagates.
    """
    tasks = check_order(tasks)
    finish = _finisher(on_done, say)
    if cluster.synchronous:
        return _run_here(tasks, Context(), finish, say)
    context = Context(data_dir=str(data_dir()), threads=cluster.layout.threads if cluster.layout else 0, capture=True,
                      topic=f"cmtlib-progress-{uuid.uuid4().hex[:8]}")
    return _run_on(cluster.client, tasks, context, finish, say, slots=cluster.layout.workers if cluster.local is not None else 0)


def _finisher(on_done, say) -> Callable[[Outcome], None]:
    def finish(outcome: Outcome) -> None:
        line = on_done(outcome) if on_done is not None else None
        say(line or finish_line(outcome))

    return finish


def start_line(label: str, worker: str = "") -> str:
    return f"{label} ..." + (f" (on worker {worker})" if worker else "")


def finish_line(outcome: Outcome, status: str = "", extra: str = "") -> str:
    """'<label> <status> <seconds> s<extra>', with the error's first line when it did not end ok."""
    seconds = f" {outcome.seconds:.1f} s" if outcome.seconds is not None else ""
    why = f": {outcome.error.splitlines()[0]}" if outcome.error and not outcome.ok else ""
    return f"{outcome.label} {status or outcome.status}{seconds}{extra}{why}"


def _run_here(tasks: list[Task], context: Context, finish, say) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for t in tasks:
        outcome = _execute(t, context, *[outcomes[n] for n in t.needs], tell=lambda event: say(start_line(event["label"])))
        outcomes[t.key] = outcome
        finish(outcome)
    return outcomes


def _run_on(client, tasks: list[Task], context: Context, finish, say, slots: int = 0) -> dict[str, Outcome]:
    """On a cluster. A task is handed to Dask once every task it needs has ended, with their outcomes
    as its arguments, highest priority first; with `slots` (a local cluster: its workers' compute
    slots) a compute task waits for a free one. Dask gives a ready task to a worker at once, and knows
    nothing of how long a run takes: handed all at once, tasks queue behind a run of minutes on one
    worker while the other has nothing to do. A user's workers have no slots, and a task asking for
    one would never start: there every ready task is handed over."""
    from distributed import as_completed

    from cmtlib.experiments.cluster import COMPUTE

    client.subscribe_topic(context.topic, lambda event: say(start_line(event[1]["label"], event[1]["on"])))
    token = context.topic.rsplit("-", 1)[-1]
    order = {t.key: i for i, t in enumerate(tasks)}
    pending = sorted(tasks, key=lambda t: (-t.priority, order[t.key]))
    outcomes: dict[str, Outcome] = {}
    running: dict[str, tuple[Any, Task]] = {}  # Dask key -> (future, task)
    finished = as_completed(loop=client.loop)

    def end(outcome: Outcome) -> None:
        outcomes[outcome.key] = outcome
        finish(outcome)

    def release() -> None:
        computing = sum(1 for _, t in running.values() if not t.light)
        for t in [t for t in pending if all(n in outcomes for n in t.needs)]:
            needed = [outcomes[n] for n in t.needs]
            if _blocked(t, needed) is not None:  # ends here: nothing to run
                pending.remove(t)
                end(_blocked(t, needed))
                return release()
            if slots and not t.light and computing >= slots:
                continue
            pending.remove(t)
            future = client.submit(_execute, t, context, *needed, key=f"{_slug(t.key)}-{token}-{order[t.key]}", priority=t.priority,
                                   pure=False, resources={COMPUTE: 1} if slots and not t.light else None)
            running[future.key], computing = (future, t), computing + (not t.light)
            finished.add(future)

    try:
        release()
        for future in finished:
            end(_collected(future, running.pop(future.key)[1]))
            release()
    finally:
        if running:  # interrupted: what has not started never will; running tasks end on their own
            with contextlib.suppress(Exception):
                client.cancel([f for f, _ in running.values()])
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(context.topic)
    return outcomes


def _collected(future, task: Task) -> Outcome:
    """A finished future's Outcome (_execute's), or what became of a task that did not end in it."""
    if future.status == "finished":
        return future.result()
    if future.status == "cancelled":
        return Outcome(task.key, task.label, "cancelled", error="cancelled before it ended")
    err = future.exception()
    from distributed.scheduler import KilledWorker

    if isinstance(err, KilledWorker):
        tries = err.allowed_failures + 1
        return Outcome(task.key, task.label, "lost", worker=str(getattr(err.last_worker, "address", "")),
                       error=f"its worker died while running it ({tries} attempt{'s' if tries > 1 else ''}; killed, out of memory "
                             "or crashed): run again to redo it")
    return Outcome(task.key, task.label, "failed", error=f"{type(err).__name__}: {err}".strip())


def _blocked(task: Task, needed: Iterable[Outcome]) -> Outcome | None:
    """The outcome of a task that cannot run because a task it needs did not end ok; None if it can."""
    blocked = next((o for o in needed if not o.ok), None)
    if blocked is None:
        return None
    why = f" ({blocked.error.splitlines()[0]})" if blocked.error else ""
    return Outcome(task.key, task.label, "skipped", error=f"not run: {blocked.label} {blocked.status}{why}")


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in key)[:60]


def _worker_address() -> tuple[str, str]:
    """(address, name) of the Dask worker running this, ('', '') outside one."""
    if "distributed" not in sys.modules:
        return "", ""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return "", ""
    return worker.address, str(worker.name)


def _execute(task: Task, context: Context, *needed: Outcome, tell: Callable[[dict], None] | None = None) -> Outcome:
    """Run one task where it was sent; never raises an Exception (its outcome says what happened)."""
    blocked = _blocked(task, needed)
    if blocked is not None:
        return blocked
    address, name = _worker_address()
    event = {"label": task.label, "on": name}
    if tell is not None:
        tell(event)
    elif context.topic and address:
        from distributed import get_worker

        get_worker().log_event(context.topic, event)
    output = io.StringIO()
    t0 = time.perf_counter()
    try:
        context.apply()
        with _captured(output, context.capture):
            extra = {"inputs": {o.key: o.value for o in needed}} if task.inputs else {}
            value = task.fn(*task.args, **task.kwargs, **extra)
    except Exception as err:  # noqa: BLE001 -- the task's outcome; the graph goes on without it
        tb = traceback.format_exc().rstrip().splitlines()[-TAIL_LINES:]
        printed = output.getvalue().rstrip().splitlines()[-TAIL_LINES:]
        detail = "\n".join(tb + (["", "its last output:"] + printed if printed else []))
        return Outcome(task.key, task.label, "failed", seconds=round(time.perf_counter() - t0, 2), worker=address,
                       error=f"{type(err).__name__}: {err}".strip(), detail=detail)
    return Outcome(task.key, task.label, "ok", value, round(time.perf_counter() - t0, 2), address)


class _PerThread:
    """A worker's sys.stdout or sys.stderr: what a task's thread writes goes to that task's buffer
    (two tasks may run side by side in one worker; contextlib.redirect_stdout would mix them up)."""

    def __init__(self, stream) -> None:
        self.stream, self.local = stream, threading.local()

    def write(self, text: str) -> int:
        return (getattr(self.local, "buffer", None) or self.stream).write(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding ...: the stream's
        return getattr(getattr(self.local, "buffer", None) or self.stream, name)


_ROUTER_LOCK = threading.Lock()


@contextlib.contextmanager
def _captured(buffer: io.StringIO, capture: bool):
    if not capture:
        yield
        return
    with _ROUTER_LOCK:  # installed once per worker process
        routers = []
        for name in ("stdout", "stderr"):
            if not isinstance(getattr(sys, name), _PerThread):
                setattr(sys, name, _PerThread(getattr(sys, name)))
            routers.append(getattr(sys, name))
    for router in routers:
        router.local.buffer = buffer
    try:
        yield
    finally:
        for router in routers:
            router.local.buffer = None
