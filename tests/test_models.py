"""Encoder, weights loading, SegNet decoder, heads, CMTNet and its ablation variants, registry."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cmtlib.models.cmtnet import CMTNet, validate_tasks
from cmtlib.configs import ALL_TASKS, ModelConfig
from cmtlib.models.encoder import IMAGENET_MEAN, IMAGENET_STD, ImageNetPreprocess, VGG16BNEncoder
from cmtlib.models.heads import ClassificationHead
from cmtlib.errors import ConfigError
from cmtlib.models.registry import MODELS, build_model, create_model
from cmtlib.models.segnet import SegNetDecoder, unpool2x2_mask
from cmtlib.models import weights as weights_mod
from cmtlib.models.weights import TORCHVISION_FILE, WeightsError, load_encoder_weights

TINY = dict(width=0.125, encoder_weights="none", head_hidden=16)
TABLE_V = [
    ("lung", "disease", "healthy", "multilabel"),
    ("lung", "multilabel"),
    ("disease", "multilabel"),
    ("lung", "disease", "multilabel"),
    ("lung", "healthy", "multilabel"),
    ("disease", "healthy", "multilabel"),
]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(tasks=ALL_TASKS, seed: int = 0) -> CMTNet:
    torch.manual_seed(seed)
    return CMTNet(tasks=tasks, **TINY)


# --- encoder -----------------------------------------------------------------------------------


def test_encoder_layer_structure_is_vgg16_bn():
    enc = VGG16BNEncoder(width=1.0)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 13 and len(bns) == 13
    assert [sum(isinstance(m, nn.Conv2d) for m in b) for b in enc.blocks] == [2, 2, 3, 3, 3]
    assert enc.out_channels == (64, 128, 256, 512, 512)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)


def test_encoder_width_scales_channels_with_a_floor():
    assert VGG16BNEncoder(width=0.25).out_channels == (16, 32, 64, 128, 128)
    assert VGG16BNEncoder(width=0.125).out_channels == (8, 16, 32, 64, 64)
    assert VGG16BNEncoder(width=0.01).out_channels == (8, 8, 8, 8, 8)
    with pytest.raises(ValueError, match="positive channel multiplier"):
        VGG16BNEncoder(width=0)


@pytest.mark.parametrize("hw", [(64, 64), (72, 88)])
def test_encoder_output_records_indices_sizes_and_stages(hw):
    enc = VGG16BNEncoder(width=0.125)
    out = enc(torch.randn(2, 3, *hw))
    h, w = hw
    pre = []
    for _ in range(5):
        pre.append((h, w))
        h, w = h // 2, w // 2  # pooling floors odd sizes
    assert [tuple(s) for s in out.sizes] == pre
    assert tuple(out.features.shape) == (2, 64, h, w)
    assert [tuple(s.shape) for s in out.stages] == [(2, c, *p) for c, p in zip(enc.out_channels, pre)]
    assert [tuple(i.shape) for i in out.indices] == [(2, c, p[0] // 2, p[1] // 2) for c, p in zip(enc.out_channels, pre)]
    assert all(i.dtype == torch.int64 for i in out.indices)


def test_torchvision_key_map_follows_features_indices():
    mapping = VGG16BNEncoder(width=1.0).torchvision_key_map()
    assert mapping["features.0"] == "blocks.0.0" and mapping["features.1"] == "blocks.0.1"
    assert mapping["features.7"] == "blocks.1.0"  # after ReLU 2, conv 3, BN 4, ReLU 5, pool 6
    assert mapping["features.41"] == "blocks.4.7"
    assert len(mapping) == 26  # 13 convs + 13 BNs


# --- weights -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_features() -> nn.Sequential:
    """torchvision's vgg16_bn (no download) with seeded, non-trivial weights and BN statistics."""
    torch.manual_seed(123)
    tv = torchvision.models.vgg16_bn(weights=None)
    with torch.no_grad():
        for m in tv.features:
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return tv.features.eval()


@pytest.fixture()
def tv_file(tmp_path, torchvision_features) -> Path:
    """A torchvision-style state_dict file: features.* plus a classifier key that must be ignored."""
    state = {f"features.{k}": v for k, v in torchvision_features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path / TORCHVISION_FILE
    torch.save(state, path)
    return path


def test_imagenet_file_name_matches_torchvision_url():
    url = torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.url
    assert url.rsplit("/", 1)[-1] == TORCHVISION_FILE


def _check_matches_torchvision(enc: VGG16BNEncoder, features: nn.Sequential) -> None:
    assert torch.equal(enc.blocks[0][0].weight, features[0].weight)
    assert torch.equal(enc.blocks[4][7].running_var, features[41].running_var)
    enc.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = enc(x)
        torch.testing.assert_close(ours.stages[0], features[:6](x), rtol=1e-4, atol=1e-4)
        ref = features(x)
        torch.testing.assert_close(ours.features, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_load_torchvision_state_dict_by_path(tv_file, torchvision_features):
    enc = VGG16BNEncoder(width=1.0)
    source = load_encoder_weights(enc, str(tv_file))
    assert source == f"state_dict ({tv_file})"
    assert int(enc.blocks[0][1].num_batches_tracked) == 7
    _check_matches_torchvision(enc, torchvision_features)


def test_imagenet_spec_reads_env_var(tv_file, torchvision_features, monkeypatch, tmp_path):
    monkeypatch.setenv("CMT_VGG16_BN_WEIGHTS", str(tv_file))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    enc = VGG16BNEncoder(width=1.0)
    assert load_encoder_weights(enc, "imagenet") == f"ImageNet (torchvision vgg16_bn, {tv_file})"
    _check_matches_torchvision(enc, torchvision_features)


def test_imagenet_spec_reads_torch_hub_cache(tv_file, monkeypatch, tmp_path, torchvision_features):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    tv_file.rename(hub / "checkpoints" / TORCHVISION_FILE)
    monkeypatch.delenv("CMT_VGG16_BN_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    enc = VGG16BNEncoder(width=1.0)
    assert "ImageNet" in load_encoder_weights(enc, "imagenet")
    assert torch.equal(enc.blocks[2][0].weight, torchvision_features[14].weight)


def test_official_file_without_num_batches_tracked_loads(tv_file, torchvision_features):
    state = {k: v for k, v in torch.load(tv_file, weights_only=True).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tv_file)
    enc = VGG16BNEncoder(width=1.0)
    load_encoder_weights(enc, str(tv_file))
    assert int(enc.blocks[0][1].num_batches_tracked) == 0
    assert torch.equal(enc.blocks[1][3].weight, torchvision_features[10].weight)


def test_missing_imagenet_weights_warn_and_keep_random_init(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CMT_VGG16_BN_WEIGHTS", str(tmp_path / "nowhere.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(0)
    enc = VGG16BNEncoder(width=1.0)
    before = enc.blocks[0][0].weight.clone()
    with caplog.at_level(logging.WARNING, logger="cmtlib"):
        source = load_encoder_weights(enc, "imagenet")
    assert source.startswith("random init (ImageNet weights not found in")
    assert str(tmp_path / "nowhere.pth") in source
    assert torch.equal(enc.blocks[0][0].weight, before)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.name.startswith("cmtlib")
    assert "not found" in record.getMessage()
    assert str(tmp_path / "hub" / "checkpoints" / TORCHVISION_FILE) in record.getMessage()


def test_imagenet_with_narrow_width_warns(tv_file, monkeypatch, caplog):
    monkeypatch.setenv("CMT_VGG16_BN_WEIGHTS", str(tv_file))
    enc = VGG16BNEncoder(width=0.25)
    with caplog.at_level(logging.WARNING, logger="cmtlib"):
        source = load_encoder_weights(enc, "imagenet")
    assert source == "random init (ImageNet weights need width 1.0, got 0.25)"
    assert any("width 1.0" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_wrong_width_file_is_refused_with_reason(tv_file):
    with pytest.raises(WeightsError, match="shape mismatches.*blocks.0.0.weight"):
        load_encoder_weights(VGG16BNEncoder(width=0.25), str(tv_file))


def test_own_and_cmtnet_state_dicts_load(tmp_path):
    src = tiny(seed=3)
    torch.save(src.encoder.state_dict(), tmp_path / "enc.pt")
    torch.save(src.state_dict(), tmp_path / "model.pt")
    for name in ("enc.pt", "model.pt"):
        dst = VGG16BNEncoder(width=0.125)
        assert load_encoder_weights(dst, str(tmp_path / name)) == f"state_dict ({tmp_path / name})"
        for (k, a), b in zip(src.encoder.state_dict().items(), dst.state_dict().values()):
            assert torch.equal(a, b), k


def test_incomplete_or_bad_files_are_refused(tmp_path):
    enc = VGG16BNEncoder(width=0.125)
    state = enc.state_dict()
    del state["blocks.3.0.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="1 encoder tensors missing.*blocks.3.0.weight"):
        load_encoder_weights(enc, str(tmp_path / "partial.pt"))
    with pytest.raises(FileNotFoundError, match="neither 'imagenet', 'none'"):
        load_encoder_weights(enc, str(tmp_path / "absent.pt"))
    assert load_encoder_weights(enc, "none") == "random init (encoder_weights=none)"
    assert weights_mod.imagenet_candidates()[-1].name == TORCHVISION_FILE


# --- decoder and heads ---------------------------------------------------------------------------


def test_segnet_decoder_mirrors_encoder_channels():
    dec = SegNetDecoder((4, 8, 12, 16, 20), out_channels=1)
    convs = [m for m in dec.stages.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (20, 20), (20, 20), (20, 16),
        (16, 16), (16, 16), (16, 12),
        (12, 12), (12, 12), (12, 8),
        (8, 8), (8, 4),
        (4, 4), (4, 4),
    ]
    assert (dec.head.in_channels, dec.head.out_channels) == (4, 1)
    with pytest.raises(ValueError, match="stages"):
        SegNetDecoder((4, 8, 12))


def test_segnet_unpool_puts_values_back_at_argmax_positions():
    """Unpooling with the recorded indices and pre-pool size restores each window's maximum in place."""
    enc = VGG16BNEncoder(width=0.125)
    dec = SegNetDecoder(enc.out_channels)
    x = torch.randn(1, 8, 9, 11)
    pooled, idx = enc.pool(x)
    back = dec.unpool(pooled, idx, output_size=x.shape[-2:])  # (1, 8, 9, 11)
    assert back.shape == x.shape
    kept = back != 0
    assert torch.equal(back[kept], x[kept])
    assert int(kept.sum()) == 8 * 4 * 5


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_unpool_equals_max_unpool_forward_and_backward(channels_last, dtype):
    """The fusable mask unpool gives max_unpool2d's numbers and gradients, ties and layout included."""
    torch.manual_seed(0)
    a = torch.randn(2, 5, 8, 6).to(dtype)
    a[0, 0] = 0  # whole windows of equal values (as after a ReLU): the argmax index decides
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    pooled, idx = nn.MaxPool2d(2, 2, return_indices=True)(a)
    x1, x2 = pooled.detach().clone().requires_grad_(), pooled.detach().clone().requires_grad_()
    ref = nn.functional.max_unpool2d(x1, idx, 2, 2, output_size=a.shape[-2:])
    got = unpool2x2_mask(x2, idx, a.shape[-2:])
    assert torch.equal(got, ref)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    (got * g).sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    # Odd sizes fall back to max_unpool2d (the floored row and column come back as zeros).
    pooled, idx = nn.MaxPool2d(2, 2, return_indices=True)(torch.randn(1, 3, 9, 7))
    assert torch.equal(unpool2x2_mask(pooled, idx, (9, 7)), nn.functional.max_unpool2d(pooled, idx, 2, 2, output_size=(9, 7)))


def test_cmtnet_outputs_are_the_same_with_either_unpool():
    torch.manual_seed(0)
    model = CMTNet(**TINY).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for m in model.modules():
            if isinstance(m, SegNetDecoder):
                m.unpool_impl = "mask"
        got = model(x)
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def test_classification_head_is_three_linear_layers_returning_logits():
    head = ClassificationHead(64, 16, 2)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [(64, 16), (16, 16), (16, 2)]
    with torch.no_grad():
        head[4].bias.copy_(torch.tensor([-3.0, 5.0]))
        head[4].weight.zero_()
    torch.testing.assert_close(head(torch.randn(3, 64)), torch.tensor([[-3.0, 5.0]] * 3))


# --- CMTNet ------------------------------------------------------------------------------------


def test_table_v_subsets_are_valid_and_others_refused():
    for tasks in TABLE_V:
        assert validate_tasks(list(reversed(tasks))) == tasks
    assert validate_tasks("multilabel, lung") == ("lung", "multilabel")
    assert validate_tasks(["multilabel", "healthy"]) == ("healthy", "multilabel")  # the explanation study's control
    control = tiny(tasks=["healthy", "multilabel"])
    assert control.lung_decoder is None and control.disease_decoder is None and set(control(torch.rand(1, 3, 64, 64))) == {
        "healthy", "multilabel", "embedding"}
    for bad, msg in [
        (["lung", "disease", "healthy"], "keep 'multilabel'"),
        (["lung", "covid", "multilabel"], "unknown CMTNet task"),
        (["lung", "lung", "multilabel"], "repeat"),
    ]:
        with pytest.raises(ValueError, match=msg):
            validate_tasks(bad)


@pytest.mark.parametrize("tasks", TABLE_V)
def test_ablation_variant_has_exactly_its_keys_and_parameters(tasks):
    full = tiny()
    model = tiny(tasks)
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    heads = {"lung": "lung", "disease": "disease", "healthy": "healthy", "multilabel": "multilabel"}
    assert set(out) == {heads[t] for t in tasks} | {"embedding"}
    assert list(out) == list(model.output_keys)
    parts = {"lung": full.lung_decoder, "disease": full.disease_decoder, "healthy": full.healthy_head}
    absent = sum(n_params(m) for t, m in parts.items() if t not in tasks)
    assert n_params(model) == n_params(full) - absent
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"preprocess", "encoder", "multilabel_head"} | {
        {"lung": "lung_decoder", "disease": "disease_decoder", "healthy": "healthy_head"}[t] for t in tasks if t != "multilabel"
    }
    assert model.describe()["parameters"] == n_params(model)


def test_parameter_counts_of_paper_model():
    """Width 1.0: VGG16-BN's conv part (14,723,136 parameters, torchvision's features) + two mirrors."""
    torch.manual_seed(0)
    model = CMTNet(encoder_weights="none")
    assert n_params(model.encoder) == 14_723_136
    assert n_params(model.lung_decoder) == n_params(model.disease_decoder) == 14_757_505
    head = 512 * 256 + 256 + 256 * 256 + 256 + 256 * 2 + 2
    assert n_params(model.healthy_head) == n_params(model.multilabel_head) == head
    assert n_params(model) == 14_723_136 + 2 * 14_757_505 + 2 * head == 44_633_414


def test_preprocessing_normalises_and_accepts_grayscale():
    pre = ImageNetPreprocess()
    mean_img = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    torch.testing.assert_close(pre(mean_img), torch.zeros(2, 3, 4, 4))
    ones = pre(torch.ones(1, 3, 2, 2))[0, :, 0, 0]
    torch.testing.assert_close(ones, torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]))
    model = tiny().eval()
    gray = torch.rand(2, 1, 64, 64)
    a, b = model(gray), model(gray.repeat(1, 3, 1, 1))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*got \(3, 64, 64\)"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(TypeError, match="divide uint8 images by 255"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_forward_features_and_classify_match_forward():
    model = tiny().eval()
    x = torch.rand(2, 3, 72, 88)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x).features
        from_features = model.classify(feats)
        from_embedding = model.classify(out["embedding"])
    assert set(from_features) == {"embedding", "healthy", "multilabel"}
    for k in from_features:
        torch.testing.assert_close(from_features[k], out[k])
        torch.testing.assert_close(from_embedding[k], out[k])
    torch.testing.assert_close(out["embedding"], feats.mean(dim=(2, 3)))


def test_describe_is_plain_data_that_rebuilds_the_model(tmp_path):
    model = tiny(("disease", "healthy", "multilabel"))
    d = model.describe()
    assert d["name"] == "cmtnet" and d["tasks"] == ["disease", "healthy", "multilabel"]
    assert d["width"] == 0.125 and d["embedding_dim"] == 64 and d["encoder_channels"] == [8, 16, 32, 64, 64]
    assert d["encoder_weights_source"] == "random init (encoder_weights=none)"
    assert d["preprocessing"]["mean"] == list(IMAGENET_MEAN) and d["preprocessing"]["std"] == list(IMAGENET_STD)
    assert d["class_names"] == {"healthy": ["unhealthy", "healthy"], "multilabel": ["COVID-19", "other disease"]}
    torch.save({"describe": d, "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    rebuilt = create_model(ckpt["describe"]["name"], **ckpt["describe"]["config"])
    rebuilt.load_state_dict(ckpt["state_dict"])
    x = torch.rand(1, 3, 64, 64)
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x)["multilabel"], model(x)["multilabel"])


def test_channels_last_and_bf16_autocast():
    model = tiny().eval()
    x = torch.rand(2, 3, 72, 88)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        for k in ref:
            torch.testing.assert_close(cl[k], ref[k], rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x)
    assert bf["multilabel"].dtype == torch.bfloat16
    for k in ref:
        assert bf[k].shape == ref[k].shape and torch.isfinite(bf[k].float()).all()
    # bf16 keeps ~3 significant digits; logits of a random net stay well inside this band.
    assert (bf["lung"].float() - ref["lung"]).abs().mean() < 0.05 * ref["lung"].abs().mean() + 0.05


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    model = tiny().eval()
    x = torch.rand(2, 3, 72, 88)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        a, b = model(x), compiled(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)


# --- registry ----------------------------------------------------------------------------------


def test_registry_unknown_name_lists_valid_ones_and_is_not_mutated():
    before = dict(MODELS)
    with pytest.raises(KeyError, match="unknown model 'cmtnett'; registered models: .*cmtnet"):
        create_model("cmtnett")
    model = create_model("cmtnet", tasks=["lung", "multilabel"], **TINY)
    assert isinstance(model, CMTNet) and model.tasks == ("lung", "multilabel")
    assert MODELS == before and MODELS["cmtnet"] is CMTNet


def test_build_model_passes_every_config_field():
    model = build_model(ModelConfig(model="cmtnet", tasks=["disease", "multilabel"], width=0.125, encoder_weights="none", head_hidden=8))
    assert model.config() == {"tasks": ["disease", "multilabel"], "width": 0.125, "encoder_weights": "none", "head_hidden": 8,
                              "effective_px": 0, "lung_focus": False}
    assert model.multilabel_head[0].out_features == 8
    with pytest.raises(TypeError):
        create_model("cmtnet", widht=0.5)


@pytest.mark.parametrize("name, switches", [("cmtnet", {"effective_px": 32, "lung_focus": True}), ("resnet18", {"effective_px": 32}),
                                            ("unet", {"effective_px": 24})])
def test_a_model_rebuilds_with_its_switches_from_its_own_config(name, switches):
    """create_model(name, **model.config()) rebuilds the architecture, switches included: the switches are
    constructor arguments, not attributes set after construction."""
    model = build_model(ModelConfig(model=name, width=0.125, encoder_weights="none", head_hidden=8, **switches))
    again = create_model(name, **model.config())
    assert again.config() == model.config() and {k: again.config()[k] for k in switches} == switches
    assert again.describe()["preprocessing"].get("effective_px") == switches["effective_px"]
    assert getattr(again, "lung_focus", False) == switches.get("lung_focus", False)


def test_a_switch_a_model_does_not_declare_is_refused_when_on():
    from cmtlib.models.registry import undeclared_switches

    with pytest.raises(ConfigError, match="lung_focus is not a switch of resnet18; models that take it: cmtnet"):
        build_model(ModelConfig(model="resnet18", width=0.125, encoder_weights="none", head_hidden=8, lung_focus=True))
    assert undeclared_switches("resnet18") == {"lung_focus": False} and undeclared_switches("cmtnet") == {}
    with pytest.raises(ConfigError, match="lung_focus needs the network's own lung outline"):
        build_model(ModelConfig(model="cmtnet", tasks=["disease", "multilabel"], width=0.125, encoder_weights="none", lung_focus=True))


def test_effective_px_harmonises_resolution_inside_the_model():
    """ModelConfig.effective_px: the model sees every film reduced to that side and enlarged back, so a
    sharp film and its blurred copy look alike to it; the setting travels in the model itself."""
    from cmtlib.models.encoder import ImageNetPreprocess

    sharp = torch.zeros(1, 1, 64, 64)
    sharp[..., ::2, :] = 1.0  # a one-pixel stripe pattern: pure fine detail
    blurred = torch.full_like(sharp, 0.5)
    pre = ImageNetPreprocess(effective_px=16)
    assert torch.allclose(pre(sharp), pre(blurred), atol=1e-5)  # the detail a 16-px film cannot hold is gone
    assert torch.equal(ImageNetPreprocess(effective_px=64)(sharp), ImageNetPreprocess()(sharp))  # no-op at its own size
    model = build_model(ModelConfig(model="cmtnet", width=0.0625, encoder_weights="none", head_hidden=8, effective_px=32))
    assert model.preprocess.effective_px == 32 and model.describe()["preprocessing"]["effective_px"] == 32
    assert build_model(ModelConfig(model="cmtnet", width=0.0625, encoder_weights="none", head_hidden=8)).preprocess.effective_px == 0


def test_lung_focus_classifies_only_the_networks_own_lung_region():
    """With lung_focus, the heads see the film with everything outside the network's own lung outline
    painted over: changing pixels outside the outline changes no COVID-19 score; inside, it does."""
    from cmtlib.models.cmtnet import focus_on_lungs

    torch.manual_seed(0)
    model = build_model(ModelConfig(model="cmtnet", width=0.0625, encoder_weights="none", head_hidden=8, lung_focus=True)).eval()
    x = torch.rand(2, 3, 64, 64)
    lung = torch.full((2, 1, 64, 64), -5.0)
    lung[:, :, 16:48, 8:56] = 5.0  # the "network's" outline: a box
    focused = focus_on_lungs(x, lung)
    assert torch.allclose(focused[:, :, :16], torch.full_like(focused[:, :, :16], 0.5))  # outside: mid-grey
    inside = focused[:, :1, 16:48, 8:56]
    assert inside.mean().item() == pytest.approx(0.5, abs=0.02)  # normalised per film
    assert torch.equal(focus_on_lungs(x.clone().index_fill_(3, torch.arange(4), 1.0), lung), focused)  # outside edits vanish
    empty = focus_on_lungs(x, torch.full_like(lung, -5.0))
    assert not torch.allclose(empty, torch.full_like(empty, 0.5))  # no outline at all: the whole film is classified
    with torch.no_grad():
        out = model(x)
        heads = model.classify(model.forward_features(model.focus_input(x)).features)
    assert torch.allclose(out["multilabel"], heads["multilabel"], atol=1e-6)  # heads-only code sees what forward's heads see
    assert model.describe()["lung_focus"] is True
