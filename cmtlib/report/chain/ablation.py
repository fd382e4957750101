"""`cmt ablation`: train + evaluate each params file (and seed) as one task of a Dask graph
(cmtlib.experiments.ablation, .study), then a summary page kept current as runs end.

Only the engine runs per configuration (no notebook chain): the ablation's budget (30 min on 2
cores) leaves no room for ten pages per configuration. Layout:

    reports/ablation/ (or --out)
        index.html      Table V: per task subset (named as the paper does, tasks spelled out) COVID
                        sensitivity at 99 % specificity, AUC, EER, lung and disease Dice, with CIs
                        (with --seeds: the mean over seeds, their spread and range)
        summary.json    the same numbers, machine-readable, with each run's outcome
        params/<name>[-s<seed>].yaml   each run's resolved params
        runs/<name>[-s<seed>]/         each run folder (checkpoints, metrics.json, predictions.csv, ...)

Run again into the same folder, the ablation reuses the runs that finished and trains the rest. A
run that fails is marked on the page with its error while the others go on; the command then exits
non-zero (StudyError).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cmtlib.experiments.ablation import config_names, paired_differences, run_configurations
from cmtlib.experiments.study import RunOutcome, check, spread, study_folder
from cmtlib.fileio import write_json, write_text
from cmtlib.params import Params, load_params
from cmtlib.report.chain.index import write_reports_index
from cmtlib.report.chain.render import study_page
from cmtlib.report.chain.runner import ReportError
from cmtlib.report.pages.show import caption_html, heading_html, text_html
from cmtlib.report.pages.tables import ci_text, get_path, to_html

COLUMNS = (("sens", "covid.sens_at_spec99"), ("auc", "covid.auc"), ("eer", "covid.eer"), ("lung_dice", "lung.dice"),
           ("disease_dice", "disease.dice"))
# The paper's task numbers (Section V-C) and plain names.
TASKS = {"lung": (1, "lung outline"), "disease": (2, "disease region"), "healthy": (3, "healthy or not"),
         "multilabel": (4, "COVID-19 and other-disease labels")}
NEEDS_TASK = {"lung_dice": "lung", "disease_dice": "disease"}
PAPER = "the paper: 224 px images, 30 epochs, full width, ImageNet start"
STATUS_CLASS = {"ok": "ok", "reused": "ok", "failed": "failed", "lost": "failed"}  # else: skipped (not run, running)


def subset_name(tasks: Iterable[str]) -> tuple[str, str]:
    """(the paper's name of a task subset, its tasks in words): ('Tasks 1, 2 and 4', 'lung outline + ...')."""
    tasks = sorted(set(tasks), key=lambda t: TASKS[t][0])
    numbers = [str(TASKS[t][0]) for t in tasks]
    name = "All 4 tasks" if len(numbers) == 4 else f"Task{'s' if len(numbers) > 1 else ''} " + (
        ", ".join(numbers[:-1]) + " and " + numbers[-1] if len(numbers) > 1 else numbers[0])
    return name, " + ".join(TASKS[t][1] for t in tasks)


def setting_text(params: Params, seeds: Sequence[int] | None = None) -> str:
    """How a configuration was trained, in a few words."""
    data = "synthetic phantoms" if params.data.data_kind == "synthetic" else f"{params.data.data_kind} data"
    seed = f"seeds {', '.join(map(str, seeds))}" if seeds else f"seed {params.train.seed}"
    return (f"{data}, {params.data.image_size} px, {params.train.epochs} epochs, width {params.model.width:g}, "
            f"{'ImageNet' if params.model.encoder_weights == 'imagenet' else 'random'} start, {seed}")


def load_all(paths: Iterable[str | Path], overrides: Iterable[str] | dict = ()) -> list[Params]:
    """Every params file loaded and validated before anything runs (ParamsError names the file)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ReportError("cmt ablation needs at least one params file")
    overrides = overrides if isinstance(overrides, dict) else list(overrides)
    return [load_params(p, overrides) for p in paths]


def summary_row(name: str, source: str, metrics: dict[str, Any] | None, status: str, seconds: float | None,
                params: Params | None = None) -> dict[str, Any]:
    """One configuration's row: its task subset as the paper names it, and each metric as
    'value (95 % CI low to high)' text ('no lung task' where the subset does not train that output)."""
    tasks = list(params.model.tasks) if params is not None else []
    subset, words = subset_name(tasks) if tasks and set(tasks) <= set(TASKS) else ("", "")
    row: dict[str, Any] = {"name": name, "source": source, "status": status, "seconds": seconds, "subset": subset, "tasks": words,
                           "setting": setting_text(params) if params is not None else "", "error": "",
                           "status_class": STATUS_CLASS.get(status, "skipped")}
    for col, key in COLUMNS:
        section, metric = key.split(".")
        block = get_path(metrics, section) or {}
        row[col] = ci_text(block.get(metric), block.get(f"{metric}_ci_low"), block.get(f"{metric}_ci_high"))
        if tasks and col in NEEDS_TASK and NEEDS_TASK[col] not in tasks:
            row[col] = f"no {NEEDS_TASK[col]} task"
        for suffix in ("", "_ci_low", "_ci_high"):
            row[f"{col}_value{suffix}"] = block.get(metric + suffix)
    return row


def config_row(name: str, source: str, params: Params, outcomes: Sequence[RunOutcome], seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """A configuration's row from the outcomes of its runs so far: one run (no seeds) as
    `summary_row`; several seeds as the mean over those that finished, with their spread and range."""
    if not seeds:
        o = outcomes[0] if outcomes else None
        row = summary_row(name, source, o.metrics if o else None, o.status if o else "not run", o.seconds if o else None, params)
        row["error"] = o.error if o else ""
        return row
    done = [o for o in outcomes if o.done]
    bad = [o for o in outcomes if o.status in ("failed", "lost", "skipped", "cancelled")]
    status = (f"{len(bad)} of {len(seeds)} seeds did not finish" if bad else "ok" if len(done) == len(seeds)
              else f"{len(done)} of {len(seeds)} seeds done" if done else "not run")
    spent = [o.seconds for o in outcomes if o.seconds is not None]
    row = summary_row(name, source, None, status, sum(spent) if spent else None, params)
    row["setting"] = setting_text(params, seeds)
    row.update(error="; ".join(f"seed {o.seed}: {o.error.splitlines()[0]}" for o in bad if o.error),
               status_class="failed" if bad else ("ok" if status == "ok" else "skipped"))
    for col, key in COLUMNS:
        section, metric = key.split(".")
        values = spread((get_path(o.metrics, section) or {}).get(metric) for o in done)
        row[col], row[f"{col}_value"], row[f"{col}_spread"] = spread_text(values), values["mean"], values
        if col in NEEDS_TASK and NEEDS_TASK[col] not in params.model.tasks:
            row[col] = f"no {NEEDS_TASK[col]} task"
    return row


def spread_text(s: dict[str, Any]) -> str:
    """'0.950 ± 0.010 over 3 seeds (0.940 to 0.960)': mean ± standard deviation, then the range."""
    if not s["n"]:
        return "not available"
    if s["n"] == 1:
        return f"{s['mean']:.3f} (1 seed)"
    return f"{s['mean']:.3f} ± {s['sd']:.3f} over {s['n']} seeds ({s['min']:.3f} to {s['max']:.3f})"


def common_setting(rows: list[dict[str, Any]]) -> str:
    """The one setting every row was trained at ('' when they differ: each row then shows its own)."""
    settings = {r.get("setting", "") for r in rows}
    return settings.pop() if len(settings) == 1 else ""


def write_summary(out: Path, rows: list[dict[str, Any]], failed: str = "", reports_dir: Path | None = None,
                  runs: Sequence[RunOutcome] = (), explain_html: str = "") -> Path:
    """index.html + summary.json (+ report.json so the list of reports shows the ablation, which is
    rewritten when the ablation folder sits in reports_dir); `runs`: every run's outcome, kept in
    summary.json (status, seconds, worker, error with the end of its traceback)."""
    now = _dt.datetime.now()
    html = study_page("ablation.html.j2", f"{out.name}/index.html", now, name=out.name, rows=rows, failed=failed,
                      setting=common_setting(rows), paper=PAPER, explain_html=explain_html)
    write_json(out / "summary.json", {"rows": rows, "failed": failed, "runs": [
        {k: v for k, v in dataclasses.asdict(o).items() if k not in ("metrics", "analysis")} for o in runs]})
    write_json(out / "report.json", {"name": out.name, "kind": "ablation", "date": now.isoformat(timespec="seconds"),
                                     "status": "failed" if failed else ("ok" if all(r["status_class"] == "ok" for r in rows) else "running")})
    index = write_text(out / "index.html", html)
    if reports_dir is not None and out.parent == reports_dir:
        try:
            write_reports_index(out.parent)
        except OSError as err:
            print(f"cmt ablation: could not update {out.parent / 'index.html'}: {err}", file=sys.stderr)
    return index


def explanations_html(names: Sequence[str], all_params: Sequence[Params], outcomes: Sequence[RunOutcome]) -> str:
    """The --explain section: per configuration its explanation checks (mean over seeds), and each
    configuration minus the classification-only control, paired film by film ('' without analyses)."""
    done = [o for o in outcomes if o.done and o.analysis]
    if not done:
        return ""
    keys = (("reliance_later", "lesion's share of the score, median past day 3"), ("pointing_later", "default map: hottest point inside the lesion"),
            ("ratio_later", "default map: share on the lesion, times an even map's"), ("road_gain", "default map: ROAD gain over random"))
    table = pd.DataFrame([{"configuration": name, **{words: spread_text(spread(o.analysis.get(k) for o in done if o.config == name))
                                                     for k, words in keys}} for name in names])
    html = heading_html("Where each configuration looks", 2) + to_html(table) + caption_html(
        "Phantoms whose lesions are known (docs/explanations.md): how much of the COVID-19 probability the lesion alone carries "
        "(film minus its twin without the lesion), and whether the default heat map (HiResCAM, blocks 3 and 4 fused) points "
        "at the lesion and follows the network. Mean over seeds, as the table above.")
    control = next((n for n, p in zip(names, all_params) if not set(p.model.tasks) & {"lung", "disease"}), None)
    if control is None:
        return html + text_html("No classification-only control among these configurations (params/ablation_control/), so no "
                                "configuration is compared with one.")
    runs = {n: {o.seed: o.run_dir for o in done if o.config == n} for n in names}
    diffs = paired_differences(runs, control)
    diffs["difference (95 % CI)"] = [ci_text(d, lo, hi) for d, lo, hi in zip(diffs["difference"], diffs["ci_low"], diffs["ci_high"])]
    return html + heading_html(f"Each configuration minus the control ({control})", 3) + to_html(
        diffs[["configuration", "measure", "difference (95 % CI)", "films", "seeds"]]) + caption_html(
        "The paper's premise, tested: learning to outline the lungs and the disease makes the classifier look at the right "
        "place. Differences film by film on the same test films and seeds, 95 % intervals from resampling patients; an "
        "interval that excludes 0 is a difference these films can show.")


def run_ablation(paths: Iterable[str | Path], out: str | Path | None = None, overrides: Iterable[str] | dict = (),
                 seeds: Sequence[int] | None = None, scheduler: str | None = None, jobs: int | None = None, explain: bool = False) -> Path:
    """Train and evaluate each params file (x seed) as one task each (cmtlib.experiments.ablation);
    returns the summary page's path.

    All files are validated before any worker starts (an unknown key in the last file stops the
    ablation before the first training). A failed run is marked on the summary with its error while
    the others go on; then StudyError names what did not finish. `scheduler` / `jobs` default to
    the first file's `scheduler` and `report_jobs` (cmtlib.experiments.cluster).
    """
    paths = [Path(p) for p in paths]
    all_params = load_all(paths, overrides)
    names, first = config_names(all_params), all_params[0]
    folder = study_folder(out or Path(first.report.reports_dir) / "ablation")
    print(f"ablation folder: {folder}", flush=True)
    reports_dir = Path(first.report.reports_dir).resolve()
    made: dict[str, list[RunOutcome]] = {}

    def rows() -> list[dict[str, Any]]:
        return [config_row(n, str(src), p, made.get(n, []), seeds) for n, src, p in zip(names, paths, all_params)]

    def tell(outcome: RunOutcome) -> None:
        made.setdefault(outcome.config, []).append(outcome)
        write_summary(folder, rows(), reports_dir=reports_dir)

    write_summary(folder, rows(), reports_dir=reports_dir)
    outcomes = run_configurations(all_params, names, folder, seeds=seeds, on_done=tell,
                                  scheduler=first.experiments.scheduler if scheduler is None else scheduler,
                                  jobs=first.report.report_jobs if jobs is None else jobs, explain=explain)
    bad = [o for o in outcomes if not o.done]
    failed = "; ".join(f"{o.name} {o.status}: {o.error.splitlines()[0] if o.error else ''}" for o in bad)
    page = write_summary(folder, rows(), failed=failed, reports_dir=reports_dir, runs=outcomes,
                         explain_html=explanations_html(names, all_params, outcomes) if explain else "")
    check(outcomes, page)
    return page
