"""params/: every file loads; params/ablation holds exactly the six task subsets of the paper's
Table V, in its order; params/baselines names one registered model per file.

Until params/default.yaml exists (another part of the project writes it), the files are loaded
from a copy of params/ whose default.yaml is params/smoke.yaml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cmtlib.experiments.baselines import baseline_params_files, reduction_note
from cmtlib.models.cmtnet import validate_tasks
from cmtlib.models.registry import MODELS, create_model
from cmtlib.params import load_params

REPO = Path(__file__).resolve().parents[1]
TABLE_V = [  # paper Table V, in its order (1 lung, 2 disease, 3 healthy, 4 multilabel)
    ("lung", "disease", "healthy", "multilabel"),
    ("lung", "multilabel"),
    ("disease", "multilabel"),
    ("lung", "disease", "multilabel"),
    ("lung", "healthy", "multilabel"),
    ("disease", "healthy", "multilabel"),
]


@pytest.fixture(scope="module")
def params_root(tmp_path_factory) -> Path:
    """params/, or a copy of it with smoke.yaml standing in for a missing default.yaml."""
    root = REPO / "params"
    if (root / "default.yaml").is_file():
        return root
    copy = tmp_path_factory.mktemp("params") / "params"
    shutil.copytree(root, copy)
    shutil.copy(root / "smoke.yaml", copy / "default.yaml")
    return copy


def test_every_params_file_loads(params_root):
    files = sorted(params_root.rglob("*.yaml"))
    assert len(files) >= 1 + 6 + 8
    for path in files:
        p = load_params(path)
        assert p.name == path.stem


def test_ablation_files_are_the_six_table_v_subsets_in_order(params_root):
    files = sorted((params_root / "ablation").glob("*.yaml"))  # the shell's glob order
    assert len(files) == 6
    loaded = [load_params(f) for f in files]
    assert [tuple(validate_tasks(p.model.tasks)) for p in loaded] == TABLE_V
    assert [tuple(p.model.tasks) for p in loaded] == TABLE_V  # written in canonical order too
    assert len({p.run_name for p in loaded}) == 6
    base = load_params(params_root / "default.yaml").flat()
    for f, p in zip(files, loaded):
        raw = yaml.safe_load(f.read_text())
        assert set(raw) == {"base", "run_name", "tasks"}, f"{f.name} should state only its tasks and name"
        assert raw["base"] == "../default.yaml"
        flat = p.flat()
        differs = {k for k in flat if flat[k] != base[k]}
        assert differs <= {"tasks", "run_name"}, f"{f.name} changes {differs - {'tasks', 'run_name'}}"
        assert p.model.model == base["model"]


def test_baseline_files_name_registered_models_on_the_default(params_root):
    files = baseline_params_files(params_root / "baselines")
    assert [f.name for f in files] == [f.name for f in baseline_params_files()]  # the default folder is params/baselines
    names = {f.stem: load_params(f).model.model for f in files}
    assert names == {"densenet121": "densenet121", "mobilenet_v2": "mobilenet_v2", "resnet18": "resnet18", "vgg19": "vgg19",
                     "unet": "unet", "segnet_lung": "segnet", "segnet_disease": "segnet", "maskrcnn": "maskrcnn"}
    assert set(names.values()) <= set(MODELS)
    base = load_params(params_root / "default.yaml")
    for f in files:
        raw = yaml.safe_load(f.read_text())
        assert raw["base"] == "../default.yaml" and raw["run_name"] == f"baseline-{f.stem.replace('segnet_', 'segnet-')}"
        p = load_params(f)
        assert p.data.image_size == base.data.image_size and p.data.data_kind == base.data.data_kind, "baselines see the default's data"
        assert p.model.encoder_weights == "none"  # narrow or offline: say so instead of warning
        assert reduction_note(p).startswith("reduced for the CPU: ") and "encoder_weights none (paper imagenet)" in reduction_note(p)
        create_model(p.model.model, tasks=p.model.tasks, width=p.model.width, encoder_weights="none", head_hidden=p.model.head_hidden)
    seg = {f.stem: load_params(f).model.tasks for f in files if f.stem.startswith("segnet")}
    assert seg == {"segnet_lung": ["lung"], "segnet_disease": ["disease"]}
