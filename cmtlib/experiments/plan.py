"""What each report page reads, and `prepare`, which makes it before any page opens.

A page declares what it reads in its notebook's metadata, `{"cmtlib": {"needs": [...]}}`, from
    data           the prepared data (import, split, cache)
    run            the report's own run, trained and evaluated
    external       the run judged on its external sets (cmtlib.experiments.external)
    cmtnet, classifier, segmentation, embedding
                   the comparison's methods of that role (cmtlib.experiments.comparison.ROLES)
`cmt report` calls `prepare` for the union over its pages first (its own step in timings.json), so
the pages only read finished runs, and a chain of one page trains only what that page needs. A
notebook that declares nothing gets nothing made ahead: opened on its own, a page still asks the
experiments layer for what it reads (`ensure_run`, `ensure_comparison`), which makes it then.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cmtlib.data.workers import die_with_parent
from cmtlib.errors import CmtError, ConfigError
from cmtlib.experiments.comparison import ROLES, ensure_comparison, train_deep
from cmtlib.experiments.external import ensure_external, external_sets
from cmtlib.experiments.runs import ensure_data, ensure_run
from cmtlib.params import Params

KNOWN_NEEDS = frozenset({"data", "run", "external", *ROLES})


def declared_needs(notebook: str | Path) -> frozenset[str]:
    """The `cmtlib.needs` a notebook's metadata declares (empty when it declares none)."""
    path = Path(notebook)
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    needs = frozenset((meta.get("cmtlib") or {}).get("needs") or ())
    unknown = sorted(needs - KNOWN_NEEDS)
    if unknown:
        raise ConfigError(f"{path.name} declares needs {unknown} in its metadata (cmtlib.needs); known: {', '.join(sorted(KNOWN_NEEDS))}")
    return needs


def needs(notebooks: Iterable[str | Path]) -> frozenset[str]:
    """Everything the notebooks read together."""
    out: set[str] = set()
    for nb in notebooks:
        out |= declared_needs(nb)
    return frozenset(out)


def prepare(params: Params, run_dir: str | Path, report_dir: str | Path, notebooks: Iterable[str | Path], verbose: bool = True,
            jobs: int = 1, made: Callable[[frozenset[str]], None] | None = None) -> dict[str, float]:
    """Make what the notebooks read; returns seconds per step ('data', 'run', 'external', 'comparison').

    `verbose` shows the training's progress and each compared method's time on the console. With
    `jobs` > 1 the comparison's deep runs (which need nothing of the report's run) train in a second
    process while the report's run trains here, each with the params' threads: the same numbers as
    one after the other, in about the time of the longer of the two. `made` is told the needs each
    step has finished as it finishes ({"data"}, then {"run"}, ...), so that pages reading only
    those can start while the rest is made.
    """
    wanted, seconds = needs(notebooks), {}
    tell = made or (lambda _needs: None)
    if not wanted:
        return seconds
    t0 = time.perf_counter()
    ensure_data(params)
    seconds["data"] = round(time.perf_counter() - t0, 2)
    tell(frozenset({"data"}))
    roles = tuple(r for r in ROLES if r in wanted)
    deep = tuple(r for r in roles if r != "embedding")
    with _Beside(params, report_dir, deep if jobs > 1 else (), tell) as beside:
        if beside.running and verbose:
            print("training the comparison's baselines in a second process meanwhile ...", flush=True)
        if wanted & ({"run", "external"} | set(ROLES)):
            t0 = time.perf_counter()
            ensure_run(params, run_dir, quiet=not verbose)
            seconds["run"] = round(time.perf_counter() - t0, 2)
        tell(frozenset({"run"}))
        if "external" in wanted and external_sets(params):
            t0 = time.perf_counter()
            ensure_external(params, run_dir)
            seconds["external"] = round(time.perf_counter() - t0, 2)
        tell(frozenset({"external"}))
        if roles:
            t0 = time.perf_counter()
            if "embedding" in roles and beside.running:  # they read only the run: made while the baselines train
                ensure_comparison(params, run_dir, report_dir, roles=("embedding",))
            ensure_comparison(params, run_dir, report_dir, roles=roles, progress=(lambda m: print(m, flush=True)) if verbose else None,
                              seconds=beside.result())
            seconds["comparison"] = round(time.perf_counter() - t0, 2)  # with the wait for the second process
        tell(frozenset(roles))
    return seconds


def _train_deep_child(parent: int, queue, params: Params, report_dir: str | Path, roles: tuple[str, ...], threads: int) -> None:
    """The second process: train_deep, telling `queue` each group of roles made, then its result.
    It ends when its parent dies (killed, or stopped by SIGTERM), not minutes later."""
    die_with_parent(parent)
    try:
        result = train_deep(params, report_dir, roles, threads, made=lambda group: queue.put(("made", group)))
        queue.put(("done", result))
    except BaseException as err:  # handed to the parent, which raises it there
        try:
            queue.put(("error", err))
        except Exception:  # an exception that cannot be pickled: its text
            queue.put(("error", RuntimeError(f"{type(err).__name__}: {err}")))


_LIVE: set = set()  # the second processes running now (stop_beside)


def stop_beside() -> None:
    """Stop every second process of `prepare` at once (the caller was interrupted or failed):
    otherwise Python's exit would wait minutes for the baselines it no longer needs."""
    for beside in list(_LIVE):
        beside.stop()


class _Beside:
    """The comparison's deep runs in a second process while this one trains the report's run.

    Spawned, not forked: a forked child of a process that has used torch's thread pools can hang.
    The child tells a queue which roles it has made (the classifiers first); a thread here passes
    that on to `tell`, so a page reading only those starts before the rest is done. A plain
    process rather than a pool, so that `stop()` can end it. With no roles nothing is started and
    `result()` is None.
    """

    POLL_S = 0.5

    def __init__(self, params: Params, report_dir: str | Path, roles: tuple[str, ...], tell: Callable[[frozenset[str]], None]) -> None:
        self.params, self.report_dir, self.roles, self.tell = params, report_dir, roles, tell
        self._process = self._listener = None
        self._outcome: tuple[str, Any] | None = None
        self._finished = threading.Event()

    @property
    def running(self) -> bool:
        """A second process was started (there were roles to train beside)."""
        return self._process is not None

    def __enter__(self) -> "_Beside":
        if not self.roles:
            return self
        context = multiprocessing.get_context("spawn")
        self._queue = context.SimpleQueue()
        self._process = context.Process(target=_train_deep_child, name="cmt-baselines", args=(
            os.getpid(), self._queue, self.params, self.report_dir, self.roles, self.params.train.threads or 1))
        self._process.start()
        _LIVE.add(self)
        self._listener = threading.Thread(target=self._listen, name="cmt-baselines-made", daemon=True)
        self._listener.start()
        return self

    def _listen(self) -> None:
        while True:
            if self._queue.empty():
                if not self._process.is_alive() and self._queue.empty():
                    code = self._process.exitcode
                    self._outcome = ("error", CmtError(f"the baselines' process ended without a result (exit code {code})"))
                    break
                time.sleep(self.POLL_S)
                continue
            kind, value = self._queue.get()
            if kind == "made":
                self.tell(frozenset(value))
            else:
                self._outcome = (kind, value)
                break
        self._finished.set()

    def result(self) -> dict | None:
        """The deep runs' seconds, once the second process is done; its error, raised here."""
        if self._process is None:
            return None
        self._finished.wait()
        kind, value = self._outcome
        if kind == "error":
            raise value
        return value

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
        _LIVE.discard(self)

    def __exit__(self, exc_type, *exc) -> None:
        if self._process is None:
            return
        if exc_type is not None:
            self.stop()  # this process failed: the baselines are not needed
        self._process.join()
        _LIVE.discard(self)
