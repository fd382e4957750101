"""Heat maps against known truth: each measure on hand-made maps and models with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cmtlib.explain import faithfulness as F
from cmtlib.explain import map_truth as MT
from cmtlib.explain import reliance as R
from cmtlib.explain.truth import TruthFilms

S = 32


def films(n: int = 6, early: int = 2) -> TruthFilms:
    """n films of S x S: the lesion a 6 x 8 box at rows 20-26, cols 4-12 (its position moves by film)."""
    lesion = np.zeros((n, S, S), bool)
    for i in range(n):
        lesion[i, 20:26, 4 + i:12 + i] = True
    lung = np.zeros((n, S, S), bool)
    lung[:, 4:28, 2:30] = True
    images = np.full((n, S, S), 60, np.uint8)
    images[lesion] = 200
    twins = np.full((n, S, S), 60, np.uint8)
    index = pd.DataFrame({"image_id": [f"f{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                          "offset_days": [1] * early + [8] * (n - early), "early": [True] * early + [False] * (n - early),
                          "lesion_area": lesion.mean(axis=(1, 2)), "severity": 0.5, "source": "s", "view": "PA", "split": "test"})
    return TruthFilms(images, twins, lesion, lung, index)


def test_maps_are_scored_against_the_lesion_with_known_answers():
    f = films()
    on = f.lesion.astype(np.float32)  # exactly the lesion
    half = np.zeros((6, S, S), np.float32)
    half[:, :16] = 1.0
    half[:, 0, 0] = 2.0  # hottest point outside the lesion, mass spread over the top half (no lesion there)
    uniform = np.ones((6, S, S), np.float32)
    per = MT.score_maps({"on": on, "top": half, "flat": uniform}, f)
    on_rows, top_rows = per[per["map"] == "on"], per[per["map"] == "top"]
    assert (on_rows["pointing"] == 1).all() and np.allclose(on_rows["share"], 1) and np.allclose(on_rows["iou"], 1)
    assert np.allclose(on_rows["uniform"], 48 / S**2) and np.allclose(on_rows["ratio"], S**2 / 48)
    assert (top_rows["pointing"] == 0).all() and np.allclose(top_rows["share"], 0) and np.allclose(top_rows["iou"], 0)
    assert per.loc[per["map"] == "flat", "pointing"].isna().all()  # a flat map has no hottest point
    summary = MT.summarise(per, n_boot=50)
    assert MT.value(summary, "on", "pointing") == 1.0 and MT.value(summary, "top", "ratio") == 0.0
    assert summary.loc[(summary["map"] == "on") & (summary["group"] == "early"), "n"].iloc[0] == 2
    assert MT.shows_lesion(summary, "on") and not MT.shows_lesion(summary, "top")
    with pytest.raises(ValueError, match="shape"):
        MT.score_maps({"bad": on[:, :16]}, f)


def test_the_interval_is_over_patients_and_holds_the_mean():
    per = pd.DataFrame({"map": "m", "image_id": list("abcdef"), "patient_id": list("aabbcc"), "early": False,
                        "pointing": [1, 1, 0, 0, 1, 1.0], "share": 0.5, "uniform": 0.1, "ratio": 5.0, "iou": 0.2})
    row = MT.summarise(per, n_boot=200, measures=("pointing",)).query("group == 'all'").iloc[0]
    assert row["mean"] == pytest.approx(4 / 6) and row["ci_low"] <= row["mean"] <= row["ci_high"] and row["n"] == 6
    assert row["ci_low"] < 0.5 < row["ci_high"] or row["ci_high"] - row["ci_low"] > 0.2  # three patients: a wide interval


class BlobReader(nn.Module):
    """A classifier that reads the mean brightness inside rows 16-32 (where the lesions are): its COVID-19
    logit rises with it. Exposes forward_features / classify like the registry's models."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(40.0))

    def forward_features(self, x):
        return SimpleNamespace(features=x[:, :1])  # the registry's models return an EncoderOutput

    def classify(self, features):
        region = features[:, :, 16:, :].mean(dim=(1, 2, 3))
        logit = self.scale * (region - 0.3)
        return {"multilabel": torch.stack([logit, -logit], dim=1), "embedding": features.mean(dim=(2, 3))}

    def forward(self, x):
        return self.classify(self.forward_features(x).features)


def test_reliance_is_the_drop_from_the_film_to_its_twin():
    f = films()
    per = R.reliance(BlobReader(), f)
    assert (per["p_film"] > per["p_twin"]).all() and np.allclose(per["drop"], per["p_film"] - per["p_twin"])
    summary = R.reliance_summary(per, n_boot=50)
    assert summary["later"]["n"] == 4 and summary["later"]["median"] == pytest.approx(np.median(per["drop"][2:]))
    same = TruthFilms(f.images, f.images, f.lesion, f.lung, f.index)  # a "twin" that still has the lesion: nothing read
    blind = R.reliance_summary(R.reliance(BlobReader(), same), n_boot=20)
    assert blind["not_read"] == list(f.index["image_id"]) and not blind["reads_lesion"]


def test_road_ranks_a_map_of_what_the_model_reads_above_random_and_above_a_wrong_map():
    f = films(8, early=0)
    rng = np.random.default_rng(0)
    images = np.clip(f.images.astype(float) + rng.normal(0, 20, f.images.shape), 0, 255).astype(np.uint8)
    right = np.zeros((8, S, S), np.float32)
    right[:, 16:] = 1.0
    right += f.lesion  # the lesion first, then the rest of the region the model reads
    wrong = 1.0 - right / 2
    model = BlobReader()
    per = F.faithfulness(model, images, {"right": right, "wrong": wrong}, f.patients, seed=0)
    summary = F.faithfulness_summary(per, n_boot=100).set_index("map")
    assert summary.loc["right", "faithful"] and summary.loc["right", "gain"] > 0
    assert not summary.loc["wrong", "faithful"] and summary.loc["wrong", "gain"] < 0
    again = F.faithfulness(model, images, {"right": right, "wrong": wrong}, f.patients, seed=0)
    assert np.array_equal(per["road"], again["road"])  # the imputation's noise is seeded


def test_randomisation_catches_a_map_that_ignores_the_weights():
    from cmtlib.explain.cam import compute_cams
    from cmtlib.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("cmtnet", width=0.0625, encoder_weights="none", head_hidden=8).eval()
    images = np.random.default_rng(1).integers(0, 255, (4, 64, 64)).astype(np.uint8)

    def edges(m, x):  # a "map" that is the image's own edges: the same whatever the weights
        a = np.asarray(x, float)
        return np.abs(np.diff(a, axis=1, prepend=a[:, :1]))

    table = F.randomisation_check(model, images, edges, seed=0)
    assert list(table["randomised"].str.split().str[0]) == ["heads"] * len(table)
    assert table["randomised"].iloc[-1].endswith("+ block 1") and len(table) == 6
    assert np.allclose(table["median_spearman"], 1.0) and not F.passes_randomisation(table)

    def gradcam(m, x):
        return compute_cams(m, x, ("gradcam",), layer="block4")["gradcam"]

    learned = F.randomisation_check(model, images, gradcam, seed=0)
    assert learned["median_spearman"].iloc[-1] < 0.9  # the map follows the weights: it changes once they are random
    assert F.passes_randomisation(learned) == (learned["median_spearman"].iloc[-1] < F.RANDOMISATION_BAR)


def test_named_cam_layers_and_the_fused_map():
    from cmtlib.errors import UnknownNameError
    from cmtlib.explain.cam import cam_layers, compute_cams
    from cmtlib.models.registry import create_model

    model = create_model("cmtnet", width=0.0625, encoder_weights="none", head_hidden=8).eval()
    blocks = model.encoder.blocks
    assert cam_layers(model) == [blocks[-1]] and cam_layers(model, "block3") == [blocks[2]]
    assert cam_layers(model, "fused") == [blocks[2], blocks[3]]
    with pytest.raises(UnknownNameError, match="no CAM layer 'block9'; valid: last, block1"):
        cam_layers(model, "block9")
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64)).astype(np.uint8)
    fused = compute_cams(model, images, ("layercam",), layer="fused")["layercam"]
    assert fused.shape == (2, 64, 64) and fused.min() >= 0 and fused.max() <= 1
    # `fused` is the geometric mean of the method's maps at the two blocks before the last, renormalised.
    b3, b4 = (compute_cams(model, images, ("layercam",), layer=name)["layercam"] for name in ("block3", "block4"))
    expected = np.sqrt(b3 * b4)
    lo, hi = expected.min(axis=(1, 2), keepdims=True), expected.max(axis=(1, 2), keepdims=True)
    assert np.allclose(fused, (expected - lo) / (hi - lo), atol=1e-5)
