"""Deep baselines: classifiers (DenseNet121, MobileNetV2, ResNet18, VGG19 + FC), UNet, single-task
SegNet: registry entries, outputs, CAM hooks, width scaling and ImageNet / state_dict loading.
(The shared output contract is checked for every registered model in test_model_contract.py.)"""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from cmtlib.experiments.baselines import DEEP_BASELINES
from cmtlib.models.classifiers import ResNet18
from cmtlib.models.registry import MODELS, create_model
from cmtlib.models.weights import WEIGHTS_DIR_ENV, WeightsError

CLASSIFIERS = ("densenet121", "mobilenet_v2", "resnet18", "vgg19")
TINY = dict(encoder_weights="none", head_hidden=16)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def build(name: str, width: float = 0.125, **kw):
    torch.manual_seed(0)
    return create_model(name, **{"width": width, **TINY, **kw})


def test_every_baseline_is_registered():
    assert set(DEEP_BASELINES) <= set(MODELS)
    for name in DEEP_BASELINES:
        assert MODELS[name].name == name


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_outputs_and_cam_hooks(name):
    model = build(name).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x).features
        again = model.classify(feats)
    assert list(out) == ["embedding", "healthy", "multilabel"] == model.describe()["outputs"]
    assert feats.ndim == 4 and tuple(feats.shape[-2:]) == (2, 2) and feats.shape[1] == model.embedding_dim
    torch.testing.assert_close(out["embedding"], feats.mean(dim=(2, 3)))
    for k in out:
        torch.testing.assert_close(again[k], out[k])
    only = build(name, tasks=["lung", "multilabel"])
    assert only.tasks == ("multilabel",) and only.healthy_head is None
    with pytest.raises(ValueError, match="lack 'multilabel'"):
        build(name, tasks=["healthy"])


@pytest.mark.parametrize("name", ["densenet121", "mobilenet_v2", "vgg19", "unet", "segnet"])
def test_width_scales_parameters(name):
    counts = [n_params(build(name, width=w)) for w in (0.25, 0.5, 1.0)]
    assert counts[0] < counts[1] < counts[2], counts


def test_full_width_classifiers_match_torchvision_encoders():
    for name, tv, part in (("densenet121", torchvision.models.densenet121, "features"), ("mobilenet_v2", torchvision.models.mobilenet_v2, "features"),
                           ("vgg19", torchvision.models.vgg19_bn, "features")):
        ours = build(name, width=1.0).encoder.state_dict()
        theirs = getattr(tv(weights=None), part).state_dict()
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}, name


def test_resnet18_at_full_width_is_torchvisions_and_narrows_every_stage():
    full = build("resnet18", width=1.0).encoder.state_dict()
    theirs = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in full.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    narrow = build("resnet18", width=0.25)
    assert narrow.embedding_dim == 128 and narrow.encoder.conv1.out_channels == 16
    assert [narrow.encoder.get_submodule(f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == [16, 32, 64, 128]
    assert n_params(narrow) < n_params(build("resnet18", width=1.0)) / 10
    out = narrow(torch.rand(2, 3, 64, 64))
    assert out["embedding"].shape == (2, 128) and out["multilabel"].shape == (2, 2)
    with pytest.raises(ValueError, match="width must be a positive"):
        build("resnet18", width=0)


def write_torchvision_resnet18(folder, seed: int = 1):
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "resnet18-f37072fd.pth")
    return state


def test_imagenet_weights_load_from_torch_hubs_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    state = write_torchvision_resnet18(tmp_path / "hub" / "checkpoints")
    model = ResNet18(encoder_weights="imagenet", head_hidden=8)
    assert model.encoder_weights_source == f"ImageNet (torchvision resnet18, {tmp_path / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'})"
    enc = model.encoder.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(enc[key], state[key])


def test_weights_dir_comes_first_and_missing_files_warn(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "mine"))
    write_torchvision_resnet18(tmp_path / "hub" / "checkpoints", seed=1)
    state = write_torchvision_resnet18(tmp_path / "mine", seed=2)
    model = ResNet18(encoder_weights="imagenet")
    assert str(tmp_path / "mine") in model.encoder_weights_source
    torch.testing.assert_close(model.encoder.state_dict()["conv1.weight"], state["conv1.weight"])
    with caplog.at_level(logging.WARNING):
        m = create_model("mobilenet_v2", encoder_weights="imagenet")
    assert m.encoder_weights_source.startswith("random init (ImageNet weights not found")
    assert "mobilenet_v2-b0353104.pth" in caplog.text
    with caplog.at_level(logging.WARNING):
        narrow = create_model("vgg19", width=0.25, encoder_weights="imagenet")
    assert narrow.encoder_weights_source == "random init (ImageNet weights need width 1.0, got 0.25)"


def test_state_dict_paths_load_or_say_why_not(tmp_path):
    old = torchvision.models.densenet121(weights=None).state_dict()
    # torchvision's DenseNet file uses pre-2018 names (denselayer1.norm.1.weight); they are renamed on load.
    renamed = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in old.items()}
    torch.save(renamed, tmp_path / "densenet.pth")
    model = create_model("densenet121", encoder_weights=str(tmp_path / "densenet.pth"))
    torch.testing.assert_close(model.encoder.state_dict()["denseblock1.denselayer1.norm1.weight"], old["features.denseblock1.denselayer1.norm1.weight"])
    # A trained baseline's own checkpoint state_dict (encoder.* keys) initialises another.
    torch.save(build("vgg19", width=0.25).state_dict(), tmp_path / "vgg.pth")
    again = create_model("vgg19", width=0.25, head_hidden=16, encoder_weights=str(tmp_path / "vgg.pth"))
    torch.testing.assert_close(again.encoder.state_dict()["0.weight"], build("vgg19", width=0.25).encoder.state_dict()["0.weight"])
    write_torchvision_resnet18(tmp_path)
    with pytest.raises(WeightsError, match="does not fit this vgg19_bn"):
        create_model("vgg19", encoder_weights=str(tmp_path / "resnet18-f37072fd.pth"))
    with pytest.raises(FileNotFoundError):
        create_model("resnet18", encoder_weights=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("tasks,keys", [(["lung"], ["lung", "embedding"]), (["disease", "healthy"], ["disease", "embedding"]),
                                        (["lung", "disease", "multilabel"], ["lung", "disease", "embedding"])])
@pytest.mark.parametrize("name", ["segnet", "unet"])
def test_segmentation_baselines_output_their_tasks(name, tasks, keys):
    model = build(name, tasks=tasks).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 72, 88))
        feats = model.forward_features(torch.rand(2, 3, 72, 88))
    assert list(out) == keys == model.describe()["outputs"]
    assert all(tuple(out[k].shape) == (2, 1, 72, 88) for k in keys if k != "embedding")
    assert tuple(out["embedding"].shape) == (2, model.embedding_dim) == (2, feats.features.shape[1])
    with pytest.raises(ValueError, match="no segmentation task"):
        build(name, tasks=["healthy", "multilabel"])


def test_unet_levels_and_skips():
    model = build("unet", width=0.25)
    assert model.channels == (16, 32, 64, 128, 256)
    enc = model.forward_features(torch.rand(1, 3, 72, 88))
    assert [tuple(s.shape[-2:]) for s in enc.stages] == [(72, 88), (36, 44), (18, 22), (9, 11)]
    assert tuple(enc.features.shape) == (1, 256, 4, 5)


def test_segnet_loads_a_cmtnet_encoder_and_decoder():
    cmt = build("cmtnet", width=0.125)
    seg = build("segnet", width=0.125, tasks=["lung"])
    missing, unexpected = seg.load_state_dict(cmt.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("disease_decoder", "healthy_head", "multilabel_head")) for k in unexpected)
