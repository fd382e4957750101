"""The report's pages as graph tasks: each waits for what its notebook declares it reads (cmtlib.needs)
and for the pages it declares it runs after (cmtlib.after); a page declaring nothing waits for all."""

import json
from pathlib import Path

import pytest

from cmtlib.errors import ConfigError
from cmtlib.experiments.cluster import Cluster
from cmtlib.experiments.graph import Task, run_graph
from cmtlib.report.chain.schedule import declared_after, page_tasks


def _nb(folder: Path, stem: str, needs=None, after=()) -> Path:
    path = folder / f"{stem}.ipynb"
    meta = {"cmtlib": {k: v for k, v in (("needs", needs), ("after", list(after))) if v}}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    return path


MAKES = {"data": ("data",), "run": ("run",), "classifier": ("deep:resnet18-seed0", "deep:vgg19-seed0"), "comparison": ("comparison",)}
EXPERIMENTS = ["data", "run", "deep:resnet18-seed0", "deep:vgg19-seed0", "comparison"]


def test_a_page_waits_for_the_tasks_making_its_needs_and_the_pages_it_reads(tmp_path):
    nbs = [_nb(tmp_path, "01_data", ["data"]), _nb(tmp_path, "07_cam", ["run", "classifier"]),
           _nb(tmp_path, "08_audit", ["run"], after=["07_cam"]), _nb(tmp_path, "09_cmp", ["run", "comparison"]), _nb(tmp_path, "10_none")]
    tasks = {t.key: t for t in page_tasks(nbs, MAKES, EXPERIMENTS, print, lambda nb: (nb.stem,))}
    assert tasks["page:01_data"].needs == ("data",) and tasks["page:01_data"].label == "[1/5] 01_data"
    assert tasks["page:07_cam"].needs == ("deep:resnet18-seed0", "deep:vgg19-seed0", "run")
    assert tasks["page:08_audit"].needs == ("run", "page:07_cam")
    assert tasks["page:09_cmp"].needs == ("comparison", "run")
    assert tasks["page:10_none"].needs == tuple(EXPERIMENTS)  # declares nothing: waits for every experiments task
    assert tasks["page:01_data"].priority > tasks["page:10_none"].priority  # earlier pages first among ready ones
    assert tasks["page:07_cam"].args == ("07_cam",)
    assert declared_after(nbs[2]) == {"07_cam"} and declared_after(nbs[0]) == set()


def test_a_page_listed_before_one_it_reads_is_moved_after_it(tmp_path):
    nbs = [_nb(tmp_path, "02_reads_five", ["run"], after=["05_five"]), _nb(tmp_path, "05_five", ["run"]),
           _nb(tmp_path, "06_outside", ["run"], after=["99_not_in_this_chain"])]
    tasks = page_tasks(nbs, MAKES, EXPERIMENTS, print, lambda nb: ())
    assert [t.key for t in tasks] == ["page:05_five", "page:02_reads_five", "page:06_outside"]
    assert tasks[2].needs == ("run",)  # waiting on a page outside the chain does not block
    circle = [_nb(tmp_path, "a1", ["run"], after=["a2"]), _nb(tmp_path, "a2", ["run"], after=["a1"])]
    with pytest.raises(ConfigError, match="in a circle.*a1, a2"):
        page_tasks(circle, MAKES, EXPERIMENTS, print, lambda nb: ())


def record(log: list, name: str) -> str:
    log.append(name)
    return name


def fail(name: str) -> None:
    raise RuntimeError(f"{name} broke")


def test_pages_after_a_failed_task_do_not_run_and_the_others_do(tmp_path):
    """One at a time here (no cluster): the order given, a failure skips only what waits on it."""
    log, lines = [], []
    nbs = [_nb(tmp_path, "01_data", ["data"]), _nb(tmp_path, "02_run", ["run"]), _nb(tmp_path, "07_cam", ["run", "classifier"]),
           _nb(tmp_path, "08_audit", ["run"], after=["07_cam"])]
    experiments = [Task("data", "data", record, (log, "data")), Task("run", "run", record, (log, "run"), needs=("data",)),
                   Task("deep:resnet18-seed0", "resnet18", fail, ("resnet18",), needs=("data",)),
                   Task("deep:vgg19-seed0", "vgg19", record, (log, "vgg19"), needs=("data",)),
                   Task("comparison", "comparison", record, (log, "comparison"), needs=("run", "deep:resnet18-seed0", "deep:vgg19-seed0"))]
    pages = page_tasks(nbs, MAKES, [t.key for t in experiments], record, lambda nb: (log, nb.stem))
    outcomes = run_graph(experiments + pages, Cluster(), say=lines.append)
    assert log == ["data", "run", "vgg19", "01_data", "02_run"]
    status = {k: o.status for k, o in outcomes.items()}
    assert status["deep:resnet18-seed0"] == "failed" and outcomes["deep:resnet18-seed0"].error == "RuntimeError: resnet18 broke"
    assert status["comparison"] == status["page:07_cam"] == status["page:08_audit"] == "skipped"
    assert outcomes["page:07_cam"].error.startswith("not run: resnet18 failed (RuntimeError: resnet18 broke)")
    assert "[1/4] 01_data ..." in lines and any(ln.startswith("resnet18 failed") and "resnet18 broke" in ln for ln in lines)
