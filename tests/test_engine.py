"""Engine: the loop learns, writes history and checkpoints every epoch atomically, keeps runs safe.

`toy_params` and `train_toy` are shared with the checkpoint, evaluate, predict and resume tests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cmtlib.checkpoint import read_checkpoint
from cmtlib.data.loader import EvalBatches, TrainBatches, load_split, open_cache_folder
from cmtlib.configs import TrainConfig
from cmtlib.engine import fit, train, validate
from cmtlib.losses import MultiTaskLoss
from cmtlib.models.registry import create_model
from cmtlib.params import load_params
from cmtlib.run import Run
from test_loader import write_toy_cache

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"width": 0.1, "encoder_weights": "none", "head_hidden": 16}


def toy_params(tmp_path: Path, n: int = 40, size: int = 64, **overrides):
    """Params for a tiny CPU run on a toy cache (cache_dir set, so nothing is built)."""
    cache = tmp_path / f"cache{n}-{size}"
    if not (cache / "meta.json").is_file():
        write_toy_cache(cache, n=n, size=size)
    values = {"cache_dir": str(cache), "image_size": size, **TINY_MODEL, "epochs": 2, "batch_size": 4, "lr": 1e-3,
              "threads": 1, "eval_batch_size": 8, "run_dir": str(tmp_path / "run"), "channels_last": False}
    values.update(overrides)
    return load_params(None, values)


def train_toy(tmp_path: Path, **overrides) -> Path:
    return train(toy_params(tmp_path, **overrides))


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared by parallel jobs: one torch thread each is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fit_reduces_the_loss_on_a_tiny_set(tmp_path):
    cache = open_cache_folder(write_toy_cache(tmp_path / "c", n=12, size=32))
    data = load_split(cache, None)
    torch.manual_seed(0)
    model = create_model("cmtnet", **TINY_MODEL)
    cfg = TrainConfig(epochs=15, batch_size=4, lr=2e-3, covid_oversample=1, rotate_deg=0, translate_px=0, channels_last=False)
    history = fit(model, MultiTaskLoss(), TrainBatches(data, 4, seed=0), EvalBatches(data, 12), cfg)
    first, last = history[0], history[-1]
    assert [r["epoch"] for r in history] == list(range(1, 16))
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["val_loss"] < 0.5 * first["val_loss"]  # eval mode (BN running statistics) too
    assert last["val_lung_dice"] > 0.75 > first["val_lung_dice"]
    assert {"train_lung", "train_disease", "train_healthy", "train_covid", "train_other", "val_covid_auc", "images_per_s", "lr"} <= set(last)


def test_cosine_schedule_decays_per_step(tmp_path):
    cache = open_cache_folder(write_toy_cache(tmp_path / "c", n=12, size=32))
    data = load_split(cache, None)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, covid_oversample=1, rotate_deg=0, translate_px=0, channels_last=False, lr_schedule="cosine")
    tb = TrainBatches(data, 4, seed=0)
    history = fit(create_model("cmtnet", **TINY_MODEL), MultiTaskLoss(), tb, EvalBatches(data, 12), cfg)
    steps = len(tb)  # 3
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * t / (2 * steps))) for t in (steps - 1, 2 * steps - 1)]
    assert [r["lr"] for r in history] == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(create_model("cmtnet", **TINY_MODEL), MultiTaskLoss(), tb, EvalBatches(data, 12), TrainConfig(lr_schedule="step"))


class FixedModel(torch.nn.Module):
    """Returns fixed outputs: lung logits +1 on the left half, multilabel from a per-row table."""

    def __init__(self, covid_logit: torch.Tensor, size: int):
        super().__init__()
        self.covid_logit, self.size = covid_logit, size
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b = x.shape[0]
        lung = torch.full((b, 1, self.size, self.size), -1.0)
        lung[..., : self.size // 2] = 1.0
        ml = torch.stack([self.covid_logit[: b], torch.zeros(b)], dim=1) + self.dummy
        return {"lung": lung, "multilabel": ml, "embedding": torch.zeros(b, 2)}


def test_validate_computes_auc_and_dice_exactly():
    size = 8
    lung = torch.zeros(4, 1, size, size)
    lung[0, ..., :4] = 1  # identical to the prediction: dice 1
    lung[1] = 1  # whole image: dice 2 * 32 / (32 + 64) = 2 / 3
    lung[3, ..., :4] = 1  # has_lung off: ignored
    batch = {
        "image": torch.zeros(4, 3, size, size), "lung": lung, "disease": torch.zeros(4, 1, size, size),
        "healthy": torch.zeros(4, dtype=torch.long), "covid": torch.tensor([1.0, 0.0, 1.0, 0.0]), "other": torch.zeros(4),
        "has_lung": torch.tensor([True, True, True, False]), "has_disease": torch.zeros(4, dtype=torch.bool),
        "has_healthy": torch.zeros(4, dtype=torch.bool), "has_covid": torch.tensor([True, True, True, False]),
        "has_other": torch.zeros(4, dtype=torch.bool), "row": torch.arange(4),
    }
    # row 2's lung is empty (excluded from Dice); COVID scores: positives 2.0 and -1.0, negative 0.0 -> AUC 0.5.
    model = FixedModel(torch.tensor([2.0, 0.0, -1.0, 5.0]), size)
    out = validate(model, MultiTaskLoss(), [batch], torch.device("cpu"))
    assert out["val_lung_dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["val_covid_auc"] == pytest.approx(0.5)
    assert math.isnan(out["val_disease_dice"])
    assert set(out) >= {"val_loss", "val_lung", "val_covid", "val_other"} and "val_healthy" not in out


def test_history_and_checkpoints_every_epoch_without_temp_files(tmp_path):
    seen = []

    def check(row):
        run = tmp_path / "run"
        hist = json.loads((run / "history.json").read_text())
        csv = pd.read_csv(run / "history.csv")
        last = read_checkpoint(run / "checkpoints" / "last.pt")
        seen.append((row["epoch"], len(hist), len(csv), last["epoch"]))

    params = toy_params(tmp_path, epochs=3)
    cache = open_cache_folder(params.data.cache_dir)
    torch.manual_seed(0)
    fit(create_model("cmtnet", **TINY_MODEL), MultiTaskLoss(), TrainBatches(load_split(cache, "train"), 4, seed=0),
        EvalBatches(load_split(cache, "val"), 8), params.train, Run(tmp_path / "run"), config=params.flat(), on_epoch=check)
    assert seen == [(1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 3)]
    leftovers = [p.name for p in (tmp_path / "run").rglob(".*")]
    assert leftovers == [], leftovers


def test_train_writes_the_run_folder(tmp_path):
    run = train_toy(tmp_path)
    assert run == (tmp_path / "run").resolve()
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "run.json", "history.csv", "history.json", "checkpoints", "train.log"} <= names
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["precision"] == "fp32" and info["data_cache"].endswith("cache40-64")
    assert info["encoder_weights_source"] and len(info["seconds_per_epoch"]) == 2 and info["torch"] == torch.__version__
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["width"] == 0.1
    history = pd.read_csv(run / "history.csv")
    best = read_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == int(history.loc[history["val_loss"].idxmin(), "epoch"])  # best_by val_loss
    assert "epoch 2/2" in (run / "train.log").read_text()


def test_best_by_auc(tmp_path):
    run = train_toy(tmp_path, best_by="val_covid_auc", epochs=3)
    history = pd.read_csv(run / "history.csv")
    best = read_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"]["by"] == "val_covid_auc"
    assert best["epoch"] == int(history.loc[history["val_covid_auc"].idxmax(), "epoch"])  # first of ties


def test_an_existing_run_is_refused_and_overwrite_replaces_it(tmp_path):
    run = train_toy(tmp_path, epochs=1)
    stamp = (run / "run.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train_toy(tmp_path, epochs=1)
    assert (run / "run.json").stat().st_mtime_ns == stamp
    (run / "stray.txt").write_text("x")
    train(toy_params(tmp_path, epochs=1), overwrite=True)
    assert not (run / "stray.txt").exists() and (run / "checkpoints" / "last.pt").is_file()


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a cmtlib run folder"):
        train(toy_params(tmp_path, epochs=1), overwrite=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
def test_a_start_that_failed_early_is_reused_by_the_rerun(tmp_path, flags):
    with pytest.raises(ValueError, match="holds 64 px images but image_size is 32"):
        train(toy_params(tmp_path, epochs=1, image_size=32))  # the cache is at 64 px
    run = tmp_path / "run"
    assert [p.name for p in run.iterdir()] == ["train.log"]
    assert "ERROR cmtlib: stopped: CacheError: cache_dir" in (run / "train.log").read_text()  # the log says why
    assert train(toy_params(tmp_path, epochs=1), **flags) == run
    assert (run / "checkpoints" / "best.pt").is_file() and json.loads((run / "run.json").read_text())["status"] == "finished"
    assert "holds only the train.log of an earlier start" in (run / "train.log").read_text()
    assert json.loads((run / "run.json").read_text())["resumed_at"] == []


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
def test_a_folder_with_more_than_a_train_log_is_not_reused(tmp_path, flags):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("an old log\n")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError if not flags.get("resume") else FileNotFoundError):
        train(toy_params(tmp_path, epochs=1), **flags)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "train.log"]
    assert (run / "notes.txt").read_text() == "mine" and (run / "train.log").read_text() == "an old log\n"


def test_resume_refuses_changed_parameters(tmp_path):
    train_toy(tmp_path, epochs=1)
    with pytest.raises(ValueError, match="lr"):
        train(toy_params(tmp_path, epochs=2, lr=1e-2), resume=True)


def test_unknown_best_by_is_refused(tmp_path):
    with pytest.raises(ValueError, match="best_by"):
        train_toy(tmp_path, best_by="accuracy")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """torchrun with gloo: both ranks train on their half of each global batch; rank 0 writes."""
    params = toy_params(tmp_path, epochs=2, batch_size=2)
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "-m", "cmtlib.cli", "train",
           "--params", str(_write_params(tmp_path, params)), "--set", "device=cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "finished"
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and history["train_loss"].notna().all()
    assert read_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert (run / "train.log").read_text().count("epoch 2/2") == 1  # one writer


def _write_params(tmp_path: Path, params) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(params.flat()))
    return path


def test_best_by_last_keeps_the_final_epoch(tmp_path):
    run = train_toy(tmp_path, epochs=3, best_by="last")
    best = read_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 3 and best["best"] == {"by": "last", "value": 3, "epoch": 3}


def test_covid_loss_within_keeps_the_covid_loss_only_where_a_collection_holds_both_labels(tmp_path):
    """The toy cache alternates its sources so that each holds one COVID-19 label: none keeps the loss.
    Re-labelled so that the first 12 films form a collection of both labels, exactly those keep it."""
    from cmtlib.data.loader import keep_covid_loss_within

    cache = open_cache_folder(write_toy_cache(tmp_path / "c", n=40))
    data = load_split(cache, "train")
    known = data.targets["has_covid"].clone()
    assert keep_covid_loss_within(data) == 0 and not data.targets["has_covid"].any()
    cache.index.loc[cache.index["cache_row"].astype(int) < 12, "source"] = "mixed"  # rows 0-11 hold healthy, COVID and other films
    data = load_split(cache, "train")
    expected = known & torch.tensor((data.index["source"] == "mixed").to_numpy())
    assert keep_covid_loss_within(data) == int(expected.sum()) == 8 and torch.equal(data.targets["has_covid"], expected)
    run = train_toy(tmp_path, epochs=1, covid_loss_within=True, balance_sources=True)
    assert "covid_loss_within: the COVID-19 loss counts for 0 of 24 training films" in (run / "train.log").read_text()


def test_a_lung_focus_run_trains_and_reloads_with_its_focus(tmp_path):
    run = train_toy(tmp_path, epochs=1, lung_focus=True, threshold_rule="format_balanced:0.9")
    model, meta = Run(run).load_model()
    assert model.lung_focus and meta["model"]["lung_focus"] is True
    threshold = json.loads((run / "threshold.json").read_text())
    assert threshold["threshold_rule"] == "format_balanced:0.9" and threshold["negatives_by_format"]
