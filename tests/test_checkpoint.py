"""Checkpoints: plain data + tensors (weights_only), self-describing, rebuild the trained model."""

from __future__ import annotations

import pytest
import torch

from cmtlib.models.base import CLASS_NAMES
from cmtlib.run import Run
from cmtlib.checkpoint import (CheckpointError, load_model, make_checkpoint, read_checkpoint, save_checkpoint)
from cmtlib.models.registry import create_model
from test_engine import TINY_MODEL, one_thread, toy_params, train_toy  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    return train_toy(tmp_path_factory.mktemp("ckpt"), epochs=1)


def test_loads_with_weights_only_and_describes_itself(run):
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["format"] == "cmtlib-checkpoint" and ckpt["epoch"] == 1
    assert ckpt["class_names"] == {"healthy": ["unhealthy", "healthy"], "multilabel": ["COVID-19", "other disease"]} == CLASS_NAMES
    assert set(ckpt["versions"]) >= {"cmtlib", "torch", "torchvision"} and ckpt["versions"]["torch"] == str(torch.__version__)
    pre = ckpt["preprocessing"]
    assert pre["input_size"] == [64, 64] and pre["channels"] == 3 and pre["input_range"] == [0.0, 1.0]
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert ckpt["model"]["name"] == "cmtnet" and ckpt["model"]["width"] == 0.1
    assert ckpt["config"]["image_size"] == 64 and ckpt["config"]["lr"] == 1e-3
    assert len(ckpt["history"]) == 1 and ckpt["history"][0]["epoch"] == 1
    assert ckpt["best"]["by"] == "val_loss" and ckpt["best"]["epoch"] == 1
    assert isinstance(ckpt["rng"]["cpu"], torch.Tensor) and ckpt["rng"]["cpu"].dtype == torch.uint8
    assert ckpt["optimizer"]["state"] and ckpt["optimizer"]["param_groups"][0]["lr"] == 1e-3


def test_load_model_rebuilds_the_trained_network(run):
    model, meta = Run(run).load_model("best")
    assert not model.training and meta["epoch"] == 1 and "state_dict" not in meta
    assert model.encoder_weights == "none"  # rebuilt without reading ImageNet weights
    ckpt = read_checkpoint(run / "checkpoints" / "best.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k]), k
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out["lung"].shape == (2, 1, 64, 64) and out["multilabel"].shape == (2, 2)
    again, _ = load_model(run / "checkpoints" / "best.pt")
    with torch.no_grad():
        assert torch.equal(again(x)["multilabel"], out["multilabel"])


def test_prediction_reads_the_light_checkpoint_with_the_best_weights(run):
    """checkpoints/model.pt holds best.pt's weights without the optimizer, RNG or history; load_model
    prefers it, builds the network on the meta device and gives the same outputs as an ordinary build."""
    light, best = run / "checkpoints" / "model.pt", run / "checkpoints" / "best.pt"
    assert light.stat().st_size < best.stat().st_size / 2  # Adam keeps two moments per weight
    slim, full = read_checkpoint(light), read_checkpoint(best)
    assert not {"optimizer", "rng", "history"} & set(slim) and slim["epoch"] == full["epoch"]
    assert all(torch.equal(slim["state_dict"][k], v) for k, v in full["state_dict"].items())
    model, meta = Run(run).load_model("best")
    assert meta["path"] == str(light) and not any(t.is_meta for t in model.state_dict().values())
    ordinary = create_model("cmtnet", **{k: full["config"][k] for k in ("tasks", "width", "head_hidden")}, encoder_weights="none")
    ordinary.load_state_dict(full["state_dict"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["multilabel"], ordinary.eval()(x)["multilabel"])


def test_a_bare_state_dict_is_refused(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(create_model("cmtnet", **TINY_MODEL).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a cmtlib checkpoint"):
        read_checkpoint(path)


def test_a_missing_run_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="cmt train"):
        Run(tmp_path / "nowhere").load_model()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "nowhere.pt")


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    model = create_model("cmtnet", **TINY_MODEL)
    ckpt = make_checkpoint(model, None, config={"a": 1}, epoch=1, history=[], best={"by": "val_loss", "value": None, "epoch": None}, image_size=32)
    path = save_checkpoint(ckpt, tmp_path / "last.pt")
    before = path.read_bytes()

    def broken(obj, f, *a, **k):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(dict(ckpt, epoch=2), tmp_path / "last.pt")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert read_checkpoint(path)["epoch"] == 1


def test_the_harmonisation_setting_travels_in_the_checkpoint(tmp_path):
    """A run trained with effective_px is evaluated and predicted with it: load_model rebuilds it from
    the checkpoint's config, so no consumer can forget it."""
    from cmtlib.configs import ModelConfig
    from cmtlib.models.registry import build_model

    cfg = ModelConfig(model="cmtnet", width=0.0625, encoder_weights="none", head_hidden=8, effective_px=24)
    model = build_model(cfg)
    config = {"model": "cmtnet", "tasks": list(cfg.tasks), "width": 0.0625, "head_hidden": 8, "effective_px": 24}
    ckpt = make_checkpoint(model, None, config=config, epoch=1, history=[], best={}, image_size=64)
    save_checkpoint(ckpt, Run(tmp_path).checkpoint("best"))
    loaded, meta = Run(tmp_path).load_model("best")
    assert loaded.preprocess.effective_px == 24 and meta["preprocessing"]["effective_px"] == 24
