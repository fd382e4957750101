"""`cmt ablation`: train + evaluate once per params file, one at a time, then a summary page.

Only the engine runs per configuration (no notebook chain): papermill kernels would collide when
run in parallel, and the ablation's budget (30 min on 2 cores) leaves no room for eight pages per
configuration. Layout:

    reports/ablation-<date>[-N]/
        index.html      Table V: per task subset (named as the paper does, tasks spelled out) COVID
                        sensitivity at 99 % specificity, AUC, EER, lung and disease Dice, with CIs
        summary.json    the same numbers, machine-readable
        params/<name>.yaml   each configuration's resolved params
        runs/<name>/    each run folder (checkpoints, metrics.json, predictions.csv, ...)
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2

from cmtlib import __version__
from cmtlib.experiments.ablation import run_each, unique_names
from cmtlib.fileio import write_json, write_text
from cmtlib.params import Params, load_params
from cmtlib.report.chain.index import write_reports_index
from cmtlib.report.chain.render import TEMPLATES, check_self_contained, report_css
from cmtlib.report.chain.runner import ReportError, unique_dir
from cmtlib.report.pages.tables import ci_text, get_path

COLUMNS = (("sens", "covid.sens_at_spec99"), ("auc", "covid.auc"), ("eer", "covid.eer"), ("lung_dice", "lung.dice"),
           ("disease_dice", "disease.dice"))
# The paper's task numbers (Section V-C) and plain names.
TASKS = {"lung": (1, "lung outline"), "disease": (2, "disease region"), "healthy": (3, "healthy or not"),
         "multilabel": (4, "COVID-19 and other-disease labels")}
NEEDS_TASK = {"lung_dice": "lung", "disease_dice": "disease"}
PAPER = "the paper: 224 px images, 30 epochs, full width, ImageNet start"


def subset_name(tasks: Iterable[str]) -> tuple[str, str]:
    """(the paper's name of a task subset, its tasks in words): ('Tasks 1, 2 and 4', 'lung outline + ...')."""
    tasks = sorted(set(tasks), key=lambda t: TASKS[t][0])
    numbers = [str(TASKS[t][0]) for t in tasks]
    name = "All 4 tasks" if len(numbers) == 4 else f"Task{'s' if len(numbers) > 1 else ''} " + (
        ", ".join(numbers[:-1]) + " and " + numbers[-1] if len(numbers) > 1 else numbers[0])
    return name, " + ".join(TASKS[t][1] for t in tasks)


def setting_text(params: Params) -> str:
    """How a configuration was trained, in a few words."""
    data = "synthetic phantoms" if params.data.data_kind == "synthetic" else f"{params.data.data_kind} data"
    return (f"{data}, {params.data.image_size} px, {params.train.epochs} epochs, width {params.model.width:g}, "
            f"{'ImageNet' if params.model.encoder_weights == 'imagenet' else 'random'} start, seed {params.train.seed}")


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
                           "setting": setting_text(params) if params is not None else ""}
    for col, key in COLUMNS:
        section, metric = key.split(".")
        block = get_path(metrics, section) or {}
        row[col] = ci_text(block.get(metric), block.get(f"{metric}_ci_low"), block.get(f"{metric}_ci_high"))
        if tasks and col in NEEDS_TASK and NEEDS_TASK[col] not in tasks:
            row[col] = f"no {NEEDS_TASK[col]} task"
        for suffix in ("", "_ci_low", "_ci_high"):
            row[f"{col}_value{suffix}"] = block.get(metric + suffix)
    return row


def common_setting(rows: list[dict[str, Any]]) -> str:
    """The one setting every row was trained at ('' when they differ: each row then shows its own)."""
    settings = {r.get("setting", "") for r in rows}
    return settings.pop() if len(settings) == 1 else ""


def write_summary(out: Path, rows: list[dict[str, Any]], failed: str = "", reports_dir: Path | None = None) -> Path:
    """index.html + summary.json (+ report.json so the list of reports shows the ablation, which is
    rewritten when the ablation folder sits in reports_dir)."""
    now = _dt.datetime.now()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    html = env.get_template("ablation.html.j2").render(
        name=out.name, rows=rows, failed=failed, css=report_css(), version=__version__, now=now.strftime("%Y-%m-%d %H:%M"),
        setting=common_setting(rows), paper=PAPER)
    check_self_contained(html, f"{out.name}/index.html")
    write_json(out / "summary.json", {"rows": rows, "failed": failed})
    write_json(out / "report.json", {"name": out.name, "kind": "ablation", "date": now.isoformat(timespec="seconds"),
                                     "status": "failed" if failed else ("ok" if all(r["status"] == "ok" for r in rows) else "running")})
    index = write_text(out / "index.html", html)
    if reports_dir is not None and out.parent == reports_dir:
        try:
            write_reports_index(out.parent)
        except OSError as err:
            print(f"cmt ablation: could not update {out.parent / 'index.html'}: {err}", file=sys.stderr)
    return index


def run_ablation(paths: Iterable[str | Path], out: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> Path:
    """Train and evaluate each params file in order (cmtlib.experiments.ablation); returns the
    summary page's path.

    All files are validated first (an unknown key in the last file stops the ablation before the
    first training starts). A failed configuration stops the ablation: the summary shows what
    finished and what failed, and the error is raised again (a user error prints in one line, a bug
    keeps its traceback).
    """
    paths = [Path(p) for p in paths]
    all_params = load_all(paths, overrides)
    names = unique_names(all_params)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M")
    folder = unique_dir(Path(out).resolve() if out else (Path(all_params[0].report.reports_dir) / f"ablation-{stamp}").resolve())
    print(f"ablation folder: {folder}", flush=True)

    reports_dir = Path(all_params[0].report.reports_dir).resolve()
    rows = [summary_row(n, str(p), None, "not run", None, q) for n, p, q in zip(names, paths, all_params)]
    write_summary(folder, rows, reports_dir=reports_dir)
    print(f"[1/{len(paths)}] {names[0]} ...", end=" ", flush=True)
    for i, outcome in enumerate(run_each(all_params, names, folder)):
        if outcome.error is not None:
            print(f"failed {outcome.seconds:.0f} s", flush=True)
            rows[i] = summary_row(outcome.name, str(paths[i]), None, "failed", outcome.seconds, outcome.params)
            message = f"{outcome.name} ({paths[i]}) failed: {type(outcome.error).__name__}: {outcome.error}"
            write_summary(folder, rows, failed=message, reports_dir=reports_dir)
            print(f"ablation stopped; summary: {folder / 'index.html'}", file=sys.stderr)
            raise outcome.error
        rows[i] = summary_row(outcome.name, str(paths[i]), outcome.metrics, "ok", outcome.seconds, outcome.params)
        print(f"ok {outcome.seconds:.0f} s; COVID AUC {rows[i]['auc']}", flush=True)
        write_summary(folder, rows, reports_dir=reports_dir)
        if i + 1 < len(paths):
            print(f"[{i + 2}/{len(paths)}] {names[i + 1]} ...", end=" ", flush=True)
    return folder / "index.html"
