"""A run or a data cache made on demand: what a notebook opened on its own asks for.

`ensure_run(params, run_dir)` returns the finished, evaluated `Run` in run_dir, training (or resuming)
and evaluating it first when the folder holds none: a researcher opening 05_overlays.ipynb in
JupyterLab with the smoke defaults gets a result, not a FileNotFoundError. In the report chain the
experiments step (cmtlib.experiments.plan) has made the run before any page opens, so pages only
read. `ensure_data(params)` does the same for the prepared data (import, split, cache).
"""

from __future__ import annotations

import time
from pathlib import Path

from cmtlib.data.prepare import prepare_data
from cmtlib.engine import train
from cmtlib.evaluate import evaluate_run
from cmtlib.params import Params
from cmtlib.run import Run, with_run_dir
from cmtlib.runtime import quietly


def ensure_run(params: Params, run_dir: str | Path, evaluate: bool = True, quiet: bool = True) -> Run:
    """The run in run_dir, trained (resuming an interrupted one) and evaluated first if needed.

    quiet keeps training's progress output off a notebook page (the run keeps its train.log).
    Raises RunMismatchError when run_dir holds a run made with other parameters.
    """
    run = Run(run_dir)
    params = with_run_dir(params, run.path)
    if run.path.is_dir():
        run.check_made_with(params)
        if run.evaluated or (not evaluate and run.finished):
            return run
    call = quietly if quiet else (lambda fn, *a, **kw: fn(*a, **kw))
    t0 = time.perf_counter()
    if not run.finished:
        resume = run.config_path.is_file()
        print(f"{'resuming' if resume else 'training'} the run (minutes on a CPU) ...", flush=True)
        call(train, params, resume=resume, overwrite=False)
    if evaluate:
        call(evaluate_run, run.path)
    print(f"run ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return run.refresh()


def ensure_data(params: Params) -> Path:
    """The params' cache folder, imported, split and cached first when needed (cmtlib.data.prepare)."""
    return prepare_data(params)
