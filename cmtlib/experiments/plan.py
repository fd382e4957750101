"""What each report page reads, and the tasks of the report's graph that make it.

A page declares what it reads in its notebook's metadata, `{"cmtlib": {"needs": [...]}}`, from
    data           the prepared data (import, split, cache)
    run            the report's own run, trained and evaluated
    external       the run judged on its external sets (cmtlib.experiments.external)
    cmtnet, classifier, segmentation, embedding
                   the comparison's methods of that role (cmtlib.experiments.comparison.ROLES)
    comparison     the comparison recorded with every method's time (comparison.json)
    explanations   the run's explanation checks (cmtlib.explain.checks: reliance, heat maps against
                   truth, faithfulness, randomisation), kept in the run folder for the pages to read
`experiment_tasks` turns the union over the report's pages into tasks of the report's graph
(cmtlib.experiments.graph): the data, the run, its external sets, one task per deep run of the
comparison (baselines, CMTNet at their setting), the embedding classifiers and the comparison's
record, each waiting only for what it reads. A page then starts as soon as the tasks making its
needs have finished (cmtlib.report.chain.schedule), so the pages only read finished runs, and a
chain of one page trains only what that page needs. A notebook that declares nothing gets nothing
made ahead and waits for every experiments task: opened on its own, a page still asks the
experiments layer for what it reads (`ensure_run`, `ensure_comparison`), which makes it then.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from cmtlib.data.prepare import prepare_data
from cmtlib.errors import ConfigError
from cmtlib.experiments.baselines import DEEP_BASELINES
from cmtlib.experiments.comparison import LABELS, ROLES, deep_plan, deep_run, ensure_comparison
from cmtlib.experiments.external import ensure_external, external_sets
from cmtlib.experiments.graph import Task
from cmtlib.experiments.runs import ensure_run
from cmtlib.explain.checks import run_checks
from cmtlib.params import Params
from cmtlib.run import Run

KNOWN_NEEDS = frozenset({"data", "run", "external", "comparison", "explanations", *ROLES})
# Among ready tasks, the higher first: the run and what follows it on the way to the comparison page
# (the embedding classifiers) before the baselines, the classifiers (the CAM page reads them) first.
PRIORITY = {"data": 1000, "run": 900, "external": 800, "explanations": 760, "embedding": 750, "classifier": 700, "deep": 600,
            "comparison": 500}  # pages: below


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


def make_run(params: Params, run_dir: str | Path) -> None:
    """The report's run task: trained (or resumed) and evaluated into run_dir."""
    ensure_run(params, run_dir, quiet=False)


def explanations(params: Params, run_dir: str | Path) -> None:
    """The run's explanation checks, measured once into the run folder (pages 7 and 8 read them)."""
    run_checks(Run.open(run_dir), seed=params.train.seed)


def embedding_classifiers(params: Params, run_dir: str | Path, report_dir: str | Path) -> None:
    """The embedding classifiers on the run's embeddings (seconds each): a task of their own."""
    ensure_comparison(params, run_dir, report_dir, roles=("embedding",))


def record_comparison(params: Params, run_dir: str | Path, report_dir: str | Path, roles: tuple[str, ...], inputs: dict) -> None:
    """comparison.json with every method of `roles` and the time each deep run took in its task."""
    seconds = {(e.key, e.seed): e.seconds for e in inputs.values() if hasattr(e, "key") and e.seconds is not None}
    ensure_comparison(params, run_dir, report_dir, roles=roles, seconds=seconds)


def experiment_tasks(params: Params, run_dir: str | Path, report_dir: str | Path,
                     notebooks: Iterable[str | Path]) -> tuple[list[Task], dict[str, tuple[str, ...]]]:
    """The experiments tasks for what the notebooks read (module docstring), and for each need the
    keys of the tasks that make it."""
    wanted = needs(notebooks)
    if not wanted:
        return [], {}
    run_dir, report_dir = str(Path(run_dir).resolve()), str(Path(report_dir).resolve())
    tasks = [Task("data", "experiments: data", prepare_data, (params,), priority=PRIORITY["data"])]
    makes: dict[str, tuple[str, ...]] = {"data": ("data",)}
    if not wanted - {"data"}:
        return tasks, makes
    tasks.append(Task("run", "experiments: the run", make_run, (params, run_dir), needs=("data",), priority=PRIORITY["run"]))
    makes["run"] = makes["external"] = ("run",)
    if "external" in wanted and external_sets(params):
        tasks.append(Task("external", "experiments: external sets", ensure_external, (params, run_dir), needs=("run",), priority=PRIORITY["external"]))
        makes["external"] = ("external",)
    if "explanations" in wanted:
        tasks.append(Task("explanations", "experiments: explanation checks", explanations, (params, run_dir), needs=("run",),
                          priority=PRIORITY["explanations"]))
        makes["explanations"] = ("explanations",)
    roles = tuple(r for r in ROLES if r in wanted or "comparison" in wanted)
    tasks += _comparison_tasks(params, run_dir, report_dir, roles, makes)
    return tasks, makes


def _comparison_tasks(params: Params, run_dir: str, report_dir: str, roles: tuple[str, ...], makes: dict) -> list[Task]:
    """A task per deep run (after the data its setting asks for), the embedding classifiers and the
    comparison's record; fills `makes` for each role and for 'comparison'."""
    tasks: list[Task] = []
    data = {_data_key(params): "data"}
    for role in roles:
        makes[role] = ()
    for key, file, seed, role, p in deep_plan(params, roles):
        setting = _data_key(p)
        if setting not in data:
            data[setting] = f"data:{len(data)}"
            # After the run's data: another size of the same films waits for them rather than for their lock.
            tasks.append(Task(data[setting], f"experiments: data at {p.data.image_size} px", prepare_data, (p,), needs=("data",),
                              priority=PRIORITY["data"]))
        name = "CMTNet at the baselines' setting" if file is None else LABELS.get(key, DEEP_BASELINES.get(p.model.model, key))
        tasks.append(Task(f"deep:{key}-seed{seed}", f"experiments: {name}, seed {seed}", deep_run, (params, report_dir, key, file, seed),
                          needs=(data[setting],), priority=PRIORITY["classifier" if role == "classifier" else "deep"]))
        makes[role] += (tasks[-1].key,)
    if "embedding" in roles:
        tasks.append(Task("embedding", "experiments: embedding classifiers", embedding_classifiers, (params, run_dir, report_dir),
                          needs=("run",), priority=PRIORITY["embedding"]))
        makes["embedding"] = ("embedding",)
    if roles:
        made = tuple(dict.fromkeys(k for r in roles for k in makes[r]))
        tasks.append(Task("comparison", "experiments: the comparison's record", record_comparison, (params, run_dir, report_dir, roles),
                          needs=("run", *made), priority=PRIORITY["comparison"], inputs=True, light=True))
        makes["comparison"] = ("comparison",)
    return tasks


def _data_key(params: Params) -> str:
    return json.dumps(dataclasses.asdict(params.data), sort_keys=True)
