"""Running the report's pages several at a time.

Pages only read what the experiments step made, so most are independent; a page that reads another
page's side file declares it in its notebook metadata, `{"cmtlib": {"after": ["07_cam"]}}` (the
shortcut audit reuses the CAM page's heat maps), and starts only when that page has finished. With
`jobs` = 1 the pages run one after another, in order. After a failure no new page starts; those
already running finish, and the first failure is returned.
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


def run_pages(notebooks: list[Path], run_one: Callable[[Path], Failure | None], jobs: int = 1) -> Failure | None:
    """Call `run_one(nb)` for every notebook, up to `jobs` at a time, in order where they wait on
    nothing; returns the first failure `run_one` returned, or None."""
    stems = {nb.stem for nb in notebooks}
    waits = {nb.stem: declared_after(nb) & stems for nb in notebooks}
    pending, done, failure = list(notebooks), set(), None
    running: dict[Future, Path] = {}
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending or running:
            ready = [nb for nb in pending if waits[nb.stem] <= done] if failure is None else []
            for nb in ready[: max(1, jobs) - len(running)]:
                pending.remove(nb)
                running[pool.submit(run_one, nb)] = nb
            if not running:
                break  # a failure stopped the rest, or a page waits on one that never ran
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                nb = running.pop(future)
                result = future.result()
                with lock:
                    done.add(nb.stem)
                    if result is not None and failure is None:
                        failure = result
    return failure
