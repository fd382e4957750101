"""CAMs through the head-only wrapper, and their agreement measures on hand-made maps."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from cmtlib.explain import cam
from cmtlib.models.registry import create_model

pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("cmtnet", width=0.125, encoder_weights="none")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8)


def test_every_method_gives_maps_in_unit_range(model, images):
    maps = cam.compute_cams(model, images)
    assert list(maps) == list(cam.DEFAULT_METHODS)
    for name, m in maps.items():
        assert m.shape == (2, 64, 64) and m.dtype == np.float32, name
        assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1, name
        assert np.allclose(m.max(axis=(1, 2)), 1) or (m == 0).all(), name  # min-max per image


def test_wrapper_runs_no_decoder_and_matches_the_head(model, images):
    def boom(*_):
        raise AssertionError("a decoder ran during CAM")

    handles = [model.lung_decoder.register_forward_hook(boom), model.disease_decoder.register_forward_hook(boom)]
    try:
        cam.compute_cams(model, images, ("gradcam", "eigencam"))
        x = cam.as_batch(images)
        model.eval()
        with torch.no_grad():
            head = cam.HeadLogits(model)(x)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        full = model(x)["multilabel"]
    assert head.shape == (2, 2)
    torch.testing.assert_close(head, full)


def test_hooks_released_mode_restored_and_no_grads_left(model, images):
    layer = cam.cam_target_layer(model)
    assert layer is model.encoder.blocks[-1]
    model.train()
    cam.compute_cams(model, images, ("gradcam",))
    assert not layer._forward_hooks and model.training
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(KeyError, match="healthy"):  # an error inside the `with` still releases the hooks
        cam.compute_cams(create_model("cmtnet", tasks=["lung", "multilabel"], width=0.125, encoder_weights="none"),
                         images, ("gradcam",), head="healthy")
    assert not layer._forward_hooks
    model.eval()


class TinyBaseline(nn.Module):
    """A generic encoder + head model exposing the CAM contract (no CMTNet parts)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 2)
        self.cam_target_layer = self.encoder[2]

    def forward_features(self, x):
        return self.encoder(x)

    def classify(self, features):
        emb = features.mean(dim=(2, 3))
        return {"embedding": emb, "multilabel": self.fc(emb)}

    def forward(self, x):
        return self.classify(self.forward_features(x))


def test_generic_model_contract(images):
    torch.manual_seed(1)
    m = TinyBaseline()
    maps = cam.compute_cams(m, images, ("gradcam", "layercam"))
    assert maps["gradcam"].shape == (2, 64, 64)
    assert cam.disease_maps(m, images) is None  # no disease output: no own map
    with pytest.raises(TypeError, match="forward_features"):
        cam.compute_cams(nn.Conv2d(3, 1, 1), images, ("gradcam",))


def test_mass_in_mask_pointing_and_iou_known_answers():
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True  # top-left quarter
    inside = np.zeros((1, 4, 4))
    inside[0, 0, 0], inside[0, 1, 1] = 1.0, 0.5
    half = np.zeros((1, 4, 4))
    half[0, 0, 0], half[0, 3, 3] = 1.0, 1.0
    assert cam.mass_in_mask(inside, mask)[0] == pytest.approx(1.0)
    assert cam.mass_in_mask(half, mask)[0] == pytest.approx(0.5)
    assert math.isnan(cam.mass_in_mask(inside, np.zeros_like(mask))[0])

    out = np.zeros((1, 4, 4))
    out[0, 3, 3], out[0, 0, 0] = 1.0, 0.9  # maximum outside the mask
    assert cam.pointing_game(inside, mask)[0] == 1.0
    assert cam.pointing_game(out, mask)[0] == 0.0
    assert math.isnan(cam.pointing_game(np.ones((1, 4, 4)), mask)[0])  # constant map: no maximum

    # map >= 0.5 covers (0,0), (0,1) inside and (3,2), (3,3) outside: IoU 2 / (4 + 2) = 1/3
    m = np.zeros((1, 4, 4))
    m[0, 0, :2], m[0, 3, 2:] = 1.0, 0.6
    assert cam.iou_at(m, mask)[0] == pytest.approx(1 / 3)
    assert cam.iou_at(mask.astype(float), mask)[0] == pytest.approx(1.0)


def test_agreement_table_and_summary():
    lung = np.zeros((2, 4, 4), bool)
    lung[:, :, :2] = True
    disease = np.zeros((2, 4, 4), bool)
    disease[:, 0, 0] = True
    a = np.zeros((2, 4, 4))
    a[:, 0, 0] = 1.0  # all mass in the lung, max on the disease
    b = np.zeros((2, 4, 4))
    b[0, 0, 3] = 1.0  # image 0: all outside; image 1: half inside
    b[1, 0, 0], b[1, 3, 3] = 1.0, 1.0
    table = cam.agreement({"a": a, "b": b}, lung, disease, has_lung=[True, True], has_disease=[True, False], image_ids=["x", "y"])
    assert table.shape == (4, 6) and table["lung_area"].tolist() == [0.5] * 4
    rows = table.set_index(["method", "image_id"])
    assert rows.loc[("a", "x"), "mass_in_lung"] == 1.0 and rows.loc[("a", "x"), "pointing_game"] == 1.0
    assert rows.loc[("b", "x"), "mass_in_lung"] == 0.0 and rows.loc[("b", "y"), "mass_in_lung"] == 0.5
    assert math.isnan(rows.loc[("a", "y"), "pointing_game"])  # disease mask unknown for y
    s = cam.agreement_summary(table)
    assert s.loc["b", "mass_in_lung_mean"] == pytest.approx(0.25)
    assert s.loc["b", "mass_in_lung_sd"] == pytest.approx(np.std([0.0, 0.5], ddof=1))
    assert s.loc["a", "pointing_game_n"] == 1
    text = cam.agreement_summary(table, formatted=True)
    assert text.loc["a", "pointing_game"] == "1.00 (n=1)" and text.loc["b", "mass_in_lung"] == "0.25 ± 0.35 (n=2)"


def test_cam_comparison_adds_the_model_disease_map(model, images):
    lung = np.zeros((2, 64, 64), bool)
    lung[:, 8:56, 8:56] = True
    out = cam.cam_comparison(model, images, lung=lung, disease=lung, image_ids=["a", "b"], methods=("gradcam",))
    assert list(out.maps) == ["gradcam", cam.DISEASE_MAP]
    assert out.maps[cam.DISEASE_MAP].shape == (2, 64, 64)
    assert set(out.summary.index) == {"gradcam", cam.DISEASE_MAP}
    assert (out.per_image["mass_in_lung"].between(0, 1)).all() and out.seconds_per_image["gradcam"] > 0


def test_explain_imports_without_optional_packages():
    code = ("import sys\n"
            "for m in ('pytorch_grad_cam', 'sklearn', 'umap', 'matplotlib'): sys.modules[m] = None\n"
            "import cmtlib.explain.cam, cmtlib.explain.embeddings, cmtlib.explain.overlays, cmtlib.explain.shortcut\n"
            "import cmtlib.explain.review, cmtlib.explain.plots\n"
            "assert cmtlib.explain.embeddings.umap_embed is not None\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_registered_model_with_a_covid_head_can_be_explained():
    """No branching on model type: any registry entry with a `multilabel` output gets CAMs; the
    others fail with an error naming the missing head."""
    from cmtlib.models.registry import MODELS

    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32), dtype=np.uint8)
    for name in MODELS:
        torch.manual_seed(0)
        m = create_model(name, width=0.125, encoder_weights="none").eval()
        with torch.no_grad():
            keys = set(m(cam.as_batch(x)))
        if "multilabel" in keys:
            maps = cam.compute_cams(m, x, ("gradcam",))
            assert maps["gradcam"].shape == (1, 32, 32), name
        else:
            with pytest.raises((KeyError, TypeError), match="multilabel|forward_features"):
                cam.compute_cams(m, x, ("gradcam",))
