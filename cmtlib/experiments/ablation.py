"""The task ablation (the paper's Table V), and any list of configurations compared side by side: a
study (cmtlib.experiments.study) whose runs are only trained and evaluated, one per configuration
(and seed), into <folder>/runs/<name>[-s<seed>]/. The summary page is the report's
(cmtlib.report.chain.ablation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cmtlib.experiments.study import RunOutcome, run_study, unique_names
from cmtlib.params import Params


def config_names(all_params: Sequence[Params]) -> list[str]:
    """Each configuration's name: its run name, made unique in order (a second 'x' becomes 'x-2')."""
    return unique_names(p.run_name for p in all_params)


def run_configurations(all_params: Sequence[Params], names: Sequence[str], folder: Path, seeds: Sequence[int] | None = None,
                       scheduler: str = "", jobs: int = 0, on_done: Callable[[RunOutcome], None] | None = None) -> list[RunOutcome]:
    """Train and evaluate every configuration (x seed) as one task each; one outcome per run, in order."""
    return run_study(list(zip(names, all_params)), folder, seeds=seeds, scheduler=scheduler, jobs=jobs, on_done=on_done)
