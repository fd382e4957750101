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
import time
from collections.abc import Iterable
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
            jobs: int = 1) -> dict[str, float]:
    """Make what the notebooks read; returns seconds per step ('data', 'run', 'external', 'comparison').
    `verbose` shows the training's progress and each compared method's time on the console. With
    `jobs` > 1 the comparison's deep runs (which need nothing of the report's run) train in a second
    process while the report's run trains here, each with the params' threads: the same numbers as
    one after the other, in about the time of the longer of the two."""
    wanted, seconds = needs(notebooks), {}
    if not wanted:
        return seconds
    t0 = time.perf_counter()
    ensure_data(params)
    seconds["data"] = round(time.perf_counter() - t0, 2)
    roles = tuple(r for r in ROLES if r in wanted)
    deep_seconds: dict = {}
    if wanted & ({"run", "external"} | set(ROLES)):
        t0 = time.perf_counter()
        deep = tuple(r for r in roles if r != "embedding")
        if jobs > 1 and deep:
            deep_seconds = _run_beside_deep(params, run_dir, report_dir, deep, verbose)
        else:
            ensure_run(params, run_dir, quiet=not verbose)
        seconds["run"] = round(time.perf_counter() - t0, 2)
    if "external" in wanted and external_sets(params):
        t0 = time.perf_counter()
        ensure_external(params, run_dir)
        seconds["external"] = round(time.perf_counter() - t0, 2)
    if roles:
        t0 = time.perf_counter()
        ensure_comparison(params, run_dir, report_dir, roles=roles, progress=(lambda m: print(m, flush=True)) if verbose else None,
                          seconds=deep_seconds)
        seconds["comparison"] = round(time.perf_counter() - t0, 2)
    return seconds


def _run_beside_deep(params: Params, run_dir: str | Path, report_dir: str | Path, roles: tuple[str, ...], verbose: bool) -> dict:
    """The report's run here and the comparison's deep runs in a second process, at once; the deep
    runs' seconds. Spawned, not forked: a forked child of a process that has used torch's thread
    pools can hang."""
    if verbose:
        print("training the comparison's baselines in a second process meanwhile ...", flush=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(train_deep, params, report_dir, roles, params.train.threads or 1)
        ensure_run(params, run_dir, quiet=not verbose)
        return future.result()
