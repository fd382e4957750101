"""The notebooks in notebooks/ and the params files in params/: the chain's contract with them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from cmtlib.params import load_params
from cmtlib.report.chain.runner import INJECTED, check_parameters, find_notebooks

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMS_FILES = sorted((REPO / "params").rglob("*.yaml"))
DEFAULTS = {"params_file": "../params/smoke.yaml", "run_dir": "../runs/smoke", "report_dir": "../reports/interactive"}
EXPECTED = ["01_data", "02_training", "03_evaluation", "04_embeddings", "05_overlays", "06_misclassification", "07_cam", "08_shortcut_audit", "09_baselines", "10_external"]


def test_the_numbered_chain_is_complete():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    assert [p.stem for p in find_notebooks(REPO / "notebooks")] == EXPECTED
    check_parameters(NOTEBOOKS)  # raises on a missing or extra parameter


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_and_declares_exactly_the_injected_parameters(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0] is tagged[0], "the parameters cell is the first code cell"

    tree = ast.parse(tagged[0].source)
    assigned = {n.targets[0].id: n.value.value for n in tree.body if isinstance(n, ast.Assign)}
    assert assigned == DEFAULTS and len(tree.body) == len(INJECTED)
    for line in tagged[0].source.splitlines():
        if re.match(r"\w+ = ", line):
            assert "  # " in line, f"parameter line without a comment: {line}"
    assert "params = load_params(params_file)" in code[1].source, "the config cell follows the parameters cell"

    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path.name}: define functions in cmtlib, not in a notebook"
    assert not any(c.get("attachments") for c in nb.cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_page_is_implemented(path):
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    assert "page.not_implemented(" not in source


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: str(p.relative_to(REPO / "params")))
def test_every_params_file_loads_with_valid_keys(path):
    params = load_params(path)  # unknown keys raise ParamsError
    assert params.name == path.stem
    # run_dir is both (the chain sets train.run_dir to the injected run_dir); the others must not be.
    assert not {"params_file", "report_dir"} & set(params.flat()), "params keys must not shadow notebook parameters"


def test_smoke_params_are_tiny():
    p = load_params(REPO / "params" / "smoke.yaml")
    assert p.run_name == "smoke" and p.data.data_kind == "synthetic"
    assert p.data.synth_n <= 500 and p.data.image_size == 64 and p.train.epochs == 1 and p.model.width <= 0.25
