"""Mask R-CNN adapter: contract outputs in eval mode, instance targets from masks, its own loss
(train mode), and training through the unchanged engine loop (`fit`) with `loss_for`."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cmtlib.data.loader import EvalBatches, TrainBatches, load_split, open_cache_folder
from cmtlib.configs import TrainConfig
from cmtlib.engine import fit
from cmtlib.losses import MultiTaskLoss
from cmtlib.models.losses_for import loss_for
from cmtlib.models.maskrcnn import FPN_PREFIX, LOSS_TERMS, PROB_EPS, MaskRCNNLoss, connected_components, instance_targets
from cmtlib.models.registry import create_model
from test_loader import write_toy_cache

B = 2
LOW, HIGH = math.log(PROB_EPS / (1 - PROB_EPS)), math.log((1 - PROB_EPS) / PROB_EPS)


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("maskrcnn", **{"tasks": ["lung", "disease"], "width": 0.125, "encoder_weights": "none", **kw})


def mask_batch(size: int = 64, has_lung=(True, True), has_disease=(True, True)) -> dict[str, torch.Tensor]:
    """Image 0: two lung rectangles and one lesion; image 1: two lungs, no lesion (known empty)."""
    lung = torch.zeros(B, 1, size, size)
    lung[:, :, 10:50, 8:28] = 1
    lung[:, :, 12:52, 36:56] = 1
    disease = torch.zeros(B, 1, size, size)
    disease[0, :, 30:40, 12:20] = 1
    return {"image": torch.rand(B, 3, size, size, generator=torch.Generator().manual_seed(1)), "lung": lung, "disease": disease,
            "has_lung": torch.tensor(has_lung), "has_disease": torch.tensor(has_disease)}


@pytest.mark.parametrize("hw", [(64, 64), (72, 88)])
def test_eval_outputs_follow_the_contract(hw):
    model = tiny().eval()
    with torch.no_grad():
        out = model(torch.rand(B, 3, *hw))
    assert list(out) == ["lung", "disease", "embedding"] == model.describe()["outputs"]
    for k in ("lung", "disease"):
        assert tuple(out[k].shape) == (B, 1, *hw) and out[k].dtype == torch.float32
        assert (out[k] >= LOW - 1e-3).all() and (out[k] <= HIGH + 1e-3).all()
    assert tuple(out["embedding"].shape) == (B, 512)  # ResNet18's C5


class FixedDetections(nn.Module):
    """Stands in for the ROI heads: fixed detections whose masks are all ones."""

    def __init__(self, dets):
        super().__init__()
        self.dets = dets

    def forward(self, features, proposals, image_shapes, targets=None):
        return [{**d, "masks": torch.ones(len(d["boxes"]), 1, 28, 28)} for d in self.dets], {}


def test_maps_take_the_max_of_score_times_mask_per_class():
    model = tiny().eval()
    boxes = torch.tensor([[8.0, 10.0, 28.0, 50.0], [16.0, 20.0, 24.0, 30.0], [36.0, 10.0, 56.0, 50.0]])
    dets = [{"boxes": boxes, "labels": torch.tensor([1, 1, 2]), "scores": torch.tensor([0.6, 0.9, 0.7])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}]
    model.detector.roi_heads = FixedDetections(dets)
    with torch.no_grad():
        out = model(torch.rand(B, 3, 64, 64))
    p_lung, p_dis = torch.sigmoid(out["lung"][0, 0]), torch.sigmoid(out["disease"][0, 0])
    assert p_lung[25, 20] == pytest.approx(0.9, abs=1e-4)  # inside both lung boxes: the larger score
    assert p_lung[45, 12] == pytest.approx(0.6, abs=1e-4)  # inside the first only
    assert p_lung[5, 5] == pytest.approx(PROB_EPS, rel=1e-3)  # outside every box
    assert p_dis[30, 45] == pytest.approx(0.7, abs=1e-4) and p_dis[30, 18] == pytest.approx(PROB_EPS, rel=1e-3)
    assert torch.allclose(out["lung"][1], torch.full_like(out["lung"][1], LOW), atol=1e-3)  # no detections


def test_connected_components_are_8_connected():
    m = torch.tensor([[1, 1, 0, 0, 0],
                      [0, 0, 1, 0, 1],
                      [0, 0, 0, 0, 1],
                      [1, 0, 0, 0, 0]], dtype=torch.bool)
    lab = connected_components(m[None])[0]
    assert (lab[~m] == 0).all() and (lab[m] > 0).all()
    assert lab[0, 0] == lab[0, 1] == lab[1, 2]  # diagonal neighbours join
    assert lab[1, 4] == lab[2, 4] and len({lab[0, 0].item(), lab[1, 4].item(), lab[3, 0].item()}) == 3


def test_targets_are_one_instance_per_component():
    targets, keep = instance_targets(mask_batch(), {"lung": 1, "disease": 2})
    assert keep.tolist() == [0, 1]
    t0, t1 = targets
    assert t0["boxes"].tolist() == [[8.0, 10.0, 28.0, 50.0], [36.0, 12.0, 56.0, 52.0], [12.0, 30.0, 20.0, 40.0]]  # pixel edges
    assert t0["labels"].tolist() == [1, 1, 2] and t0["masks"].dtype == torch.uint8
    assert t0["masks"].shape == (3, 64, 64) and t0["masks"].flatten(1).sum(1).tolist() == [800, 800, 80]
    assert t1["labels"].tolist() == [1, 1] and t1["boxes"].dtype == torch.float32  # the empty disease mask adds nothing


def test_images_without_known_masks_are_not_targets():
    labels = {"lung": 1, "disease": 2}
    _, keep = instance_targets(mask_batch(has_lung=(False, True), has_disease=(False, True)), labels)
    assert keep.tolist() == [1]
    # By default an unknown disease mask drops the image (a detector reads unannotated regions as background).
    _, keep = instance_targets(mask_batch(has_disease=(False, True)), labels)
    assert keep.tolist() == [1]
    targets, keep = instance_targets(mask_batch(has_disease=(False, True)), labels, require_all_masks=False)
    assert keep.tolist() == [0, 1] and targets[0]["labels"].tolist() == [1, 1]
    batch = mask_batch()
    batch["disease"][0, :, 0, 0] = 1  # a 1-pixel speck is below min_area
    assert instance_targets(batch, labels)[0][0]["labels"].tolist() == [1, 1, 2]


def test_train_mode_loss_is_finite_and_reaches_every_parameter():
    model = tiny().train()
    batch = mask_batch()
    out = model(batch["image"])
    assert set(out) == {"embedding"} | {f"{FPN_PREFIX}{k}" for k in ("0", "1", "2", "3", "pool")}
    total, parts = loss_for(model, TrainConfig())(out, batch)
    assert total.ndim == 0 and torch.isfinite(total) and total.item() > 0
    assert list(parts) == list(LOSS_TERMS) and all(torch.isfinite(v) for v in parts.values())
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-5)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_images_without_masks_contribute_nothing():
    model = tiny().train()
    for m in model.modules():  # batch statistics would couple the images; hold them fixed
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    loss_fn = model.make_loss()
    both = mask_batch(has_lung=(True, False), has_disease=(True, False))
    alone = {k: v[:1] for k, v in both.items()}
    x = both["image"].clone().requires_grad_(True)
    torch.manual_seed(5)
    total_both, _ = loss_fn(model(x), both)
    torch.manual_seed(5)
    total_alone, _ = loss_fn(model(alone["image"]), alone)
    assert total_both.item() == pytest.approx(total_alone.item(), rel=1e-5)
    total_both.backward()
    assert x.grad[1].abs().max() == 0 and x.grad[0].abs().max() > 0


def test_a_batch_without_masks_gives_zero_and_still_backpropagates():
    model = tiny().train()
    batch = mask_batch(has_lung=(False, False), has_disease=(False, False))
    total, parts = model.make_loss()(model(batch["image"]), batch)
    assert total.item() == 0 and total.requires_grad and list(parts) == list(LOSS_TERMS)
    total.backward()


def test_eval_mode_loss_is_the_segmentation_bce():
    model = tiny().eval()
    batch = mask_batch()
    with torch.no_grad():
        out = model(batch["image"])
    total, parts = model.make_loss()(out, batch)
    ref_total, ref_parts = MultiTaskLoss()(out, batch)
    assert set(parts) == {"lung", "disease"} and total.item() == pytest.approx(ref_total.item())
    with pytest.raises(RuntimeError, match="train mode"):
        model.detector_losses({}, [], torch.zeros(0, dtype=torch.long), (64, 64))


def test_loss_for_picks_each_models_loss():
    assert isinstance(loss_for(tiny()), MaskRCNNLoss)
    cfg = TrainConfig(w_lung=2.0)
    loss = loss_for(create_model("resnet18", encoder_weights="none"), cfg)
    assert isinstance(loss, MultiTaskLoss) and loss.w_lung == 2.0
    assert tiny().make_loss(cfg).seg_loss.w_lung == 2.0


def test_trains_through_the_engine_loop(tmp_path):
    cache = open_cache_folder(write_toy_cache(tmp_path / "cache", n=20, size=32))
    model = tiny()
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, rotate_deg=0, translate_px=0, covid_oversample=1.0, log_every=1)
    train = TrainBatches(load_split(cache, "train"), cfg.batch_size, seed=0, channels_last=cfg.channels_last)
    val = EvalBatches(load_split(cache, "val"), 4, channels_last=cfg.channels_last)
    history = fit(model, loss_for(model, cfg), train, val, cfg)
    row = history[0]
    assert all(math.isfinite(row[f"train_{t}"]) for t in LOSS_TERMS)
    assert math.isfinite(row["val_loss"]) and {"val_lung", "val_disease", "val_lung_dice"} <= set(row)
