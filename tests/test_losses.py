"""MultiTaskLoss: golden values, per-sample switches, gradients, weights, absent tasks, bf16."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmtlib.configs import TrainConfig
from cmtlib.losses import TERMS, MultiTaskLoss
from cmtlib.models.cmtnet import CMTNet


def bce(x, y):
    """Binary cross-entropy with logits, numpy: log(1 + e^x) - x y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return np.log1p(np.exp(x)) - x * y


def golden():
    """Two images, 2x2 masks; each term's switches chosen so the expected values are easy to follow."""
    outputs = {
        "lung": torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]], [[[3.0, -2.0], [0.5, 0.0]]]]),
        "disease": torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[-2.0, 0.0], [0.0, 4.0]]]]),
        "healthy": torch.tensor([[1.0, 2.0], [0.5, 1.5]]),
        "multilabel": torch.tensor([[2.0, -1.0], [0.0, 1.0]]),
        "embedding": torch.zeros(2, 4),
    }
    batch = {
        "lung": torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [0.0, 0.0]]]]),
        "disease": torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]]),
        "healthy": torch.tensor([1, 0]),
        "covid": torch.tensor([1.0, 0.0]),
        "other": torch.tensor([0.0, 1.0]),
        "has_lung": torch.tensor([True, False]),
        "has_disease": torch.tensor([True, True]),
        "has_healthy": torch.tensor([True, True]),
        "has_covid": torch.tensor([False, True]),
        "has_other": torch.tensor([True, True]),
    }
    return outputs, batch


def expected_parts() -> dict[str, float]:
    o, b = golden()
    lung = bce(o["lung"][0], b["lung"][0]).mean()  # only image 0 has a lung mask
    disease = np.mean([bce(o["disease"][i], b["disease"][i]).mean() for i in range(2)])
    h = o["healthy"].numpy()
    ce = [np.log(np.exp(h[i]).sum()) - h[i, t] for i, t in enumerate([1, 0])]
    return {
        "lung": float(lung),
        "disease": float(disease),
        "healthy": float(np.mean(ce)),
        "covid": float(bce(0.0, 0.0)),  # only image 1: logit 0, target 0
        "other": float(np.mean([bce(-1.0, 0.0), bce(1.0, 1.0)])),
    }


def test_golden_values():
    exp = expected_parts()
    # The same numbers by hand: log 2, log(1+e^2), log(1+e^-1), log(1+e)-1 ...
    assert exp["lung"] == pytest.approx((math.log(2) + math.log1p(math.e**2) + 2 * math.log1p(math.e**-1)) / 4)
    assert exp["lung"] == pytest.approx(0.861650, abs=1e-6)
    assert exp["healthy"] == pytest.approx((0.313262 + 1.313262) / 2, abs=1e-6)
    assert exp["covid"] == pytest.approx(math.log(2))
    assert exp["other"] == pytest.approx(0.313262, abs=1e-6)
    total, parts = MultiTaskLoss()(*golden())
    assert set(parts) == set(TERMS)
    for term in TERMS:
        assert parts[term].item() == pytest.approx(exp[term], rel=1e-6), term
        assert parts[term].dtype == torch.float32 and parts[term].ndim == 0 and not parts[term].requires_grad
    assert total.item() == pytest.approx(sum(exp.values()), rel=1e-6)


def test_weights_scale_the_terms():
    exp = expected_parts()
    weights = {"w_lung": 2.0, "w_disease": 0.0, "w_healthy": 0.5, "w_covid": 3.0, "w_other": 1.0}
    total, parts = MultiTaskLoss(**weights)(*golden())
    assert total.item() == pytest.approx(sum(weights[f"w_{t}"] * exp[t] for t in TERMS), rel=1e-6)
    assert parts["disease"].item() == pytest.approx(exp["disease"], rel=1e-6)  # parts are unweighted
    loss = MultiTaskLoss.from_config(TrainConfig(w_covid=3.0, w_lung=0.25))
    assert loss.weights == {"lung": 0.25, "disease": 1.0, "healthy": 1.0, "covid": 3.0, "other": 1.0}
    with pytest.raises(ValueError, match="w_other must be a number >= 0"):
        MultiTaskLoss(w_other=-1)


def test_switched_off_sample_gives_no_gradient_through_its_logits():
    outputs, batch = golden()
    for v in outputs.values():
        v.requires_grad_(True)
    total, _ = MultiTaskLoss()(outputs, batch)
    total.backward()
    ml = outputs["multilabel"].grad
    assert ml[0, 0].item() == 0.0  # image 0 has no COVID label
    assert ml[1, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(0.0)).item() - 0.0)  # (p - y) / 1 labelled
    assert torch.count_nonzero(outputs["lung"].grad[1]) == 0  # image 1 has no lung mask
    assert torch.count_nonzero(outputs["lung"].grad[0]) == 4
    # d(mean over 4 pixels)/dx = (sigmoid(x) - y) / 4
    exp = (torch.sigmoid(outputs["lung"][0].detach()) - batch["lung"][0]) / 4
    torch.testing.assert_close(outputs["lung"].grad[0], exp)


def test_nan_in_switched_off_targets_does_not_leak():
    outputs, batch = golden()
    batch["lung"][1] = float("nan")
    batch["covid"][0] = float("nan")
    outputs["lung"].requires_grad_(True)
    total, parts = MultiTaskLoss()(outputs, batch)
    total.backward()
    assert parts["lung"].item() == pytest.approx(expected_parts()["lung"], rel=1e-6)
    assert torch.isfinite(total) and torch.isfinite(outputs["lung"].grad).all()


def test_all_switches_off_gives_zero_loss_and_zero_gradients():
    outputs, batch = golden()
    for k in list(batch):
        if k.startswith("has_"):
            batch[k] = torch.zeros(2, dtype=torch.bool)
    for v in outputs.values():
        v.requires_grad_(True)
    total, parts = MultiTaskLoss()(outputs, batch)
    total.backward()
    assert total.item() == 0.0 and all(p.item() == 0.0 for p in parts.values())
    for k in ("lung", "disease", "healthy", "multilabel"):
        assert torch.count_nonzero(outputs[k].grad) == 0 and torch.isfinite(outputs[k].grad).all()


def test_absent_outputs_are_skipped():
    outputs, batch = golden()
    del outputs["disease"], outputs["healthy"]
    exp = expected_parts()
    total, parts = MultiTaskLoss()(outputs, batch)
    assert set(parts) == {"lung", "covid", "other"}
    assert total.item() == pytest.approx(exp["lung"] + exp["covid"] + exp["other"], rel=1e-6)
    with pytest.raises(ValueError, match="outputs hold none of"):
        MultiTaskLoss()({"embedding": torch.zeros(2, 4)}, batch)


def test_bad_batches_are_refused_with_reasons():
    outputs, batch = golden()
    del batch["has_lung"]
    with pytest.raises(KeyError, match="batch lacks 'has_lung'.*CONTRACTS"):
        MultiTaskLoss()(outputs, batch)
    outputs, batch = golden()
    batch["lung"] = batch["lung"][:, 0]  # (B, H, W): missing the channel axis
    with pytest.raises(ValueError, match=r"batch\['lung'\] has shape \(2, 2, 2\).*\(B, 1, H, W\)"):
        MultiTaskLoss()(outputs, batch)
    outputs, batch = golden()
    batch["covid"] = batch["covid"][:, None]
    with pytest.raises(ValueError, match=r"batch\['covid'\] must have shape \(2,\)"):
        MultiTaskLoss()(outputs, batch)


def test_bf16_logits_give_float32_losses():
    outputs, batch = golden()
    bf = {k: v.to(torch.bfloat16) for k, v in outputs.items()}
    total, parts = MultiTaskLoss()(bf, batch)
    ref_total, ref_parts = MultiTaskLoss()({k: v.float() for k, v in bf.items()}, batch)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-6)  # the golden logits are exact in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto_total, _ = MultiTaskLoss()(outputs, batch)
    assert auto_total.dtype == torch.float32
    assert auto_total.item() == pytest.approx(sum(expected_parts().values()), rel=1e-6)


def _tiny_batch(b: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    on = torch.ones(b, dtype=torch.bool)
    return {
        "image": torch.rand(b, 3, size, size, generator=g),
        "lung": (torch.rand(b, 1, size, size, generator=g) > 0.5).float(),
        "disease": (torch.rand(b, 1, size, size, generator=g) > 0.8).float(),
        "healthy": torch.tensor([1, 0]),
        "covid": torch.tensor([0.0, 1.0]),
        "other": torch.tensor([0.0, 0.0]),
        "has_lung": on.clone(), "has_disease": on.clone(), "has_healthy": on.clone(),
        "has_covid": on.clone(), "has_other": on.clone(),
    }


def test_switched_off_task_sends_no_gradient_to_its_decoder():
    torch.manual_seed(0)
    model = CMTNet(width=0.125, encoder_weights="none", head_hidden=16)
    batch = _tiny_batch()
    batch["has_disease"][:] = False
    batch["has_healthy"][:] = False
    total, parts = MultiTaskLoss()(model(batch["image"]), batch)
    total.backward()
    assert parts["disease"].item() == 0.0 and parts["healthy"].item() == 0.0
    for p in list(model.disease_decoder.parameters()) + list(model.healthy_head.parameters()):
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.lung_decoder.parameters() if p.ndim > 1)
    assert torch.count_nonzero(model.encoder.blocks[0][0].weight.grad) > 0
