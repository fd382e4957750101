"""Class activation maps (pytorch-grad-cam) for one head's logit, and their agreement with the masks.

The wrapper ``HeadLogits`` runs only what the explained head depends on, ``model.forward_features``
then ``model.classify``, so CAM methods never run (or differentiate through) segmentation decoders.
Any model, CMTNet or a baseline, can be explained if it exposes:

* ``forward_features(x)``: (B, 3, H, W) in [0, 1] -> the encoder's last feature map (B, C, h, w),
  or an object with a ``.features`` attribute holding it (CMTNet's ``EncoderOutput``);
* ``classify(features)``: -> a dict of head logits (``multilabel`` (B, 2), ``healthy`` (B, 2), ...);
* the CAM target layer, found in this order: ``model.cam_target_layer`` (a module, or a method
  returning one), else ``model.encoder.blocks[-1]`` (CMTNet's VGG16-BN: the last conv block's
  output, before its max-pool, H/16), else the last child of an ``nn.Sequential`` ``model.encoder``
  (a torchvision trunk such as ResNet's ``layer4``). Baselines should set ``cam_target_layer``.
  Named layers (``cam_layers``) reach the other blocks of a model with ``encoder.blocks``:
  ``block<k>`` (1-based; CMTNet's block k outputs H / 2^(k-1)), and ``fused``: the geometric mean
  of the method's maps at the two blocks before the last (H/4 and H/8 for CMTNet), so that a
  region is hot only where both resolutions agree (the heat-map study, docs/explanations.md, chose it:
  the last block's H/16 map is too coarse to point at a lesion, a single earlier block too noisy).

Agreement measures (per map and image; NaN where the ground truth is unknown or empty):
    mass_in_lung   share of the map's total inside the lung mask (1 = all of it);
    pointing_game  1 if the map's maximum lies inside the disease mask, else 0 (ties: a hit if
                   any maximal pixel is inside; a constant map has no maximum: NaN);
    iou_disease    IoU of (map >= 0.5) with the disease mask.
Every map is min-max normalised per image first (the model's own disease probability too, so all
methods are judged alike; its plain p >= 0.5 mask is already scored as disease IoU on page 3).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from cmtlib.errors import UnknownNameError
from cmtlib.inference import as_batch, image_batches, infer, model_device
from cmtlib.metrics import iou

# Method name -> pytorch_grad_cam class name (imported lazily: a bare GPU machine lacks grad-cam).
CAM_METHODS = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "eigencam": "EigenCAM", "layercam": "LayerCAM",
    "scorecam": "ScoreCAM", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
}
DEFAULT_METHODS = ("gradcam", "gradcam++", "eigencam", "layercam", "scorecam")
DISEASE_MAP = "model disease map"  # key of the model's own sigmoid(disease) map beside the CAMs
MEASURES = ("mass_in_lung", "pointing_game", "iou_disease")
IOU_THRESHOLD = 0.5


class HeadLogits(nn.Module):
    """``model.forward_features`` + ``model.classify``, returning one head's logits (no decoders).

    Args:
        model: a model exposing ``forward_features`` and ``classify`` (module docstring).
        head: the ``classify`` key to explain: ``multilabel`` (index 0 = COVID) or ``healthy``.

    Shape:
        x: (B, 3, H, W) float in [0, 1]; returns (B, K) raw logits of ``head``.
    """

    def __init__(self, model: nn.Module, head: str = "multilabel") -> None:
        super().__init__()
        missing = [m for m in ("forward_features", "classify") if not callable(getattr(model, m, None))]
        if missing:
            raise TypeError(
                f"{type(model).__name__} lacks {', '.join(missing)}: to be explained with CAMs a model exposes "
                "forward_features(x) -> encoder features and classify(features) -> dict of head logits "
                "(see cmtlib/explain/cam.py)")
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            # Activations then need a gradient even when the encoder's parameters are frozen.
            x = x.detach().requires_grad_(True)
        feats = self.model.forward_features(x)
        feats = getattr(feats, "features", feats)  # EncoderOutput or a plain (B, C, h, w) tensor
        out = self.model.classify(feats)
        if self.head not in out:
            raise KeyError(f"classify() returned {sorted(out)}; no {self.head!r} head to explain; pick one of those")
        return out[self.head]


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The module whose output CAM methods weight: the encoder's last conv block (module docstring)."""
    layer = getattr(model, "cam_target_layer", None)
    if layer is not None:
        layer = layer if isinstance(layer, nn.Module) else layer()
        if isinstance(layer, nn.Module):
            return layer
    encoder = getattr(model, "encoder", None)
    blocks = getattr(encoder, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks):
        return blocks[-1]
    if isinstance(encoder, nn.Sequential) and len(encoder):
        return encoder[-1]
    raise TypeError(
        f"cannot find the CAM target layer of {type(model).__name__}: give it a `cam_target_layer` attribute "
        "(the module whose output is the encoder's last conv block) or pass target_layer=")


FUSED_BLOCKS = (-3, -2)  # `fused`: the two encoder blocks before the last (H/4, H/8 for CMTNet's five)


def cam_layers(model: nn.Module, layer: str | nn.Module | Sequence[nn.Module] | None = None) -> list[nn.Module]:
    """The target layers a CAM weights: a module or modules as given; None or "last": the model's CAM
    target layer (``cam_target_layer``); "block<k>" (1-based) or "fused" for models with ``encoder.blocks``.

    Raises:
        UnknownNameError: a name this model has no layer for (the message lists what it has).
    """
    if isinstance(layer, nn.Module):
        return [layer]
    if layer is not None and not isinstance(layer, str):
        return list(layer)
    if layer in (None, "last"):
        return [cam_target_layer(model)]
    blocks = getattr(getattr(model, "encoder", None), "blocks", None)
    names = [f"block{k + 1}" for k in range(len(blocks))] if blocks is not None else []
    if layer == "fused" and len(names) >= len(FUSED_BLOCKS) + 1:
        return [blocks[k] for k in FUSED_BLOCKS]
    if layer in names:
        return [blocks[names.index(layer)]]
    valid = ["last"] + names + (["fused"] if len(names) >= len(FUSED_BLOCKS) + 1 else [])
    raise UnknownNameError(f"{type(model).__name__} has no CAM layer {layer!r}; valid: {', '.join(valid)}")


def normalise_maps(maps) -> np.ndarray:
    """Min-max normalise each map to [0, 1]; a constant map becomes all zeros.

    Shape:
        maps: (N, H, W) -> (N, H, W) float32.
    """
    m = np.asarray(maps, dtype=np.float32)
    lo = m.min(axis=(-2, -1), keepdims=True)
    span = m.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def compute_cams(model: nn.Module, images, methods: Sequence[str] = DEFAULT_METHODS, target_index: int = 0,
                 head: str = "multilabel", batch_size: int = 8, layer: str | nn.Module | Sequence[nn.Module] | None = None,
                 score_batch_size: int = 64) -> dict[str, np.ndarray]:
    """CAMs of one head's logit (default: COVID, ``multilabel`` index 0) for each method.

    ScoreCAM runs the encoder once per channel of the target layer for every image (C of them:
    128 at width 0.25), ``score_batch_size`` masked images per pass. On the project's 2-core CPU at
    width 0.25 and 128 px it took 4-7 s per image with the machine shared (load 6-8; about 3 s
    idle), against 0.1-0.6 s for the gradient methods and EigenCAM: keep N modest there. Its
    progress bars (tqdm) go to stderr; set TQDM_DISABLE=1 before the import to hide them. The model is put in eval mode and given back in its old mode;
    every hook is released (``with Method(...) as cam``) even on error.

    Args:
        model: exposes ``forward_features`` + ``classify`` (module docstring).
        images: see ``cmtlib.inference.as_batch``.
        methods: names in ``CAM_METHODS``.
        target_index: the logit of ``head`` to explain (multilabel: 0 = COVID, 1 = other disease).
        head: the ``classify`` key.
        batch_size: images per CAM call.
        layer: the target layer(s): a name for ``cam_layers`` ("last", "block3", "fused") or modules.
        score_batch_size: masked images per forward pass inside ScoreCAM.

    Returns:
        method -> (N, H, W) float32 maps in [0, 1] (min-max per image; all zeros where the CAM is flat).
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise UnknownNameError(f"unknown CAM method(s) {unknown}; valid: {', '.join(CAM_METHODS)}")
    wrapper = HeadLogits(model, head)
    device = next(model.parameters()).device
    x = as_batch(images, device)
    was_training = model.training
    if hasattr(model, "focus_input"):  # the heads of a lung-focus model look at the focused film: explain that
        with torch.no_grad():
            x = model.eval().focus_input(x)
    out: dict[str, np.ndarray] = {}
    try:
        if len(x):
            with torch.no_grad():
                wrapper.eval()(x[:1])  # a model without the head fails here, before any hook is placed
        layers = cam_layers(model, layer)
        # `fused`: one map per layer, combined here by their geometric mean (the library averages instead)
        groups = [[one] for one in layers] if layer == "fused" else [layers]
        targets = [ClassifierOutputTarget(target_index)]
        with torch.enable_grad():
            for name in methods:
                method = getattr(pytorch_grad_cam, CAM_METHODS[name])
                per_group = []
                for group in groups:
                    maps = []
                    # ScoreCAM draws a progress bar per batch on stderr: kept off pages and study logs
                    quiet = contextlib.redirect_stderr(io.StringIO()) if name == "scorecam" else contextlib.nullcontext()
                    with method(model=wrapper, target_layers=group) as cam, quiet:
                        cam.batch_size = score_batch_size  # read by ScoreCAM only
                        for start in range(0, len(x), batch_size):
                            xb = x[start:start + batch_size]
                            maps.append(cam(input_tensor=xb, targets=targets * len(xb)))
                    per_group.append(normalise_maps(np.concatenate(maps)) if maps else np.zeros((0, *x.shape[-2:]), np.float32))
                out[name] = normalise_maps(np.prod(per_group, axis=0) ** (1.0 / len(per_group)))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return out


def disease_maps(model: nn.Module, images, batch_size: int = 8) -> np.ndarray | None:
    """The model's own disease probability map, sigmoid(``disease``), or None without that output.

    Shape:
        images: see ``cmtlib.inference.as_batch``; returns (N, H, W) float32 in [0, 1].
    """
    return infer(model, image_batches(images, batch_size, model_device(model)), maps=("disease",)).maps.get("disease")


# ---- agreement with the masks ----------------------------------------------------------------

def _masks(masks, maps: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(masks)
    if m.shape != maps.shape:
        raise ValueError(f"{name} has shape {m.shape} but the maps are {maps.shape}; pass one (H, W) mask per map")
    return m.astype(bool)


def mass_in_mask(maps, masks) -> np.ndarray:
    """Share of each map's total inside the mask; NaN where the mask is empty or the map all zero.

    Shape:
        maps: (N, H, W) non-negative; masks: (N, H, W) 0/1. Returns (N,).
    """
    maps = np.asarray(maps, dtype=np.float64)
    if (maps < 0).any():
        raise ValueError("maps must be non-negative (CAMs after ReLU, probabilities); normalise_maps() them first")
    m = _masks(masks, maps, "masks")
    total, inside = maps.sum(axis=(1, 2)), (maps * m).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m.any(axis=(1, 2)) & (total > 0), inside / total, np.nan)


def pointing_game(maps, masks) -> np.ndarray:
    """1.0 where a maximal pixel of the map lies inside the mask, else 0.0; NaN where the mask is
    empty or the map constant.

    Shape:
        maps: (N, H, W); masks: (N, H, W) 0/1. Returns (N,).
    """
    maps = np.asarray(maps, dtype=np.float64)
    m = _masks(masks, maps, "masks")
    top = maps.max(axis=(1, 2), keepdims=True)
    hit = ((maps == top) & m).any(axis=(1, 2)).astype(float)
    defined = m.any(axis=(1, 2)) & (maps.min(axis=(1, 2)) < top[:, 0, 0])
    return np.where(defined, hit, np.nan)


def iou_at(maps, masks, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """IoU of (normalised map >= threshold) with the mask; NaN where the mask is empty.

    Shape:
        maps: (N, H, W); masks: (N, H, W) 0/1. Returns (N,).
    """
    maps = normalise_maps(maps)
    return np.atleast_1d(iou(maps >= threshold, _masks(masks, maps, "masks")))


def agreement(maps: dict[str, np.ndarray], lung=None, disease=None, has_lung=None, has_disease=None,
              image_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method and image: mass_in_lung, pointing_game, iou_disease (module docstring).

    Args:
        maps: method -> (N, H, W) maps (``compute_cams`` output, plus ``DISEASE_MAP``).
        lung, disease: (N, H, W) 0/1 ground truth, or None when unknown for all.
        has_lung, has_disease: (N,) bool, False where that mask is unknown (default: all known).
        image_ids: (N,) names for the table (default: 0..N-1).

    Returns:
        DataFrame with columns method, image_id, mass_in_lung, pointing_game, iou_disease, lung_area
        (the lungs' share of the image: what a uniform map would score as mass_in_lung).
    """
    measures = ((lung, has_lung, {"mass_in_lung": mass_in_mask}),
                (disease, has_disease, {"pointing_game": pointing_game, "iou_disease": iou_at}))
    rows = []
    for name, mp in maps.items():
        mp = normalise_maps(mp)
        n = len(mp)
        ids = list(image_ids) if image_ids is not None else [str(i) for i in range(n)]
        cols = {k: np.full(n, np.nan) for k in MEASURES}
        for gt, known, fns in measures:
            if gt is not None:
                ok = np.ones(n, bool) if known is None else np.asarray(known, bool)
                cols.update({k: np.where(ok, fn(mp, gt), np.nan) for k, fn in fns.items()})
        area = np.full(n, np.nan)  # the lungs' share of the image: a uniform map's mass_in_lung
        if lung is not None:
            known = np.ones(n, bool) if has_lung is None else np.asarray(has_lung, bool)
            area = np.where(known, np.asarray(lung, bool).mean(axis=(1, 2)), np.nan)
        rows.append(pd.DataFrame({"method": name, "image_id": ids, **cols, "lung_area": area}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["method", "image_id", *MEASURES, "lung_area"])


def agreement_summary(per_image: pd.DataFrame, formatted: bool = False) -> pd.DataFrame:
    """Mean, sd and n (images where defined) of each measure by method, methods in input order.

    Returns:
        one row per method: ``<measure>_mean``, ``_sd``, ``_n``; with ``formatted`` one text column
        per measure, e.g. "0.82 ± 0.05 (n=12)" ("n=0" where undefined for every image).
    """
    methods = list(dict.fromkeys(per_image["method"]))
    out = pd.DataFrame(index=pd.Index(methods, name="method"))
    for k in MEASURES:
        g = per_image.groupby("method", sort=False)[k]
        out[f"{k}_mean"], out[f"{k}_sd"], out[f"{k}_n"] = g.mean(), g.std(ddof=1), g.count().astype(int)
    if not formatted:
        return out
    text = pd.DataFrame(index=out.index)
    for k in MEASURES:
        text[k] = [("n=0" if n == 0 else f"{m:.2f}" + ("" if math.isnan(s) else f" ± {s:.2f}") + f" (n={n})")
                   for m, s, n in zip(out[f"{k}_mean"], out[f"{k}_sd"], out[f"{k}_n"])]
    return text


@dataclass
class CamComparison:
    """Page 7: maps per method, agreement per image and by method, and seconds per image per method."""

    maps: dict[str, np.ndarray]  # method -> (N, H, W) in [0, 1]; DISEASE_MAP when the model has it
    per_image: pd.DataFrame
    summary: pd.DataFrame
    seconds_per_image: dict[str, float] = field(default_factory=dict)


def cam_comparison(model: nn.Module, images, lung=None, disease=None, has_lung=None, has_disease=None,
                   image_ids: Sequence[str] | None = None, methods: Sequence[str] = DEFAULT_METHODS,
                   target_index: int = 0, batch_size: int = 8, score_batch_size: int = 64) -> CamComparison:
    """Page 7 entry point: CAMs of the COVID logit per method, the model's disease map, agreement.

    Each method is timed (seconds per image, this machine) for the page's cost table.

    Shape:
        images: (N, H, W) uint8 or float in [0, 1]; lung, disease: (N, H, W) 0/1; has_*: (N,) bool.
    """
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    n = max(len(images), 1)
    for name in methods:
        t0 = time.perf_counter()
        maps[name] = compute_cams(model, images, (name,), target_index=target_index, batch_size=batch_size,
                                  score_batch_size=score_batch_size)[name]
        seconds[name] = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    own = disease_maps(model, images, batch_size)
    if own is not None:
        maps[DISEASE_MAP] = own
        seconds[DISEASE_MAP] = (time.perf_counter() - t0) / n
    per_image = agreement(maps, lung, disease, has_lung, has_disease, image_ids)
    return CamComparison(maps, per_image, agreement_summary(per_image), seconds)
