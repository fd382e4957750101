"""Shortcut audit: blanking, thumbnail floors, linear probes and the verdict, on arrays with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
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


def test_border_region_is_a_frame_without_lungs():
    lung = np.zeros((1, 16, 16), bool)
    lung[0, :, :3] = True
    r = S.border_region(lung, frame=0.125)  # 2 px frame
    assert r[0, 0, 8] and r[0, 15, 8] and r[0, 8, 15] and not r[0, 8, 8]
    assert not r[0, 0, 0]  # a lung pixel in the frame is excluded
    assert r.sum() == (16 * 16 - 12 * 12) - (2 * 16 + 4)  # frame minus lung columns 0-1 (all rows) and 2 (4 frame rows)


def test_thumbnail_floor_border_high_lungs_at_chance():
    rng = np.random.default_rng(0)
    ya, yb = rng.integers(0, 2, 120), rng.integers(0, 2, 120)
    floors = S.thumbnail_floor(_images(120, ya, "border", 1), ya, _images(120, yb, "border", 2), yb, _lung(120), _lung(120))
    assert floors["border"] > 0.95 and floors["whole"] > 0.9
    assert abs(floors["lung"] - 0.5) < 0.15
    assert floors["n_train"] == 120 and floors["n_test"] == 120
    one_class = S.thumbnail_floor(_images(4, np.ones(4), "border", 1), np.ones(4), _images(4, ya[:4], "border", 2), ya[:4], _lung(4), _lung(4))
    assert math.isnan(one_class["border"])


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


def test_probe_table_reads_resolution_from_the_index():
    rng = np.random.default_rng(1)
    n = 40
    big = np.arange(n) % 2 == 1
    emb = rng.normal(size=(n, 4))
    emb[:, 1] += 4 * big
    pred = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": [f"p{k}" for k in range(n)],
                         "source": "one", "view": np.where(big, "AP", "PA")})
    index = pd.DataFrame({"image_id": pred["image_id"][::-1], "orig_height": np.where(big, 3000, 800)[::-1], "orig_width": 900})
    t = S.probe_table(emb, pred, index).set_index("target")
    assert t.loc["resolution", "accuracy"] > 0.9 and t.loc["view", "accuracy"] > 0.9
    assert "nothing to predict" in t.loc["source", "note"]
    assert S.resolution_bucket([64, 800, 1500, 3000, ""], [64, 600, 1000, 900, ""]).tolist() == [
        "<=256", "257-1024", "1025-2048", ">2048", ""]
    assert S.resolution_bucket([800, 1500], [600, 1000], edges=(1024, 2048)).tolist() == ["<=1024", "1025-2048"]


def test_verdict_wording_follows_the_numbers():
    probes = pd.DataFrame([{"target": "source", "accuracy": 0.95, "majority_rate": 0.6}])
    text = S.verdict(0.95, {"whole": 0.96, "border": 0.93, "lung": 0.7},
                     {"auc_full": 0.95, "auc_lungs_blanked": 0.9, "auc_outside_blanked": 0.6}, probes,
                     pd.DataFrame({"method": ["gradcam"], "outside_mean": [0.7], "uniform_outside": [0.6], "n": [5]}))
    assert "The border-only floor reaches AUC 0.93, close to the model's 0.95" in text
    assert "With the lungs blanked out the model still reaches AUC 0.90" in text
    assert "The embedding predicts the source (accuracy 0.95 vs 0.60" in text
    assert "70% of the gradcam map's mass lies outside the lungs on average (a uniform map would put 60% there)" in text
    assert text.endswith("Overall: 4 of 4 checks point to cues outside the lungs; read the AUC with that in mind.")
    clean = S.verdict(0.95, {"whole": 0.6, "border": 0.55, "lung": 0.8},
                      {"auc_full": 0.95, "auc_lungs_blanked": 0.55, "auc_outside_blanked": 0.93}, None,
                      pd.DataFrame({"method": ["gradcam"], "outside_mean": [0.6], "uniform_outside": [0.7], "n": [5]}))
    assert "carries little class signal" in clean and "falls to 0.55" in clean and "holds its AUC (0.93)" in clean
    assert "No CAM method concentrates outside the lungs" in clean  # 60 % outside, less than a uniform map's 70 %
    assert clean.endswith("Overall: no check points to cues outside the lungs.")
    inverted = S.verdict(0.95, {}, {"auc_full": 0.95, "auc_lungs_blanked": 0.14, "auc_outside_blanked": 0.33})
    assert "its AUC turns to 0.14 (full image 0.95), far below chance" in inverted
    assert inverted.endswith("Overall: 1 of 1 checks point to cues outside the lungs; read the AUC with that in mind.")
    weak = S.verdict(0.3, {"border": 0.7}, {"auc_full": 0.3, "auc_lungs_blanked": 0.8, "auc_outside_blanked": 0.4})
    assert "carries some class signal" in weak and "cannot tell which region" in weak
    assert weak.endswith("Overall: no check points to cues outside the lungs.")  # the weak model's blanking is not counted
    assert S.verdict(None, {}).startswith("No audit numbers")


def test_cam_outside_lungs_from_the_agreement_table():
    per_image = pd.DataFrame({"method": ["a", "a", "b"], "mass_in_lung": [0.8, np.nan, 0.2], "lung_area": [0.3, 0.5, 0.3]})
    out = S.cam_outside_lungs(per_image).set_index("method")
    assert out.loc["a", "outside_mean"] == pytest.approx(0.2) and out.loc["a", "uniform_outside"] == pytest.approx(0.7)
    assert out.loc["a", "n"] == 1 and out.loc["b", "outside_mean"] == pytest.approx(0.8)


def test_shortcut_audit_on_a_cache_folder(tmp_path):
    rng = np.random.default_rng(5)
    n = 40
    y = (np.arange(n) % 2).astype(float)
    x = _images(n, y, "border", 7)
    split = np.array(["train"] * 24 + ["test"] * 16)
    index = pd.DataFrame({"image_id": [f"syn:{k}" for k in range(n)], "patient_id": [f"syn:p{k}" for k in range(n)],
                          "source": np.where(y == 1, "covidsrc", "nih"), "view": "PA", "split": split,
                          "label_covid": y.astype(int).astype(str), "has_lung": "1", "has_disease": "0",
                          "orig_height": 1024, "orig_width": 1024, "cache_row": np.arange(n)})
    index.to_csv(tmp_path / "index.csv", index=False)
    np.save(tmp_path / "images.npy", x)
    np.save(tmp_path / "lung.npy", _lung(n).astype(np.uint8))
    np.save(tmp_path / "disease.npy", np.zeros((n, S64, S64), np.uint8))
    (tmp_path / "meta.json").write_text(json.dumps({"size": S64, "n": n}))
    test = split == "test"
    emb = rng.normal(size=(16, 4)) + 3 * y[test][:, None]
    audit = S.shortcut_audit(LungReader(), tmp_path, embeddings=emb, predictions=index[test].reset_index(drop=True))
    assert audit.floors["border"] > 0.9 and audit.floors["n_train"] == 24
    assert audit.blanking["n"] == 16 and audit.model_auc == audit.blanking["auc_full"]
    assert audit.probes.set_index("target").loc["source", "accuracy"] > 0.8
    assert "border-only floor reaches AUC" in audit.verdict


def test_linear_probe_groups_by_patient():
    rng = np.random.default_rng(2)
    target = np.array(["a", "b"] * 10)
    emb = rng.normal(size=(20, 3))
    emb[:, 0] += 4 * (target == "a")
    grouped = S.linear_probe(emb, target, groups=[f"p{i // 2}" for i in range(20)])  # 10 patients, 5 per class
    assert grouped["n_splits"] == 5 and grouped["accuracy"] > 0.9
    one_patient = S.linear_probe(emb, target, groups=np.where(target == "a", "pa", "pb"))
    assert math.isnan(one_patient["accuracy"]) and "single patient" in one_patient["note"]


def test_probes_see_thumbnails_and_source_as_in_cxr_public():
    """The real-data confound: healthy films are 64-px thumbnails of one collection, COVID-19 films
    large films of others. Thumbnails get their own resolution bucket (under the old <=1024 bucket
    they were lumped with 900-px COVID-19 films), and an embedding that encodes the original size
    is caught by both the source and the resolution probe."""
    rng = np.random.default_rng(3)
    n = 60
    thumb = np.arange(n) % 2 == 0  # 30 thumbnails (nih, 64 px), 30 large films (ieee8023, 300-1000 px)
    emb = rng.normal(size=(n, 5))
    emb[:, 2] += 5.0 * thumb
    side = np.where(thumb, 64, rng.integers(300, 1000, n))
    pred = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": [f"p{k // 2}" if not thumb[k] else f"q{k}" for k in range(n)],
                         "source": np.where(thumb, "nih", "ieee8023"), "view": "PA"})
    index = pd.DataFrame({"image_id": pred["image_id"], "orig_height": side, "orig_width": side})
    t = S.probe_table(emb, pred, index).set_index("target")
    assert t.loc["resolution", "n_classes"] == 2 and t.loc["resolution", "majority_rate"] == 0.5
    assert t.loc["resolution", "accuracy"] > 0.9 and t.loc["resolution", "auc"] > 0.95
    assert t.loc["source", "accuracy"] > 0.9
    old = S.resolution_bucket(index["orig_height"], index["orig_width"], edges=(1024, 2048))
    assert set(old) == {"<=1024"}  # the old buckets could not see this at all
    text = S.verdict(0.9, {}, None, t.reset_index())
    assert "The embedding predicts the resolution (accuracy" in text and "The embedding predicts the source (accuracy" in text


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
