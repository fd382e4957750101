"""What the report's pages declare they read, and the experiments tasks of the report's graph that make it."""

import json
from pathlib import Path

import pytest

from cmtlib.errors import ConfigError
from cmtlib.experiments import plan
from cmtlib.params import load_params

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
    assert declared["07_cam"] == {"run", "classifier", "explanations"}  # the baselines' Grad-CAMs, nothing else of the comparison
    assert declared["09_baselines"] >= {"cmtnet", "classifier", "segmentation", "embedding", "comparison"}


def test_needs_are_the_union_and_undeclared_pages_need_nothing(tmp_path):
    a, b, c = _nb(tmp_path / "a.ipynb", ["data"]), _nb(tmp_path / "b.ipynb", ["run", "classifier"]), _nb(tmp_path / "c.ipynb")
    assert plan.needs([a, b, c]) == {"data", "run", "classifier"}
    assert plan.needs([c]) == frozenset()


def test_an_unknown_need_names_the_notebook_and_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"x.ipynb declares needs \['gpu'\].*known: .*classifier"):
        plan.declared_needs(_nb(tmp_path / "x.ipynb", ["run", "gpu"]))


def test_tasks_are_made_only_for_what_is_declared(tmp_path):
    params = load_params(REPO / "params" / "default.yaml")
    assert plan.experiment_tasks(params, tmp_path / "run", tmp_path, [_nb(tmp_path / "c.ipynb")]) == ([], {})
    tasks, makes = plan.experiment_tasks(params, tmp_path / "run", tmp_path, [_nb(tmp_path / "a.ipynb", ["data"])])
    assert [t.key for t in tasks] == ["data"] and makes == {"data": ("data",)}
    tasks, makes = plan.experiment_tasks(params, tmp_path / "run", tmp_path, [_nb(tmp_path / "b.ipynb", ["run", "external"])])
    assert [t.key for t in tasks] == ["data", "run", "external"] and makes["external"] == ("external",)  # the held-out third site
    plain = load_params(REPO / "params" / "default.yaml", {"holdout": []})
    tasks, makes = plan.experiment_tasks(plain, tmp_path / "run", tmp_path, [_nb(tmp_path / "b.ipynb", ["run", "external"])])
    assert [t.key for t in tasks] == ["data", "run"] and makes["external"] == ("run",)  # no external set: the run is enough
    tasks, makes = plan.experiment_tasks(params, tmp_path / "run", tmp_path, [_nb(tmp_path / "e.ipynb", ["explanations"])])
    assert [t.key for t in tasks] == ["data", "run", "explanations"] and tasks[-1].needs == ("run",)  # beside the baselines, not after them


def test_the_comparison_is_one_task_per_deep_run_after_its_data(tmp_path):
    """The default report's comparison: every baseline at 64 px (their own data task), CMTNet at that
    setting, the embedding classifiers after the run, then the record after all of them."""
    params = load_params(REPO / "params" / "default.yaml")
    tasks, makes = plan.experiment_tasks(params, tmp_path / "run", tmp_path, NOTEBOOKS)
    by_key = {t.key: t for t in tasks}
    deep = [k for k in by_key if k.startswith("deep:")]
    assert deep == ["deep:cmtnet-seed0"] + [f"deep:{b}-seed0" for b in params.experiments.report_baselines]
    assert by_key["data"].args[0].data.image_size == 88 and by_key["data:1"].args[0].data.image_size == 64
    assert all(by_key[k].needs == ("data:1",) for k in deep) and by_key["data:1"].needs == ("data",)
    assert makes["classifier"] == ("deep:densenet121-seed0", "deep:mobilenet_v2-seed0", "deep:resnet18-seed0", "deep:vgg19-seed0")
    assert makes["segmentation"] == ("deep:unet-seed0", "deep:segnet_lung-seed0", "deep:segnet_disease-seed0", "deep:maskrcnn-seed0")
    assert by_key["embedding"].needs == ("run",) and makes["embedding"] == ("embedding",)
    assert set(by_key["comparison"].needs) == {"run", "embedding", *deep} and by_key["comparison"].inputs
    assert by_key["run"].priority > by_key["deep:resnet18-seed0"].priority > by_key["deep:unet-seed0"].priority
    assert by_key["deep:maskrcnn-seed0"].label == "experiments: Mask R-CNN (ResNet18-FPN), seed 0"
    keys = [t.key for t in tasks]
    assert all(keys.index(n) < keys.index(t.key) for t in tasks for n in t.needs)  # the graph's order


def test_the_record_passes_on_the_time_each_deep_run_took(tmp_path, monkeypatch):
    from cmtlib.experiments.comparison import Entry

    seen = {}
    monkeypatch.setattr(plan, "ensure_comparison", lambda p, r, d, roles, seconds: seen.update(roles=roles, seconds=seconds))
    made = Entry("resnet18", "ResNet18 + FC", "classifier", tmp_path, 0, "64 px", "random", seconds=12.5)
    found = Entry("vgg19", "VGG19 + FC", "classifier", tmp_path, 0, "64 px", "random", seconds=None)
    plan.record_comparison(None, "run", "report", ("classifier",), inputs={"run": None, "a": made, "b": found, "embedding": None})
    assert seen == {"roles": ("classifier",), "seconds": {("resnet18", 0): 12.5}}
