"""The report chain on tiny stand-in notebooks (the real notebooks' heavy work is not needed to
test the machinery): injection, order, HTML, failure handling, refusals, no overwriting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from cmtlib.params import ParamsError
from cmtlib.report.chain.render import external_refs
from cmtlib.report.chain.runner import ReportError, find_notebooks, plain_error, run_report, unique_dir

REPO = Path(__file__).resolve().parents[1]
PARAMS_CELL = 'params_file = "p.yaml"  # params\nrun_dir = "run"  # run folder\nreport_dir = "out"  # report folder'


def make_notebook(path: Path, *code: str, title: str = "Stand-in", description: str = "A stand-in page.", params: str = PARAMS_CELL) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {title}\n\n{description}"))
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in code]
    nbformat.write(nb, path)
    return path


# Appends "<name>|params_file|run_dir|report_dir" to <report_dir>/order.txt: proves order and injection.
def record(name: str) -> str:
    return (f"import pathlib\nwith open(pathlib.Path(report_dir) / 'order.txt', 'a') as f:\n"
            f"    f.write('{name}|' + params_file + '|' + run_dir + '|' + report_dir + '\\n')")


def write_params(path: Path, reports: Path, **extra) -> Path:
    lines = [f"reports_dir: {reports}"] + [f"{k}: {v}" for k, v in extra.items()]  # run name: the file's stem
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def setup(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    reports = tmp_path / "reports"
    # One page at a time: these tests check order and the stop after a failure (test_report_schedule
    # covers pages running side by side).
    return nbs, reports, write_params(tmp_path / "standin.yaml", reports, report_jobs=1)


def test_chain_injects_parameters_runs_in_order_and_renders(setup, capsys):
    nbs, reports, params = setup
    make_notebook(nbs / "02_second.ipynb", record("02"), title="Second", description="The second page, in plain words.")
    make_notebook(nbs / "01_first.ipynb", record("01"),
                  "from cmtlib import plotting\nfrom cmtlib.report.pages import show as page\nimport pandas as pd\nSECRET_CODE_MARKER = 1\n"
                  "fig, axes = plotting.new_figure()\naxes[0, 0].plot([0, 1], [1, 0])\n"
                  "page.figure(fig, 'A falling line.')\npage.table(pd.DataFrame({'image_id': ['a'], 'n': [3]}), 'A table.')\n"
                  "pd.DataFrame({'x': [1, 2]})",
                  title="First", description="The first page.")
    make_notebook(nbs / "03_todo.ipynb", record("03"), "from cmtlib.report.pages import show as page\npage.not_implemented('the todo page')")
    (nbs / "notes.ipynb").write_text("not numbered, not run")

    index = run_report(params, notebooks_dir=nbs)
    report = reports / "standin"
    assert index == report / "index.html"

    lines = (report / "order.txt").read_text().splitlines()
    assert [ln.split("|")[0] for ln in lines] == ["01", "02", "03"]
    for ln in lines:
        _, params_file, run_dir, report_dir = ln.split("|")
        assert (params_file, run_dir, report_dir) == (str(report / "params.yaml"), str(report / "run"), str(report))

    # The report's params.yaml is the resolved params: the run inside the report, the name kept.
    from cmtlib.params import load_params

    resolved = load_params(report / "params.yaml")
    assert resolved.train.run_dir == str(report / "run") and resolved.run_name == "standin"

    for name in ("01_first", "02_second"):
        assert (report / "notebooks" / f"{name}.ipynb").is_file()
        html = (report / f"{name}.html").read_text()
        assert external_refs(html) == [] and "<script" not in html.lower()
        assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", html)
        assert "In [" not in html and "Out[" not in html
        assert "Research use only" in html
    page = (report / "01_first.html").read_text()
    assert "SECRET_CODE_MARKER" not in page and "import pandas" not in page  # code inputs hidden
    imgs = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "A falling line." in page and "A table." in page

    timings = json.loads((report / "timings.json").read_text())
    assert list(timings["notebooks"]) == ["01_first", "02_second", "03_todo"]
    assert [t["status"] for t in timings["notebooks"].values()] == ["ok", "ok", "placeholder"]
    assert all(t["execute_s"] > 0 and t["render_s"] >= 0 for t in timings["notebooks"].values())

    index_html = index.read_text()
    assert 'href="01_first.html"' in index_html and 'href="02_second.html"' in index_html
    assert "The second page, in plain words." in index_html and "Research use only" in index_html
    assert "not implemented yet" in index_html
    assert external_refs(index_html) == []
    assert 'href="standin/index.html"' in (reports / "index.html").read_text()

    out = capsys.readouterr().out
    assert re.search(r"\[1/3\] 01_first \.\.\.\n", out) and re.search(r"\[1/3\] 01_first ok \d+\.\d s", out)
    assert re.search(r"\[3/3\] 03_todo placeholder \d+\.\d s", out)


def test_a_failing_notebook_is_reported_and_the_others_still_run(setup):
    nbs, reports, params = setup
    make_notebook(nbs / "01_ok.ipynb", record("01"))
    make_notebook(nbs / "02_bad.ipynb", "from cmtlib.report.pages import show as page\npage.heading('Before the error')",
                  "raise ValueError('boom: marker 4711')")
    make_notebook(nbs / "03_after.ipynb", record("03"))
    reader = nbformat.read(make_notebook(nbs / "04_reads_bad.ipynb", record("04")), as_version=4)
    reader.metadata["cmtlib"] = {"after": ["02_bad"]}  # reads a side file of the failed page: it must not run
    nbformat.write(reader, nbs / "04_reads_bad.ipynb")

    with pytest.raises(ReportError, match=r"02_bad.*boom: marker 4711"):
        run_report(params, notebooks_dir=nbs)
    report = reports / "standin"
    assert [ln.split("|")[0] for ln in (report / "order.txt").read_text().splitlines()] == ["01", "03"]

    record_json = json.loads((report / "report.json").read_text())
    assert record_json["status"] == "failed" and record_json["failed"] == "02_bad"
    assert [n["status"] for n in record_json["notebooks"]] == ["ok", "failed", "ok", "not run"]
    assert "02_bad" in record_json["notebooks"][3]["error"]
    index = (report / "index.html").read_text()
    assert "02_bad" in index and "boom: marker 4711" in index and 'href="02_bad.html"' in index
    partial = (report / "02_bad.html").read_text()
    assert "Before the error" in partial and "boom: marker 4711" in partial and "incomplete" in partial
    assert json.loads((report / "timings.json").read_text())["notebooks"]["04_reads_bad"]["status"] == "not run"


def wait_then_fail(report_dir: str) -> None:
    """A stand-in run task: waits until the data page has written its line, then fails as a user
    error would (a module-level function, so that the cluster's workers can unpickle it)."""
    from cmtlib.errors import ConfigError

    deadline = time.monotonic() + 60
    while not (Path(report_dir) / "order.txt").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)  # the data page runs meanwhile, on the other worker
    raise ConfigError("no films left after the holdout: marker 5150")


def test_pages_overlap_the_experiments_and_wait_for_what_failed(tmp_path, monkeypatch):
    """A local cluster: the data page runs while the run is being made; the run's user error fails the
    report, and the page waiting for the run never starts."""
    from cmtlib.experiments.graph import Task
    from cmtlib.report.chain import runner

    nbs, reports = tmp_path / "nbs", tmp_path / "reports"
    nbs.mkdir()
    for stem, needs in (("01_data", ["data"]), ("02_run", ["run"])):
        nb = nbformat.read(make_notebook(nbs / f"{stem}.ipynb", record(stem[:2])), as_version=4)
        nb.metadata["cmtlib"] = {"needs": needs}
        nbformat.write(nb, nbs / f"{stem}.ipynb")

    def experiment_tasks(params, run_dir, report_dir, notebooks):
        return ([Task("data", "experiments: data", time.sleep, (0,)),
                 Task("run", "experiments: the run", wait_then_fail, (str(report_dir),), needs=("data",))],
                {"data": ("data",), "run": ("run",)})

    monkeypatch.setattr(runner, "experiment_tasks", experiment_tasks)
    params = write_params(tmp_path / "standin.yaml", reports, report_jobs=2)
    with pytest.raises(ReportError, match="experiments step failed: ConfigError: no films left.*marker 5150"):
        run_report(params, notebooks_dir=nbs)
    report = reports / "standin"
    assert [ln.split("|")[0] for ln in (report / "order.txt").read_text().splitlines()] == ["01"]
    record_json = json.loads((report / "report.json").read_text())
    assert record_json["failed"] == "experiments" and "marker 5150" in record_json["error"]
    assert [n["status"] for n in record_json["notebooks"]] == ["ok", "not run"]
    timings = json.loads((report / "timings.json").read_text())
    assert timings["experiments"]["status"] == "failed" and "2 worker process(es)" in timings["cluster"]
    # The run waited for the data page's line: the page ran beside it (in a worker's second thread, or on the other worker).
    assert all(timings["tasks"][k]["worker"].startswith("tcp://127.0.0.1:") for k in ("run", "page:01_data"))


def test_cmt_report_exits_non_zero_on_a_failed_notebook(setup):
    nbs, reports, params = setup
    make_notebook(nbs / "01_bad.ipynb", "raise RuntimeError('fails on purpose')")
    env = dict(os.environ, CMT_NOTEBOOKS=str(nbs))
    proc = subprocess.run([sys.executable, "-m", "cmtlib.cli", "report", "--params", str(params)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "01_bad" in proc.stderr and "fails on purpose" in proc.stderr
    assert "fails on purpose" in (reports / "standin" / "index.html").read_text()


def test_unknown_params_key_refused_before_any_notebook_runs(setup):
    nbs, reports, _ = setup
    make_notebook(nbs / "01_first.ipynb", record("01"))
    bad = write_params(nbs.parent / "bad.yaml", reports, epochz=3)
    with pytest.raises(ParamsError, match="epochz.*did you mean epochs"):
        run_report(bad, notebooks_dir=nbs)
    with pytest.raises(ParamsError, match="widht"):
        run_report(nbs.parent / "standin.yaml", notebooks_dir=nbs, overrides=["widht=0.5"])
    assert not reports.exists()


def test_notebook_that_does_not_declare_the_parameters_is_refused(setup):
    nbs, reports, params = setup
    make_notebook(nbs / "01_first.ipynb", record("01"))
    make_notebook(nbs / "02_partial.ipynb", "1", params='params_file = "p.yaml"  # params\nbatch = 4  # stray')
    with pytest.raises(ReportError, match=r"02_partial.*lacks run_dir, report_dir.*declares batch"):
        run_report(params, notebooks_dir=nbs)
    assert not reports.exists()


def test_existing_report_folder_is_not_overwritten(setup, capsys):
    nbs, reports, params = setup
    make_notebook(nbs / "01_first.ipynb", record("01"))
    first = run_report(params, notebooks_dir=nbs).parent
    (first / "keep.txt").write_text("mine")
    second = run_report(params, notebooks_dir=nbs).parent
    assert second.name == "standin-2" and first.name == "standin"
    assert (first / "keep.txt").read_text() == "mine"
    assert len((first / "order.txt").read_text().splitlines()) == 1
    assert "exists; not overwriting it" in capsys.readouterr().out
    listing = (reports / "index.html").read_text()
    assert 'href="standin/index.html"' in listing and 'href="standin-2/index.html"' in listing


def test_find_notebooks_order_and_subset(tmp_path):
    for name in ("10_ten", "02_two", "01_one", "draft", "1_bad"):
        make_notebook(tmp_path / f"{name}.ipynb")
    assert [p.stem for p in find_notebooks(tmp_path)] == ["01_one", "02_two", "10_ten"]
    assert [p.stem for p in find_notebooks(tmp_path, ["10", "01_one"])] == ["01_one", "10_ten"]
    # As YAML reads `--set report_notebooks=[01,2]`: numbers, which name the notebooks all the same.
    assert [p.stem for p in find_notebooks(tmp_path, [1, "2"])] == ["01_one", "02_two"]
    with pytest.raises(ReportError, match="names \\['07'\\].*available: 01_one, 02_two, 10_ten"):
        find_notebooks(tmp_path, ["07"])
    with pytest.raises(ReportError, match="no numbered notebooks"):
        find_notebooks(tmp_path / "missing")


def test_unique_dir_adds_suffixes(tmp_path):
    assert unique_dir(tmp_path / "r").name == "r"
    assert unique_dir(tmp_path / "r").name == "r-2"
    assert unique_dir(tmp_path / "r").name == "r-3"


def test_plain_error_strips_ansi_and_keeps_the_message():
    text = plain_error("ValueError", "bad value", ["\x1b[0;31m---\x1b[0m", "\x1b[1;32mCell\x1b[0m line 3", "ValueError: bad value"])
    assert text.startswith("ValueError: bad value\n\n") and "\x1b" not in text and "Cell line 3" in text
    assert plain_error("DeadKernelError", "") == "DeadKernelError"


def test_kernel_selection_runs_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager

    from cmtlib.report.chain.kernel import KernelError, runs_this_python, select_kernel

    assert runs_this_python(["python", "-m", "ipykernel_launcher"])
    assert runs_this_python([sys.executable, "-m", "ipykernel_launcher"])
    assert not runs_this_python(["/nonexistent/env/bin/python", "-m", "ipykernel_launcher"])
    assert not runs_this_python(["R", "--slave"])
    name = select_kernel()
    assert runs_this_python(KernelSpecManager().get_kernel_spec(name).argv)
    with pytest.raises(KernelError, match="not a Jupyter kernel here"):
        select_kernel("no-such-kernel-xyz")


# ---- session: runs made on demand -----------------------------------------------------------------

def fake_run(run_dir: Path, params, metrics: dict | None = None) -> Path:
    from cmtlib.run import Run, RunInfo

    run = Run(run_dir)
    run_dir.mkdir(parents=True)
    run.dump_config(params)
    run.write_info(RunInfo(status="finished", device="cpu (2 threads)"))
    run.write_history([{"epoch": 1, "seconds": 2.0, "train_loss": 1.0, "val_loss": 1.2}])
    if metrics is not None:
        run.write(metrics=metrics)
    return run_dir


def test_ensure_run_uses_a_finished_run_and_refuses_one_with_other_params(tmp_path, monkeypatch):
    from cmtlib.experiments import runs as session
    from cmtlib.params import load_params
    from cmtlib.run import RunMismatchError, with_run_dir

    params = load_params(REPO / "params" / "smoke.yaml")
    run_dir = fake_run(tmp_path / "run", with_run_dir(params, tmp_path / "run"), {"covid": {"auc": 0.9}})
    monkeypatch.setattr(session, "train", lambda *a, **k: pytest.fail("a finished run must not be retrained"))
    monkeypatch.setattr(session, "evaluate_run", lambda *a, **k: pytest.fail("an evaluated run must not be evaluated again"))
    run = session.ensure_run(params, run_dir)
    assert run.metrics == {"covid": {"auc": 0.9}} and run.history["val_loss"].tolist() == [1.2]
    assert run.info.device == "cpu (2 threads)" and run.config["epochs"] == 1
    # Another report folder or thread count is the same run; another epoch count is not.
    assert session.ensure_run(load_params(REPO / "params" / "smoke.yaml", {"threads": 1, "reports_dir": "x"}), run_dir).metrics
    with pytest.raises(RunMismatchError, match="epochs: run has 1, params say 2.*another run_dir"):
        session.ensure_run(load_params(REPO / "params" / "smoke.yaml", {"epochs": 2}), run_dir)


def test_ensure_run_trains_and_evaluates_when_missing(tmp_path, monkeypatch):
    from cmtlib.experiments import runs as session
    from cmtlib.params import load_params

    calls = []

    def train(params, resume, overwrite):
        calls.append(("train", params.train.run_dir, resume))
        print("noisy progress bar")  # kept off the page
        return fake_run(Path(params.train.run_dir), params)

    def evaluate_run(run_dir):
        calls.append(("evaluate", str(run_dir)))
        (Path(run_dir) / "metrics.json").write_text('{"covid": {"auc": 0.75}}')

    monkeypatch.setattr(session, "train", train)
    monkeypatch.setattr(session, "evaluate_run", evaluate_run)
    run = session.ensure_run(load_params(REPO / "params" / "smoke.yaml"), tmp_path / "new")
    assert calls == [("train", str(tmp_path / "new"), False), ("evaluate", str(tmp_path / "new"))]
    assert run.metrics["covid"]["auc"] == 0.75


# ---- ablation runner ----------------------------------------------------------------------------------

def test_ablation_validates_all_files_first_then_trains_each(tmp_path, monkeypatch):
    from cmtlib.experiments import study
    from cmtlib.report.chain import ablation

    reports = tmp_path / "reports"
    a = write_params(tmp_path / "full.yaml", reports)
    b = write_params(tmp_path / "no_lung.yaml", reports, tasks="[disease, healthy, multilabel]", run_name="no_lung")
    bad = write_params(tmp_path / "bad.yaml", reports, widht=0.5)
    trained = []

    def train_run(params):
        trained.append(params.run_name)
        Path(params.train.run_dir).mkdir(parents=True)
        auc = 0.9 if params.run_name == "no_lung" else 0.95
        return {"covid": {"auc": auc, "auc_ci_low": auc - 0.05, "auc_ci_high": auc + 0.02, "eer": 0.1, "sens_at_spec99": 0.5}}

    monkeypatch.setattr(study, "train_run", train_run)
    monkeypatch.setattr(study, "prepare_data", lambda params: None)
    with pytest.raises(ParamsError, match="widht"):
        ablation.run_ablation([a, b, bad], jobs=1)
    assert trained == [] and not reports.exists()

    summary = ablation.run_ablation([a, b], out=reports / "abl", jobs=1)
    assert trained == ["full", "no_lung"]
    html = summary.read_text()
    assert "0.950 (95 % CI 0.900 to 0.970)" in html and "0.900 (95 % CI 0.850 to 0.920)" in html and "0.500" in html
    assert external_refs(html) == [] and "Research use only" in html
    rows = json.loads((reports / "abl" / "summary.json").read_text())["rows"]
    assert [(r["name"], r["status"], r["auc_value"]) for r in rows] == [("full", "ok", 0.95), ("no_lung", "ok", 0.9)]
    assert (reports / "abl" / "params" / "no_lung.yaml").is_file() and (reports / "abl" / "runs" / "full").is_dir()
    assert 'href="abl/index.html"' in (reports / "index.html").read_text()


def test_chain_of_two_pages_runs_the_experiments_step_then_only_reads(tmp_path, monkeypatch):
    """`cmt report` on the smoke params with the data and evaluation pages: the experiments step trains
    and evaluates the run first (its own entry in timings.json, nothing of the comparison, which these
    pages do not read), then the notebooks execute in real kernels and only read it."""
    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))  # inherited by the kernels
    index = run_report(REPO / "params" / "smoke.yaml", out=tmp_path / "reports" / "smoke",
                       overrides=["report_notebooks=01_data,03_evaluation", "threads=1"])
    report = index.parent
    timings = json.loads((report / "timings.json").read_text())
    assert list(timings["notebooks"]) == ["01_data", "03_evaluation"]
    assert all(t["status"] == "ok" for t in timings["notebooks"].values())
    experiments = timings["experiments"]
    assert experiments["status"] == "ok" and set(experiments["steps"]) == {"data", "run"}
    assert not (report / "comparison").exists()  # no page of this chain compares baselines
    run = json.loads((report / "run" / "run.json").read_text())
    assert run["status"] == "finished" and (report / "run" / "metrics.json").is_file()
    evaluation = (report / "03_evaluation.html").read_text()
    assert "Results on the test films" in evaluation and "ROC curve" in evaluation and "Traceback" not in evaluation
    assert external_refs(evaluation) == [] and "In [" not in evaluation
    executed = json.loads((report / "notebooks" / "03_evaluation.ipynb").read_text())
    outputs = "".join(str(o) for c in executed["cells"] for o in c.get("outputs", []))
    assert "training the run" not in outputs  # the page found the run made: it did not train
    assert "COVID-19 AUC" in index.read_text()


@pytest.mark.slow
def test_real_chain_on_smoke_params(tmp_path, monkeypatch):
    """`cmt report --params params/smoke.yaml` end to end: data, training, every page."""
    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))  # inherited by the kernels
    index = run_report(REPO / "params" / "smoke.yaml", out=tmp_path / "reports" / "smoke")
    report = index.parent
    names = [p.stem for p in find_notebooks(REPO / "notebooks")]
    for name in names:
        html = (report / f"{name}.html").read_text()
        assert external_refs(html) == [] and "In [" not in html and "Traceback" not in html, name
        assert str(tmp_path / "data") not in html, f"{name} shows a data path"
    data_page = (report / "01_data.html").read_text()
    assert "Images per class and split" in data_page and data_page.count("data:image/png;base64,") >= 2
    assert (report / "run" / "metrics.json").is_file() and (report / "run" / "checkpoints").is_dir()
    timings = json.loads((report / "timings.json").read_text())["notebooks"]
    assert list(timings) == names and all(t["status"] in ("ok", "placeholder") for t in timings.values())
    assert timings["01_data"]["status"] == timings["02_training"]["status"] == "ok"
    for name in names:  # a placeholder page says so
        assert (timings[name]["status"] == "placeholder") == ("Not implemented yet" in (report / f"{name}.html").read_text())
    assert "COVID-19 AUC" in index.read_text() and "quarantined images" in index.read_text()


def test_a_failed_configuration_is_marked_and_the_others_finish(tmp_path, monkeypatch):
    from cmtlib.experiments import study
    from cmtlib.report.chain import ablation

    reports = tmp_path / "reports"
    files = [write_params(tmp_path / f"{n}.yaml", reports) for n in ("first", "second", "third")]

    def train_run(params):
        if params.run_name == "second":
            raise RuntimeError("out of memory on purpose")
        return {"covid": {"auc": 0.8}}

    monkeypatch.setattr(study, "train_run", train_run)
    monkeypatch.setattr(study, "prepare_data", lambda params: None)
    # The run's own error is on the page and in the one-line error the command exits with.
    with pytest.raises(study.StudyError, match=r"1 of 3 run\(s\) did not finish: second \(failed: RuntimeError: out of memory on purpose\)"):
        ablation.run_ablation(files, out=reports / "abl", jobs=1)
    summary = json.loads((reports / "abl" / "summary.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["ok", "failed", "ok"]
    assert summary["runs"][1]["error"] == "RuntimeError: out of memory on purpose" and "train_run" in summary["runs"][1]["detail"]
    page = (reports / "abl" / "index.html").read_text()
    assert "out of memory on purpose" in page and "Incomplete" in page
