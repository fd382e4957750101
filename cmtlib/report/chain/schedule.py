"""Running the report's pages several at a time.

Pages only read what the experiments step made, so most are independent; a page that reads another
page's side file declares it in its notebook metadata, `{"cmtlib": {"after": ["07_cam"]}}` (the
shortcut audit reuses the CAM page's heat maps), and starts only when that page has finished. With
`jobs` = 1 the pages run one after another, in order; with more, a page that another waits on
starts before the others that are ready. After a failure no new page starts; those
already running finish, and the first failure is returned.

A `Gate` lets pages start while the experiments step is still making what other pages read: a page
starts once the needs it declares (cmtlib.experiments.plan) are made, so the data page runs while
the run trains, and the run's pages while the baselines train. A page that declares no needs, or any
page after the experiments failed, waits for the whole step.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

Failure = TypeVar("Failure")


def declared_after(notebook: Path) -> set[str]:
    """The page stems a notebook's metadata says it runs after (cmtlib.after)."""
    meta = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {})
    return set((meta.get("cmtlib") or {}).get("after") or ())


class Gate:
    """What the experiments step has made so far; pages ask it whether they may start."""

    POLL_S = 0.5  # how often a waiting scheduler looks again

    def __init__(self, needs: dict[str, frozenset[str] | None]) -> None:
        self.needs = needs  # page stem -> its declared needs (None: declares none)
        self.made: set[str] = set()
        self.finished = False
        self.failure = None
        self._changed = threading.Condition()

    def add(self, made: frozenset[str]) -> None:
        with self._changed:
            self.made |= made
            self._changed.notify_all()

    def finish(self, failure=None) -> None:
        """The step is over: everything is made, or `failure` says why not."""
        with self._changed:
            self.finished, self.failure = True, failure
            self._changed.notify_all()

    def allows(self, stem: str) -> bool:
        if self.finished:
            return self.failure is None
        needs = self.needs.get(stem)
        return needs is not None and needs <= self.made

    def wait(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)


def run_pages(notebooks: list[Path], run_one: Callable[[Path], Failure | None], jobs: int = 1, gate: Gate | None = None) -> Failure | None:
    """Call `run_one(nb)` for every notebook, up to `jobs` at a time, in order where they wait on
    nothing, each once `gate` allows it; returns the first failure `run_one` returned (or the gate's,
    if that came first), or None."""
    stems = {nb.stem for nb in notebooks}
    waits = {nb.stem: declared_after(nb) & stems for nb in notebooks}
    awaited = set().union(*waits.values()) if waits else set()
    pending, done, failure = list(notebooks), set(), None
    running: dict[Future, Path] = {}
    lock = threading.Lock()
    open_gate = gate or Gate({})
    if gate is None:
        open_gate.finish()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending or running:
            if failure is None and open_gate.failure is not None:
                failure = open_gate.failure
            ready = [nb for nb in pending if waits[nb.stem] <= done and open_gate.allows(nb.stem)] if failure is None else []
            # A page another page waits on goes first (its waiter would otherwise end the chain alone).
            if jobs > 1:
                ready.sort(key=lambda nb: nb.stem not in awaited)
            for nb in ready[: max(1, jobs) - len(running)]:
                pending.remove(nb)
                running[pool.submit(run_one, nb)] = nb
            if not running:
                if failure is not None or open_gate.finished:
                    break  # a failure stopped the rest, or a page waits on one that never ran
                open_gate.wait(Gate.POLL_S)
                continue
            finished, _ = wait(running, timeout=None if open_gate.finished else Gate.POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                nb = running.pop(future)
                result = future.result()
                with lock:
                    done.add(nb.stem)
                    if result is not None and failure is None:
                        failure = result
    return failure
