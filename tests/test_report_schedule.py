"""Pages several at a time: declared order is kept, a failure stops new pages, jobs=1 is sequential."""

import json
import threading
import time
from pathlib import Path

from cmtlib.report.chain.schedule import Gate, declared_after, run_pages


def _nb(folder: Path, stem: str, after=()) -> Path:
    path = folder / f"{stem}.ipynb"
    meta = {"cmtlib": {"after": list(after)}} if after else {}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_a_page_that_reads_another_waits_for_it_and_two_run_at_once(tmp_path):
    nbs = [_nb(tmp_path, "01_a"), _nb(tmp_path, "02_slow"), _nb(tmp_path, "03_after", after=["02_slow"]), _nb(tmp_path, "04_b")]
    events, lock, active, most = [], threading.Lock(), [0], [0]

    def one(nb):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            events.append(("start", nb.stem))
        time.sleep(0.3 if nb.stem == "02_slow" else 0.05)
        with lock:
            active[0] -= 1
            events.append(("end", nb.stem))
        return None

    assert run_pages(nbs, one, jobs=2) is None
    assert events.index(("end", "02_slow")) < events.index(("start", "03_after"))
    assert most[0] == 2 and {s for _, s in events} == {"01_a", "02_slow", "03_after", "04_b"}
    assert declared_after(nbs[2]) == {"02_slow"} and declared_after(nbs[0]) == set()


def test_one_job_runs_in_order_and_the_first_failure_stops_the_rest(tmp_path):
    nbs = [_nb(tmp_path, s) for s in ("01_a", "02_bad", "03_c")]
    ran = []

    def one(nb):
        ran.append(nb.stem)
        return "boom" if nb.stem == "02_bad" else None

    assert run_pages(nbs, one, jobs=1) == "boom"
    assert ran == ["01_a", "02_bad"]


def test_waiting_on_a_page_outside_the_chain_does_not_block(tmp_path):
    nbs = [_nb(tmp_path, "08_audit", after=["07_cam"])]
    assert run_pages(nbs, lambda nb: None, jobs=2) is None


def test_pages_start_as_the_experiments_make_what_they_read(tmp_path):
    nbs = [_nb(tmp_path, s) for s in ("01_data", "02_run", "03_cmp", "04_undeclared")]
    gate = Gate({"01_data": frozenset({"data"}), "02_run": frozenset({"run"}), "03_cmp": frozenset({"run", "classifier"}), "04_undeclared": None})
    made, started = [], []

    def experiments():
        for needs in ({"data"}, {"run"}, {"classifier"}):
            time.sleep(0.3)
            made.append(needs)
            gate.add(frozenset(needs))
        time.sleep(0.3)
        gate.finish()

    def one(nb):
        started.append((nb.stem, [set(m) for m in made]))
        return None

    thread = threading.Thread(target=experiments)
    thread.start()
    assert run_pages(nbs, one, jobs=2, gate=gate) is None
    thread.join()
    when = dict(started)
    assert when["01_data"] == [{"data"}]  # started before the run was made
    assert when["02_run"] == [{"data"}, {"run"}]
    assert when["03_cmp"] == [{"data"}, {"run"}, {"classifier"}]
    assert gate.finished and len(when["04_undeclared"]) == 3  # a page declaring nothing waits for the whole step


def test_a_failed_experiments_step_starts_no_page_waiting_on_it(tmp_path):
    nbs = [_nb(tmp_path, s) for s in ("01_data", "02_run")]
    gate = Gate({"01_data": frozenset({"data"}), "02_run": frozenset({"run"})})
    gate.add(frozenset({"data"}))
    ran = []

    def one(nb):
        ran.append(nb.stem)
        gate.finish("the run failed")  # while the data page runs
        return None

    assert run_pages(nbs, one, jobs=2, gate=gate) == "the run failed"
    assert ran == ["01_data"]


def test_a_page_another_waits_on_starts_first_when_several_are_ready(tmp_path):
    nbs = [_nb(tmp_path, "02_a"), _nb(tmp_path, "03_b"), _nb(tmp_path, "07_cam"), _nb(tmp_path, "08_audit", after=["07_cam"])]
    started = []

    def one(nb):
        started.append(nb.stem)
        time.sleep(0.05)
        return None

    assert run_pages(nbs, one, jobs=2) is None
    assert started[0] == "07_cam" and started.index("08_audit") > started.index("07_cam")
    assert run_pages(nbs, lambda nb: started.append(nb.stem), jobs=1) is None
    assert started[-4:] == ["02_a", "03_b", "07_cam", "08_audit"]  # one job: the declared order
