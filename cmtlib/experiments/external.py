"""External validation: the run judged at its frozen operating threshold on films from outside its
training collections, as `cmt report` does for the External validation page.

Two kinds of external set, both named in the params file:
    holdout     the films `holdout` held out of the run's own data (cmtlib.data.holdout): the
                leave-one-collection-out yardstick; evaluated from the run's cache, split `holdout`
    external    other manifests (`external: [a.csv, b.csv]`), every row, cached at the run's size
Each goes to <run>/external/<name>/ (predictions.csv, metrics.json), as `cmt evaluate RUN
--manifest M --split all` writes it, never over the run's own results. An evaluation newer than the
run's best checkpoint is reused.
"""

from __future__ import annotations

from pathlib import Path

from cmtlib.evaluate import evaluate_run
from cmtlib.params import Params
from cmtlib.run import Run

HOLDOUT = "holdout"


def external_sets(params: Params) -> list[tuple[str, Path | None, str]]:
    """(name, manifest or None for the run's own cache, split) of every external set the params name."""
    sets: list[tuple[str, Path | None, str]] = [(HOLDOUT, None, HOLDOUT)] if params.data.holdout else []
    seen = {HOLDOUT}
    for manifest in params.experiments.external:
        path = Path(manifest)
        name, n = path.stem, 1
        while name in seen:  # two manifests with one stem: a-2, a-3, ...
            n += 1
            name = f"{path.stem}-{n}"
        seen.add(name)
        sets.append((name, path, "all"))
    return sets


def ensure_external(params: Params, run_dir: str | Path) -> dict[str, Path]:
    """Each external set evaluated (or found current) at the run's frozen threshold; name -> folder."""
    run = Run.open(run_dir)
    made: dict[str, Path] = {}
    best = run.checkpoint("best")
    for name, manifest, split in external_sets(params):
        out = run.external(name)
        if not (out.evaluated and best.is_file() and out.evaluated_at >= best.stat().st_mtime):
            evaluate_run(run.path, manifest=manifest, split=split, out_dir=out.path)
        made[name] = out.path
    return made
