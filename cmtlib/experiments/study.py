"""A study: configurations x seeds, each run trained and evaluated as one task of a Dask graph
(cmtlib.experiments.graph), with an optional analysis of each finished run as a task of its own.
`cmt ablation`, `cmt mitigation` and the explanation studies are made of it.

    from cmtlib.experiments.study import run_study, spread
    outcomes = run_study([("all_tasks", params_a), ("no_lung", params_b)], "reports/my-study",
                         seeds=[0, 1, 2], analysis=my_analysis, scheduler="")
    # one RunOutcome per configuration and seed: status, metrics, analysis, seconds, worker, error

Layout: <folder>/runs/<name>[-s<seed>]/ (a run folder; `-s<seed>` only when seeds are given; a name
may hold '/' for sub-folders) and <folder>/params/<name>[-s<seed>].yaml (its resolved params).

The graph: a data task per distinct data setting (import, split, cache), a task per run to train
(train, or resume an interrupted run, then evaluate), and with `analysis` a task per run calling
`analysis(run_dir)` on the finished run folder: a module-level function (or a functools.partial of
one, so that workers can unpickle it) returning a JSON-able dict. It runs for reused runs too; an
analysis that is costly keeps its results in the run folder and reuses them.

Resuming: a run folder that holds a finished, evaluated run made with the same parameters
(Run.finished, Run.check_made_with) is reused without training; one made with other parameters
stops the study before any worker starts (the keys that differ are named). An interrupted run
resumes from its last epoch. Failures: a run that fails, or is lost with its worker, is reported
with its error, its analysis is skipped, and the other runs go on; `check` then raises StudyError,
for the caller to mark it on its summary first and exit non-zero.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmtlib.data.prepare import prepare_data
from cmtlib.errors import CmtError, ConfigError
from cmtlib.experiments.cluster import open_cluster
from cmtlib.experiments.graph import Outcome, Task, finish_line, run_graph
from cmtlib.experiments.runs import ensure_run
from cmtlib.params import Params, dump_params
from cmtlib.run import Run, RunMismatchError, with_run_dir


class StudyError(CmtError):
    """Runs of a study did not finish (failed, lost with their worker, or skipped); the summary says which."""


@dataclass
class RunOutcome:
    """One configuration x seed of a study."""

    name: str  # the run's name: the configuration's, with -s<seed> when seeds were given
    config: str
    seed: int
    run_dir: str
    status: str  # ok | reused | failed | lost | skipped | cancelled
    metrics: dict[str, Any] | None = None  # the run's metrics.json
    analysis: dict[str, Any] | None = None  # what `analysis(run_dir)` returned
    seconds: float | None = None  # training + evaluation in this study (None when reused)
    analysis_seconds: float | None = None
    worker: str = ""  # the Dask worker's address that trained it (or analysed a reused run); '' = here
    error: str = ""
    detail: str = ""  # the end of the traceback and of the run's console output

    @property
    def done(self) -> bool:
        return self.status in ("ok", "reused")


@dataclass
class _Planned:
    name: str
    config: str
    seed: int
    params: Params
    reused: bool


def unique_names(names: Iterable[str]) -> list[str]:
    """Names made unique in order (a second 'x' becomes 'x-2')."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen.get(name, 0) + 1
        seen[name] = n
        out.append(name if n == 1 else f"{name}-{n}")
    return out


def study_folder(folder: str | Path) -> Path:
    """A study's folder, made if new; an existing one is resumed (its finished runs reused)."""
    path = Path(folder).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def plan_study(configs: Sequence[tuple[str, Params]], folder: str | Path, seeds: Sequence[int] | None = None) -> list[_Planned]:
    """Every run of the study with its run folder and seed set, and whether a finished run is reused;
    RunMismatchError (before anything runs) for folders holding runs made with other parameters."""
    names = [n for n, _ in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"a study's configurations need distinct names; got {names} (cmtlib.experiments.study.unique_names makes them so)")
    folder = Path(folder).resolve()
    planned, mismatched = [], []
    for config, params in configs:
        for seed in (list(seeds) if seeds else [params.train.seed]):
            name = f"{config}-s{seed}" if seeds else config
            p = with_run_dir(dataclasses.replace(params, train=dataclasses.replace(params.train, seed=int(seed))), folder / "runs" / name)
            run = Run(p.train.run_dir)
            try:
                run.check_made_with(p)
            except RunMismatchError as err:
                mismatched.append(str(err))
            planned.append(_Planned(name, config, int(seed), p, run.finished and run.evaluated))
    if mismatched:
        raise RunMismatchError(f"{len(mismatched)} run folder(s) of {folder} hold runs made with other parameters; give the study "
                               f"another folder (--out) or delete them to retrain. {mismatched[0]}")
    return planned


def train_run(params: Params) -> dict[str, Any] | None:
    """A study's run task: train (or resume) and evaluate into params.train.run_dir; its metrics."""
    return ensure_run(params, params.train.run_dir, quiet=False).metrics


def analyse_run(analysis: Callable[[Path], dict], run_dir: str) -> dict[str, Any]:
    """A study's analysis task: `analysis(run_dir)`, checked to be a JSON-able dict."""
    result = analysis(Path(run_dir))
    if not isinstance(result, dict):
        raise TypeError(f"a study's analysis must return a dict, got {type(result).__name__}")
    json.dumps(result)  # a TypeError here names what is not JSON-able
    return result


def study_tasks(planned: list[_Planned], analysis: Callable[[Path], dict] | None = None) -> list[Task]:
    """The graph of a planned study: data, run and analysis tasks (module docstring)."""
    tasks: list[Task] = []
    data_keys: dict[str, str] = {}
    films: dict[str, str] = {}  # the data task that first prepares each set of films (any image size)
    n = len(planned)
    for i, r in enumerate(planned):
        if r.reused and analysis is None:
            continue
        setting = json.dumps(dataclasses.asdict(r.params.data), sort_keys=True)
        same_films = json.dumps({k: v for k, v in dataclasses.asdict(r.params.data).items() if k != "image_size"}, sort_keys=True)
        if setting not in data_keys:
            data_keys[setting] = f"data{len(data_keys) + 1}"
            # Another size of films already being prepared waits for them, not for their folder's lock on a worker.
            after = (films[same_films],) if same_films in films else ()
            films.setdefault(same_films, data_keys[setting])
            tasks.append(Task(data_keys[setting], f"data for {r.name} ({data_words(r.params)})", prepare_data, (r.params,), needs=after,
                              priority=2 * n + 1))
        needs = (data_keys[setting],)
        if not r.reused:
            tasks.append(Task(f"run:{r.name}", f"[{i + 1}/{n}] {r.name}", train_run, (r.params,), needs=needs, priority=2 * (n - i)))
            needs = (f"run:{r.name}",)
        if analysis is not None:
            tasks.append(Task(f"analysis:{r.name}", f"[{i + 1}/{n}] analysis of {r.name}", analyse_run, (analysis, r.params.train.run_dir),
                              needs=needs, priority=2 * (n - i) + 1))
    return tasks


def data_words(params: Params) -> str:
    d = params.data
    held = f", holdout {'; '.join(d.holdout)}" if d.holdout else ""
    return f"{d.data_kind}, {d.image_size} px{held}"


def run_study(configs: Sequence[tuple[str, Params]], folder: str | Path, seeds: Sequence[int] | None = None,
              analysis: Callable[[Path], dict] | None = None, scheduler: str = "", jobs: int = 0,
              on_done: Callable[[RunOutcome], None] | None = None, say: Callable[[str], None] = print) -> list[RunOutcome]:
    """Train, evaluate (and analyse) every configuration x seed; one RunOutcome each, in order.

    scheduler: a Dask scheduler's address ('' = a local cluster sized to this machine); jobs: local
    worker processes (0 = sized to the machine, 1 = no cluster: one run after another here).
    `on_done` is told each run's outcome as it is known (a summary page kept current).
    """
    folder = Path(folder).resolve()
    planned = plan_study(configs, folder, seeds)
    for r in planned:
        dump_params(r.params, folder / "params" / f"{r.name}.yaml")
    outcomes = {r.name: _reused(r) for r in planned if r.reused}
    if outcomes:
        say(f"reusing {len(outcomes)} finished run(s) of {folder}: {', '.join(outcomes)}")
        for name in outcomes if analysis is None and on_done is not None else ():
            on_done(outcomes[name])
    tasks = study_tasks(planned, analysis)
    if tasks:
        by_name = {r.name: r for r in planned}
        last = {t.key.split(":", 1)[1]: t.key for t in tasks if ":" in t.key}  # a run's outcome is known after its last task
        results: dict[str, Outcome] = {}

        def done(outcome: Outcome) -> str | None:
            results[outcome.key] = outcome
            kind, _, name = outcome.key.partition(":")
            if name and last[name] == outcome.key:
                outcomes[name] = _outcome(by_name[name], results.get(f"run:{name}"), results.get(f"analysis:{name}"))
                if on_done is not None:
                    on_done(outcomes[name])
            return finish_line(outcome, extra=_auc_words(outcome.value)) if kind == "run" and outcome.ok else None

        first = planned[0].params
        with open_cluster(scheduler, jobs, threads=max(r.params.train.threads for r in planned), device=first.train.device,
                          most=sum(1 for t in tasks if not t.key.startswith("data")), say=say) as cluster:
            run_graph(tasks, cluster, on_done=done, say=say)
    return [outcomes[r.name] for r in planned]


def _reused(r: _Planned) -> RunOutcome:
    return RunOutcome(r.name, r.config, r.seed, r.params.train.run_dir, "reused", metrics=Run(r.params.train.run_dir).metrics)


def _outcome(r: _Planned, run: Outcome | None, analysis: Outcome | None) -> RunOutcome:
    out = _reused(r) if r.reused else RunOutcome(r.name, r.config, r.seed, r.params.train.run_dir, "skipped")
    if run is not None:
        out.status, out.metrics, out.seconds, out.worker = run.status, run.value, run.seconds, run.worker
        out.error, out.detail = run.error, run.detail
    if analysis is not None:
        out.analysis, out.analysis_seconds = analysis.value, analysis.seconds
        out.worker = out.worker or analysis.worker
        if not analysis.ok and out.done:
            out.status, out.error, out.detail = analysis.status, f"analysis: {analysis.error}", analysis.detail
    return out


def _auc_words(metrics: dict[str, Any] | None) -> str:
    auc = ((metrics or {}).get("covid") or {}).get("auc")
    return f"; COVID AUC {auc:.3f}" if isinstance(auc, (int, float)) and math.isfinite(auc) else ""


def spread(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean, standard deviation (n - 1), min and max over the finite values (seeds of one configuration)."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not xs:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(xs), "mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "min": min(xs), "max": max(xs)}


def check(outcomes: Sequence[RunOutcome], summary: str | Path = "") -> None:
    """StudyError naming the runs that did not finish (after the caller wrote its summary)."""
    bad = [o for o in outcomes if not o.done]
    if bad:
        where = f"; summary: {summary}" if summary else ""
        listed = "; ".join(f"{o.name} ({o.status}: {o.error.splitlines()[0] if o.error else 'no error recorded'})" for o in bad[:5])
        raise StudyError(f"{len(bad)} of {len(outcomes)} run(s) did not finish: {listed}{' ...' if len(bad) > 5 else ''}{where}")
