"""The study API (cmtlib.experiments.study): configurations x seeds as one task each, reuse of finished
runs, analyses as tasks of their own, failures that stay local, and the same numbers one run after
another here and on a local cluster of two workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmtlib.errors import ConfigError
from cmtlib.experiments import study
from cmtlib.params import load_params
from cmtlib.run import RunMismatchError

REPO = Path(__file__).resolve().parents[1]
TINY = {"synth_n": 120, "synth_size": 32, "image_size": 32, "threads": 1, "eval_batch_size": 32}


def tiny(**extra):
    return load_params(REPO / "params" / "smoke.yaml", {**TINY, **extra})


def fake_finished(params, auc: float) -> None:
    """A finished, evaluated run folder made with `params` (what a study reuses)."""
    from cmtlib.run import Run, RunInfo

    run = Run(params.train.run_dir)
    run.path.mkdir(parents=True)
    run.dump_config(params)
    run.write_info(RunInfo(status="finished"))
    run.write(metrics={"covid": {"auc": auc}})


def auc_of_seed(params):  # in place of training: a run folder, and a result that names the run
    Path(params.train.run_dir).mkdir(parents=True)
    return {"covid": {"auc": 0.5 + params.train.seed / 10}, "name": Path(params.train.run_dir).name}


def count_files(run_dir: Path) -> dict:
    return {"files": len(list(Path(run_dir).iterdir()))}


def not_a_dict(run_dir: Path) -> list:
    return [1]


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(study, "train_run", auc_of_seed)
    monkeypatch.setattr(study, "prepare_data", lambda params: None)


def test_runs_are_named_per_seed_reused_when_finished_and_analysed(tmp_path, stand_in):
    a, b = tiny(), tiny(tasks=["lung", "multilabel"])
    fake_finished(study.plan_study([("a", a)], tmp_path, seeds=[1])[0].params, auc=0.99)  # a-s1 made before
    told = []
    outcomes = study.run_study([("a", a), ("b", b)], tmp_path, seeds=[0, 1], analysis=count_files, jobs=1, on_done=told.append)
    assert [(o.name, o.config, o.seed, o.status) for o in outcomes] == [
        ("a-s0", "a", 0, "ok"), ("a-s1", "a", 1, "reused"), ("b-s0", "b", 0, "ok"), ("b-s1", "b", 1, "ok")]
    assert [o.metrics["covid"]["auc"] for o in outcomes] == [0.5, 0.99, 0.5, 0.6]  # the reused run's own result
    assert outcomes[2].metrics["name"] == "b-s0" and outcomes[2].run_dir == str(tmp_path / "runs" / "b-s0")
    assert outcomes[1].seconds is None and outcomes[0].seconds is not None and outcomes[0].worker == ""
    assert outcomes[1].analysis == {"files": 3}  # the reused run is analysed too
    assert sorted(o.name for o in told) == ["a-s0", "a-s1", "b-s0", "b-s1"]
    assert load_params(tmp_path / "params" / "b-s1.yaml").train.seed == 1  # each run's resolved params
    study.check(outcomes)  # all done: no error


def test_without_seeds_each_configuration_is_one_run_at_its_own_seed(tmp_path, stand_in):
    outcomes = study.run_study([("x", tiny(seed=3))], tmp_path, jobs=1)
    assert [(o.name, o.seed, o.status) for o in outcomes] == [("x", 3, "ok")] and (tmp_path / "params" / "x.yaml").is_file()
    assert study.unique_names(["x", "y", "x", "x"]) == ["x", "y", "x-2", "x-3"]
    with pytest.raises(ConfigError, match="distinct names"):
        study.run_study([("x", tiny()), ("x", tiny())], tmp_path, jobs=1)


def test_a_folder_made_with_other_parameters_stops_the_study_before_anything_starts(tmp_path, stand_in, monkeypatch):
    fake_finished(study.plan_study([("a", tiny(epochs=2))], tmp_path)[0].params, auc=0.9)
    monkeypatch.setattr(study, "open_cluster", lambda *a, **k: pytest.fail("no cluster may start"))
    with pytest.raises(RunMismatchError, match=r"1 run folder\(s\) of .* hold runs made with other parameters.*epochs: run has 2, params say 1"):
        study.run_study([("a", tiny())], tmp_path)


def test_a_failed_run_is_reported_its_analysis_skipped_and_the_others_go_on(tmp_path, monkeypatch):
    def train_run(params):
        if params.train.seed == 1:
            raise RuntimeError("diverged on purpose")
        Path(params.train.run_dir).mkdir(parents=True)
        return {"covid": {"auc": 0.7}}

    monkeypatch.setattr(study, "train_run", train_run)
    monkeypatch.setattr(study, "prepare_data", lambda params: None)
    outcomes = study.run_study([("a", tiny())], tmp_path, seeds=[0, 1, 2], analysis=count_files, jobs=1)
    assert [o.status for o in outcomes] == ["ok", "failed", "ok"]
    assert outcomes[1].error == "RuntimeError: diverged on purpose" and outcomes[1].analysis is None
    with pytest.raises(study.StudyError, match=r"1 of 3 run\(s\) did not finish: a-s1 \(failed: RuntimeError: diverged on purpose\); summary: S"):
        study.check(outcomes, "S")
    bad = study.run_study([("b", tiny())], tmp_path, analysis=not_a_dict, jobs=1)[0]
    assert bad.status == "failed" and bad.error == "analysis: TypeError: a study's analysis must return a dict, got list"


def test_spread_over_seeds():
    s = study.spread([0.9, 0.92, None, float("nan"), 0.94])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.92) and s["sd"] == pytest.approx(0.02) and (s["min"], s["max"]) == (0.9, 0.94)
    assert study.spread([]) == {"n": 0, "mean": None, "sd": None, "min": None, "max": None}


def test_the_same_numbers_one_run_after_another_and_on_two_workers(tmp_path, monkeypatch):
    """Two tiny real runs trained and evaluated here (jobs 1), then on a local cluster of two worker
    processes: every metrics.json the same (CPU runs repeat exactly at the same threads per run)."""
    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))
    configs = [("all", tiny()), ("lung", tiny(tasks=["lung", "multilabel"]))]
    here = study.run_study(configs, tmp_path / "here", seeds=[0], jobs=1)
    lines = []
    there = study.run_study(configs, tmp_path / "there", seeds=[0], jobs=2, say=lines.append)
    assert [o.status for o in here + there] == ["ok"] * 4
    assert lines[0] == "running on a local Dask cluster, 2 worker process(es) x 1 thread(s)"
    assert all(o.worker.startswith("tcp://127.0.0.1:") for o in there)
    for a, b in zip(here, there):
        ma, mb = (json.loads((Path(o.run_dir) / "metrics.json").read_text()) for o in (a, b))
        ma.pop("evaluation"), mb.pop("evaluation")  # where it was written
        assert ma == mb and ma["covid"]["auc"] == a.metrics["covid"]["auc"]
    again = study.run_study(configs, tmp_path / "there", seeds=[0], jobs=2, say=lines.append)
    assert [o.status for o in again] == ["reused", "reused"] and lines[-1].startswith("reusing 2 finished run(s)")
