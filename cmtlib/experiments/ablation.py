"""The task ablation (the paper's Table V) and any list of configurations trained one after another:
each params file trained and evaluated into <folder>/runs/<name>/, its resolved params beside it
in <folder>/params/<name>.yaml. The summary page is the report's (cmtlib.report.chain.ablation).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmtlib.engine import train
from cmtlib.evaluate import evaluate_run
from cmtlib.params import Params, dump_params
from cmtlib.run import with_run_dir


@dataclass
class Outcome:
    """One configuration's result: its metrics, or the error that stopped it."""

    name: str
    params: Params
    seconds: float
    metrics: dict[str, Any] | None = None
    error: BaseException | None = None


def unique_names(all_params: list[Params]) -> list[str]:
    """Run names made unique in order (a second 'x' becomes 'x-2')."""
    seen: dict[str, int] = {}
    names = []
    for p in all_params:
        n = seen.get(p.run_name, 0) + 1
        seen[p.run_name] = n
        names.append(p.run_name if n == 1 else f"{p.run_name}-{n}")
    return names


def run_each(all_params: list[Params], names: list[str], folder: Path) -> Iterator[Outcome]:
    """Train and evaluate each configuration in order, yielding its outcome; the first failure is
    yielded with its error and ends the sequence (the caller records it, then raises it)."""
    for name, params in zip(names, all_params):
        run_dir = folder / "runs" / name
        params = with_run_dir(params, run_dir)
        dump_params(params, folder / "params" / f"{name}.yaml")
        t0 = time.perf_counter()
        try:
            train(params, resume=False, overwrite=False)
            metrics = evaluate_run(run_dir)
        except Exception as err:  # noqa: BLE001 -- handed to the caller, which records it and raises it again
            yield Outcome(name, params, round(time.perf_counter() - t0, 1), error=err)
            return
        yield Outcome(name, params, round(time.perf_counter() - t0, 1), metrics=metrics)
