"""Pages several at a time: declared order is kept, a failure stops new pages, jobs=1 is sequential."""

import json
import threading
import time
from pathlib import Path

from cmtlib.report.chain.schedule import declared_after, run_pages


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
