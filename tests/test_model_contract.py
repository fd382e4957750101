"""DESIGN.md's Model contract, checked for every registered model (CMTNet and each baseline added later).

A model built from a tiny ModelConfig must return a dict of raw logits with the contract's keys and
shapes at any input size, give every trainable parameter a gradient, train with MultiTaskLoss and
describe itself in plain data that survives torch.load(weights_only=True).
"""

from __future__ import annotations

import pytest
import torch

from cmtlib.losses import MultiTaskLoss
from cmtlib.configs import ModelConfig
from cmtlib.models.registry import MODELS, build_model

NAMES = sorted(MODELS)
# Models that train with their own loss (``make_loss``: Mask R-CNN's needs instance targets). Their
# train-mode outputs feed that loss, so the contract is checked on their eval-mode outputs and their
# training in their own tests (tests/test_maskrcnn.py).
OWN_LOSS = {n for n in NAMES if callable(getattr(MODELS[n], "make_loss", None))}
CONTRACT_KEYS = {"lung", "disease", "healthy", "multilabel", "embedding"}
SEGMENTATION = ("lung", "disease")
B = 2


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(model=name, width=0.125, encoder_weights="none", head_hidden=16))
    return model.eval() if name in OWN_LOSS else model


def images(h: int, w: int, b: int = B) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(64, 64), (72, 88)])
def test_output_keys_and_shapes(name, hw):
    model = tiny(name)
    out = model(images(*hw))
    assert isinstance(out, dict)
    assert set(out) <= CONTRACT_KEYS, f"{name} returns keys outside the contract: {set(out) - CONTRACT_KEYS}"
    assert "embedding" in out and set(out) - {"embedding"}, f"{name} must return embedding and at least one task"
    for k in SEGMENTATION:
        if k in out:
            assert tuple(out[k].shape) == (B, 1, *hw), k
    for k in ("healthy", "multilabel"):
        if k in out:
            assert tuple(out[k].shape) == (B, 2), k
    emb = out["embedding"]
    assert emb.ndim == 2 and emb.shape[0] == B and emb.shape[1] >= 1
    for k, v in out.items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all(), k


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_logits_not_probabilities(name):
    # At initialisation a head's logits are nearly equal across images (batch norm), so one init puts
    # a whole column in [0, 1] about one time in four; probabilities stay there for every init.
    outside: dict[str, bool] = {}
    for seed in range(3):
        out = tiny(name, seed)(images(64, 64, b=4))
        for k, v in out.items():
            if k != "embedding":
                outside[k] = outside.get(k, False) or bool(((v < 0) | (v > 1)).any())
    for k, ok in outside.items():
        assert ok, f"{name}'s {k} lies in [0, 1] for three inits: return raw logits, not probabilities"
    if "healthy" in out:
        sums = out["healthy"].sum(dim=1)
        assert not torch.allclose(sums, torch.ones_like(sums)), f"{name}'s healthy looks softmax-ed"


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_trainable_parameter(name):
    if name in OWN_LOSS:
        pytest.skip(f"{name} trains with its own loss (its tests check the gradients)")
    model = tiny(name)
    out = model(images(72, 88))
    sum(v.float().square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: parameters outside the graph (unused in forward): {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_trains_with_multitask_loss(name):
    if name in OWN_LOSS:
        pytest.skip(f"{name} trains with its own loss (its tests train it)")
    model = tiny(name)
    x = images(64, 64)
    batch = {
        "lung": torch.ones(B, 1, 64, 64),
        "disease": torch.zeros(B, 1, 64, 64),
        "healthy": torch.tensor([1, 0]),
        "covid": torch.tensor([0.0, 1.0]),
        "other": torch.tensor([0.0, 0.0]),
        **{f"has_{t}": torch.ones(B, dtype=torch.bool) for t in ("lung", "disease", "healthy", "covid", "other")},
    }
    total, parts = MultiTaskLoss()(model(x), batch)
    assert torch.isfinite(total) and total.item() > 0
    assert parts and all(torch.isfinite(v) for v in parts.values())
    total.backward()


@pytest.mark.parametrize("name", NAMES)
def test_describe_is_plain_data(name, tmp_path):
    model = tiny(name)
    d = model.describe()
    assert d["name"] == name
    assert d["parameters"] == sum(p.numel() for p in model.parameters())
    assert set(d["outputs"]) <= CONTRACT_KEYS and "embedding" in d["outputs"]
    assert {"mean", "std", "input_range"} <= set(d["preprocessing"])
    assert isinstance(d["encoder_weights_source"], str) and d["encoder_weights_source"]
    torch.save({"describe": d, "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    back = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert back["describe"] == d
    model.eval()
    with torch.no_grad():
        out = model(images(64, 64))
    assert list(out) == list(d["outputs"])
