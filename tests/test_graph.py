"""The task graph: what waits for what, failures that stay local, and the same outcomes one task after
another here and on a local Dask cluster of two worker processes (a worker that dies loses its task only)."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest

from cmtlib.experiments.cluster import Cluster, Layout, close, open_cluster, start_local
from cmtlib.experiments.graph import Task, check_order, run_graph


def square(x: int) -> int:
    return x * x


def total(inputs: dict) -> int:
    return sum(inputs.values())


def broken(message: str) -> None:
    print("some output before the error")
    raise ValueError(message)


def interval(seconds: float) -> tuple[float, float, int]:
    """When it ran, and in which process."""
    t0 = time.time()
    time.sleep(seconds)
    return t0, time.time(), os.getpid()


def noisy(name: str, seconds: float) -> None:
    """Prints, waits (so that two of these overlap in one worker), prints again, fails."""
    print(f"{name} starts")
    time.sleep(seconds)
    print(f"{name} ends")
    raise RuntimeError(f"{name} failed")


def die() -> None:
    os._exit(3)  # the worker process ends, as one killed for memory would


def graph() -> list[Task]:
    return [Task("a", "a", square, (3,)), Task("b", "b", square, (4,)),
            Task("sum", "sum of a and b", total, needs=("a", "b"), inputs=True),
            Task("bad", "the broken one", broken, ("marker 77",), needs=("a",)),
            Task("after-bad", "waits on the broken one", square, (5,), needs=("bad",)),
            Task("after-sum", "waits on the sum", square, (6,), needs=("sum",))]


def test_one_task_after_another_here():
    lines = []
    outcomes = run_graph(graph(), Cluster(), say=lines.append)
    assert {k: (o.status, o.value) for k, o in outcomes.items()} == {
        "a": ("ok", 9), "b": ("ok", 16), "sum": ("ok", 25), "bad": ("failed", None), "after-bad": ("skipped", None), "after-sum": ("ok", 36)}
    bad = outcomes["bad"]
    assert bad.error == "ValueError: marker 77" and "in broken" in bad.detail and bad.worker == ""
    assert outcomes["after-bad"].error == "not run: the broken one failed (ValueError: marker 77)"
    assert lines[:2] == ["a ...", lines[1]] and lines[1].startswith("a ok ") and lines[1].endswith(" s")
    assert any(ln.startswith("the broken one failed") and ln.endswith(": ValueError: marker 77") for ln in lines)
    assert "waits on the broken one skipped: not run: the broken one failed (ValueError: marker 77)" in lines


def test_the_order_is_checked():
    with pytest.raises(ValueError, match="needs \\['b'\\], not listed before it"):
        check_order([Task("a", "a", square, (1,), needs=("b",)), Task("b", "b", square, (1,))])
    with pytest.raises(ValueError, match="two tasks have the key 'a'"):
        check_order([Task("a", "a", square, (1,)), Task("a", "a", square, (1,))])


def test_a_local_cluster_gives_the_same_outcomes_runs_side_by_side_and_loses_only_a_dead_workers_task():
    lines = []
    with open_cluster(jobs=2, threads=1, say=lines.append) as cluster:
        assert cluster.layout.workers == 2 and not cluster.synchronous
        workers = set(cluster.client.scheduler_info()["workers"])
        outcomes = run_graph(graph() + [Task("slow1", "slow 1", interval, (2.0,)), Task("slow2", "slow 2", interval, (2.0,))],
                             cluster, say=lines.append)
        # A task that kills its worker (twice: it is tried once more elsewhere) costs only itself and what waits on it.
        dead = run_graph([Task("dies", "kills its worker", die), Task("after-dies", "waits on the dead one", square, (7,), needs=("dies",)),
                          Task("fine", "another", interval, (0.5,))], cluster, say=lines.append)
    here = run_graph(graph(), Cluster(), say=lambda line: None)
    assert {k: (o.status, o.value, o.error) for k, o in here.items()} == {k: (outcomes[k].status, outcomes[k].value, outcomes[k].error) for k in here}
    assert lines[0] == "running on a local Dask cluster, 2 worker process(es) x 1 thread(s)"
    assert {outcomes[k].worker for k in ("a", "b", "sum")} <= workers
    (s1, e1, p1), (s2, e2, p2) = outcomes["slow1"].value, outcomes["slow2"].value
    assert p1 != p2 and s1 < e2 and s2 < e1  # two worker processes, at the same time
    assert any(ln.startswith("slow 1 ... (on worker ") for ln in lines)
    if importlib.util.find_spec("bokeh") is None:  # no dashboard: nothing said about it
        assert not any("dashboard" in ln.lower() for ln in lines)
    assert dead["dies"].status == "lost" and "its worker died while running it (2 attempts" in dead["dies"].error
    assert dead["after-dies"].status == "skipped" and dead["fine"].status == "ok"


def test_a_page_beside_a_run_in_one_worker_keeps_its_own_output():
    """One worker: a compute task and a light one (a report page) run side by side in its two threads,
    and each failure's detail holds that task's own output only."""
    cluster = start_local(Layout(1, 1))
    try:
        out = run_graph([Task("run", "the run", noisy, ("RUN", 1.5)), Task("page", "a page", noisy, ("PAGE", 1.5), light=True)],
                        cluster, say=lambda line: None)
    finally:
        close(cluster)
    run, page = out["run"], out["page"]
    assert run.worker == page.worker and run.error == "RuntimeError: RUN failed" and page.error == "RuntimeError: PAGE failed"
    assert "RUN starts" in run.detail and "RUN ends" in run.detail and "PAGE" not in run.detail
    assert "PAGE starts" in page.detail and "PAGE ends" in page.detail and "RUN" not in page.detail
