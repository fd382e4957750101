"""A bare GPU machine has torch and torchvision but none of the report packages nor Dask (studies and the
report chain need it, one run does not): the engine, evaluation, prediction and the run folder must
import (and the engine train) without them."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("papermill", "nbconvert", "nbformat", "jupyter_client", "ipykernel", "IPython", "pytorch_grad_cam", "umap",
           "sklearn", "matplotlib", "seaborn", "threadpoolctl", "pydicom", "jinja2", "dask", "distributed")

# Importing a blocked package fails as if it were not installed. find_spec itself still answers (with a
# spec whose loading fails): torch probes optional packages with importlib.util.find_spec at import time.
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, importlib.machinery, sys

    class Refuse(importlib.abc.Loader):
        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {{spec.name!r}} (blocked by the test)")

        def exec_module(self, module):
            raise ModuleNotFoundError(f"No module named {{module.__name__!r}} (blocked by the test)")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                return importlib.machinery.ModuleSpec(name, Refuse())
            return None

    sys.meta_path.insert(0, Block())
""")


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "probe.py"
    script.write_text(BLOCKER + textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_engine_evaluate_and_predict_import_without_the_report_packages(tmp_path):
    proc = _run("""
        import cmtlib.engine, cmtlib.evaluate, cmtlib.predict, cmtlib.inference, cmtlib.run, cmtlib.checkpoint
        import cmtlib.cli, cmtlib.params, cmtlib.metrics, cmtlib.models.registry
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
        print("leaked", leaked)
        assert not leaked, leaked
    """.replace("{blocked!r}", repr(BLOCKED)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "leaked []" in proc.stdout


def test_a_tiny_run_trains_evaluates_and_predicts_without_them(tmp_path):
    proc = _run(f"""
        import os
        os.environ["CMT_DATA_DIR"] = {str(tmp_path / "data")!r}
        from pathlib import Path
        from cmtlib.engine import train
        from cmtlib.evaluate import evaluate_run
        from cmtlib.params import load_params
        from cmtlib.predict import predict_files

        params = load_params({str(REPO / "params" / "smoke.yaml")!r}, {{"synth_n": 120, "synth_size": 32, "image_size": 32,
                             "threads": 1, "run_dir": {str(tmp_path / "run")!r}}})
        run = train(params)
        metrics = evaluate_run(run, n_boot=20)
        image = sorted(Path({str(tmp_path / "data")!r}).rglob("*.png"))[0]
        out = predict_files(run, [image], {str(tmp_path / "pred")!r})
        assert "json" in out[0], out
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        assert not leaked, leaked
        print("auc", metrics["covid"]["auc"])
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "auc" in proc.stdout


def test_the_blocker_does_block(tmp_path):
    """The probe itself must fail on a blocked import, or the test above could pass vacuously."""
    proc = _run("import matplotlib\n", tmp_path)
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr
