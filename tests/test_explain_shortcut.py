"""The shortcut audit's building blocks: blanking, linear probes, COVID-19 scores, on arrays with known answers
(the checks and verdicts: tests/test_audit_checks.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cmtlib.explain import shortcut as S

pytest.importorskip("sklearn")
S64 = 64
LUNG = (slice(16, 48), slice(12, 52))  # the lung box of every synthetic image


def _lung(n):
    m = np.zeros((n, S64, S64), bool)
    m[(slice(None), *LUNG)] = True
    return m


def _images(n, y, where: str, seed: int):
    """uint8 noise; the label only in the lungs' brightness (where='lung') or a border corner patch."""
    rng = np.random.default_rng(seed)
    x = rng.integers(60, 140, (n, S64, S64)).astype(np.float64)
    if where == "lung":
        x[(slice(None), *LUNG)] += 60 * y[:, None, None]
    else:
        x[:, :6, :6] += 100 * y[:, None, None]
    return np.clip(x, 0, 255).astype(np.uint8)


class LungReader(nn.Module):
    """A stand-in model: the COVID logit is the mean brightness inside the lung box; it also outputs
    that box as its lung prediction (keys only, no model type: what the audit relies on)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        b = x.shape[0]
        score = x[:, 0, LUNG[0], LUNG[1]].mean(dim=(1, 2))
        lung = torch.full((b, 1, *x.shape[-2:]), -10.0)
        lung[:, :, LUNG[0], LUNG[1]] = 10.0
        return {"lung": lung, "multilabel": torch.stack([self.scale * (score - 0.5), score * 0], 1),
                "embedding": x.mean(dim=(2, 3))}


def test_blank_fills_with_the_kept_mean_or_zero():
    img = np.array([[[10, 20], [30, 40]]], dtype=np.uint8)
    lung = np.array([[[True, False], [False, False]]])
    np.testing.assert_array_equal(S.blank_lungs(img, lung), [[[30, 20], [30, 40]]])  # mean of 20, 30, 40
    np.testing.assert_array_equal(S.blank_outside_lungs(img, lung), [[[10, 10], [10, 10]]])
    np.testing.assert_array_equal(S.blank_lungs(img, lung, fill="zero"), [[[0, 20], [30, 40]]])
    f = S.blank_outside_lungs(img.astype(np.float32) / 255, lung, fill="zero")
    assert f.dtype == np.float32 and f[0, 0, 0] == pytest.approx(10 / 255) and f[0, 1, 1] == 0
    with pytest.raises(ValueError, match="fill"):
        S.blank(img, lung, fill="median")


def test_blanking_aucs_with_a_model_that_reads_the_lungs():
    y = np.array([0, 1] * 6, dtype=float)
    x = _images(12, y, "lung", 3)
    known = np.array([True] * 6 + [False] * 6)  # the rest get the model's predicted lung box
    lung = _lung(12) & known[:, None, None]
    # One mask source for every film (the default): the network's own lungs, reference outlines or not.
    out = S.blanking_aucs(LungReader(), x, lung, known, y)
    assert out["n"] == 12 and out["n_predicted_masks"] == 12 and out["n_left_out"] == 0 and out["mask_source"] == "model"
    assert out["auc_full"] == 1.0 and out["auc_outside_blanked"] == 1.0
    assert out["auc_lungs_blanked"] < 0.8  # the lungs are gone, and the fill carries nothing of them
    mixed = S.blanking_aucs(LungReader(), x, lung, known, y, source="reference")  # reference where known, the network's elsewhere
    assert mixed["n_predicted_masks"] == 6 and mixed["mask_source"] == "reference"
    with pytest.raises(ValueError, match="mask source"):
        S.lung_masks(LungReader(), x, lung, known, source="boxes")


def test_linear_probe_finds_an_encoded_source():
    rng = np.random.default_rng(0)
    source = np.array(["a", "b", "c"] * 20)
    emb = rng.normal(size=(60, 6))
    emb[:, 0] += 3.0 * (source == "a") - 3.0 * (source == "c")
    p = S.linear_probe(emb, source, n_splits=5)
    assert p["accuracy"] > p["majority_rate"] + 0.4 and p["auc"] > 0.9 and p["n_classes"] == 3
    noise = S.linear_probe(emb, rng.permutation(["x", "y"] * 30))
    assert noise["accuracy"] < 0.75 and noise["majority_rate"] == 0.5
    single = S.linear_probe(emb, ["a"] * 59 + [""])
    assert math.isnan(single["accuracy"]) and "nothing to predict" in single["note"]


def test_linear_probe_groups_by_patient():
    rng = np.random.default_rng(2)
    target = np.array(["a", "b"] * 10)
    emb = rng.normal(size=(20, 3))
    emb[:, 0] += 4 * (target == "a")
    grouped = S.linear_probe(emb, target, groups=[f"p{i // 2}" for i in range(20)])  # 10 patients, 5 per class
    assert grouped["n_splits"] == 5 and grouped["accuracy"] > 0.9
    one_patient = S.linear_probe(emb, target, groups=np.where(target == "a", "pa", "pb"))
    assert math.isnan(one_patient["accuracy"]) and "single patient" in one_patient["note"]


@pytest.mark.parametrize("lung_focus", [False, True])
def test_covid_scores_skip_the_decoders_but_equal_the_full_forward(lung_focus):
    from cmtlib.configs import ModelConfig
    from cmtlib.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(model="cmtnet", width=0.125, encoder_weights="none", head_hidden=8, lung_focus=lung_focus)).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(images).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
        full = torch.sigmoid(model(x)["multilabel"][:, 0]).double().numpy()
    np.testing.assert_allclose(S.covid_scores(model, images, batch_size=2), full, rtol=1e-5, atol=1e-6)
