"""cmtlib.run owns the run folder: its file names, run.json's keys, the frozen threshold."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from cmtlib.errors import RunFolderError
from cmtlib.run import RUN_FORMAT, Evaluation, Run, RunInfo

PACKAGE = Path(__file__).resolve().parents[1] / "cmtlib"
# File names of a run folder that only cmtlib/run.py may spell out.
OWNED = ("run.json", "threshold.json", "indist.npz", "best.pt", "last.pt", "model.pt", "predictions_val.csv", "history.csv",
         "config.yaml", "shortcut_audit.json")


def _literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module (f-string parts included), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_only_run_spells_the_run_folders_file_names():
    """A file name as a whole string or a path's last part (".../threshold.json") outside cmtlib/run.py is
    a second owner; prose that mentions a file inside a longer sentence is not."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "run.py":
            continue
        for line, text in _literals(path):
            last = text.strip().rsplit("/", 1)[-1]
            if last in OWNED and " " not in text.strip():
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} {text!r}")
    assert found == []


def test_the_scan_would_catch_a_second_reader(tmp_path):
    """The check above is not vacuous: a module that opens threshold.json itself is found."""
    module = tmp_path / "reader.py"
    module.write_text('import json\nfrom pathlib import Path\nvalue = json.loads((Path("r") / "threshold.json").read_text())\n'
                      'doc = "the threshold.json of a run, in prose"\n')
    hits = [text for _, text in _literals(module) if text.rsplit("/", 1)[-1] in OWNED and " " not in text]
    assert hits == ["threshold.json"]


def test_run_info_round_trips_and_unknown_keys_are_refused(tmp_path):
    run = Run(tmp_path)
    info = RunInfo(name="x", status="finished", threads=1, threshold_rule="specificity:0.95", seconds_per_epoch=[1.5])
    run.write_info(info)
    assert Run.open(tmp_path).info == info and json.loads((tmp_path / "run.json").read_text())["run_format"] == RUN_FORMAT
    (tmp_path / "run.json").write_text(json.dumps({**dataclasses.asdict(info), "covid_threshold": 0.3}))
    with pytest.raises(RunFolderError, match="keys this cmtlib does not write \\(covid_threshold\\)"):
        Run(tmp_path).info


def test_the_threshold_is_stored_once_and_read_through_run(tmp_path):
    run = Run(tmp_path)
    assert run.threshold is None and run.operating_threshold != run.operating_threshold  # NaN without a threshold
    run.write_threshold({"covid_threshold": 0.25, "threshold_rule": "specificity:0.95"})
    assert Run(tmp_path).operating_threshold == 0.25
    run.write_threshold({"covid_threshold": None, "threshold_rule": "specificity:0.95"})  # a model without a COVID output
    assert Run(tmp_path).operating_threshold != Run(tmp_path).operating_threshold


def test_an_evaluation_folder_writes_metrics_last_and_lists_externals(tmp_path):
    import pandas as pd

    run = Run(tmp_path)
    frame = pd.DataFrame({"image_id": ["a"], "split": ["test"], "cache_row": [0], "p_covid": [0.5]})
    run.external("zeta").write(predictions=frame, metrics={"covid": {"auc": 0.5}})
    run.external("holdout").write(predictions=frame, metrics={"covid": {"auc": 0.7}})
    Evaluation(tmp_path / "external" / "partial").write(predictions=frame)  # no metrics: not finished
    assert [e.name for e in run.externals()] == ["holdout", "zeta"]
    assert run.external("holdout").metrics["covid"]["auc"] == 0.7 and run.external("zeta").predictions["image_id"].tolist() == ["a"]
