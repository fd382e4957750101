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

import contextlib
import json
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cmtlib.errors import ConfigError
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


_MADE = None  # in the second process: the queue `_Beside` reads


def _keep_queue(queue) -> None:
    global _MADE
    _MADE = queue


def _train_deep_beside(params: Params, report_dir: str | Path, roles: tuple[str, ...], threads: int) -> dict:
    return train_deep(params, report_dir, roles, threads, made=_MADE.put if _MADE is not None else None)


class _Beside:
    """The comparison's deep runs in a second process while this one trains the report's run.

    Spawned, not forked: a forked child of a process that has used torch's thread pools can hang.
    The child tells a queue which roles it has made (the classifiers first); a thread here passes
    that on to `tell`, so a page reading only those starts before the rest is done. With no roles
    nothing is started and `result()` is None.
    """

    def __init__(self, params: Params, report_dir: str | Path, roles: tuple[str, ...], tell: Callable[[frozenset[str]], None]) -> None:
        self.params, self.report_dir, self.roles, self.tell = params, report_dir, roles, tell
        self.running = bool(roles)
        self._stack = contextlib.ExitStack()
        self._future = self._listener = self._queue = None

    def __enter__(self) -> "_Beside":
        if not self.running:
            return self
        context = multiprocessing.get_context("spawn")
        self._queue = context.SimpleQueue()
        pool = self._stack.enter_context(ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_keep_queue,
                                                             initargs=(self._queue,)))
        self._future = pool.submit(_train_deep_beside, self.params, self.report_dir, self.roles, self.params.train.threads or 1)
        self._listener = threading.Thread(target=self._listen, name="cmt-baselines-made", daemon=True)
        self._listener.start()
        return self

    def _listen(self) -> None:
        for group in iter(self._queue.get, None):
            self.tell(frozenset(group))

    def result(self) -> dict | None:
        return self._future.result() if self._future is not None else None

    def __exit__(self, *exc) -> None:
        self._stack.close()  # waits for the second process
        if self._listener is not None:
            self._queue.put(None)
            self._listener.join()
