"""What the report's pages declare they read, and what the experiments step makes for them."""

import json
from pathlib import Path

import pytest

from cmtlib.errors import ConfigError
from cmtlib.experiments import plan

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _nb(path: Path, needs=None) -> Path:
    meta = {"kernelspec": {"name": "python3"}}
    if needs is not None:
        meta["cmtlib"] = {"needs": needs}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_every_page_declares_what_it_reads():
    declared = {nb.stem: plan.declared_needs(nb) for nb in NOTEBOOKS}
    assert declared["01_data"] == {"data"}
    assert all("run" in declared[n] for n in declared if n != "01_data")
    assert declared["07_cam"] == {"run", "classifier"}  # the baselines' Grad-CAMs, nothing else of the comparison
    assert declared["09_baselines"] >= {"cmtnet", "classifier", "segmentation", "embedding"}


def test_needs_are_the_union_and_undeclared_pages_need_nothing(tmp_path):
    a, b, c = _nb(tmp_path / "a.ipynb", ["data"]), _nb(tmp_path / "b.ipynb", ["run", "classifier"]), _nb(tmp_path / "c.ipynb")
    assert plan.needs([a, b, c]) == {"data", "run", "classifier"}
    assert plan.needs([c]) == frozenset()


def test_an_unknown_need_names_the_notebook_and_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"x.ipynb declares needs \['gpu'\].*known: .*classifier"):
        plan.declared_needs(_nb(tmp_path / "x.ipynb", ["run", "gpu"]))


def test_prepare_makes_only_what_is_declared(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(plan, "ensure_data", lambda p: calls.append("data"))
    monkeypatch.setattr(plan, "ensure_run", lambda p, r, quiet: calls.append("run"))
    monkeypatch.setattr(plan, "ensure_comparison", lambda p, r, d, roles, progress, seconds: calls.append(("comparison", roles)))
    assert plan.prepare(None, tmp_path / "run", tmp_path, [_nb(tmp_path / "c.ipynb")]) == {}
    assert calls == []
    steps = plan.prepare(None, tmp_path / "run", tmp_path, [_nb(tmp_path / "a.ipynb", ["data"]), _nb(tmp_path / "b.ipynb", ["run", "classifier"])],
                         made=lambda needs: calls.append(("made", set(needs))))
    # Each step's needs are announced as soon as it is done, so pages reading only those can start.
    assert calls == ["data", ("made", {"data"}), "run", ("made", {"run"}), ("made", {"external"}),
                     ("comparison", ("classifier",)), ("made", {"classifier"})]
    assert set(steps) == {"data", "run", "comparison"}


def test_a_second_process_that_dies_without_a_result_is_an_error_not_a_hang():
    import queue as queue_module
    import threading

    from cmtlib.errors import CmtError

    class Dead:  # a second process killed before it could answer
        exitcode = -15

        def is_alive(self):
            return False

    class Queue(queue_module.Queue):
        def empty(self):
            return self.qsize() == 0

    told = []
    beside = plan._Beside(None, "", ("classifier",), told.append)
    beside._process, beside._queue = Dead(), Queue()
    beside._queue.put(("made", ("classifier",)))
    listener = threading.Thread(target=beside._listen)
    listener.start()
    listener.join(timeout=10)
    assert told == [frozenset({"classifier"})]  # what it made before dying is still told
    with pytest.raises(CmtError, match=r"ended without a result \(exit code -15\)"):
        beside.result()
