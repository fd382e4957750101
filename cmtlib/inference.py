"""Running a model over images: the one loop behind validation, `cmt evaluate`, embeddings, overlays,
the shortcut audit, the baselines and `cmt predict`.

`infer(model, batches)` reads any iterable of batch dicts (docs/CONTRACTS.md, Batches: a cached
split's `EvalBatches`, or `image_batches` over plain arrays) and returns per-image columns, the
embedding and, on request, the segmentation probability maps. Everything is gathered on the model's
device and copied to the host once at the end: on a GPU a per-batch `.cpu()` would stall the queue
after every batch. Models are read only through the output contract (DESIGN.md): a model without an
output leaves its columns NaN, never a branch on the model's type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cmtlib.metrics.masks import dice_from_counts, iou_from_counts
from cmtlib.runtime import autocast

SEG_TASKS = ("lung", "disease")
COLUMNS = ("p_healthy", "p_covid", "p_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou")


def as_batch(images, device: torch.device | str = "cpu") -> torch.Tensor:
    """Images as a float (N, 3, H, W) tensor in [0, 1] on ``device``.

    Shape:
        images: (N, H, W) or (N, 1|3, H, W), uint8 (0..255) or float in [0, 1], numpy or torch.
    """
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"images are {x.dtype}; pass uint8 (0..255) or float in [0, 1]")
    x = x.float()
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images have shape {tuple(x.shape)}; expected (N, H, W) or (N, 1|3, H, W)")
    if x.numel() and (x.min() < 0 or x.max() > 1 + 1e-6):
        raise ValueError(f"float images must lie in [0, 1] (got {float(x.min()):.3g}..{float(x.max()):.3g}); divide by 255")
    return x.expand(-1, 3, -1, -1).contiguous().to(device)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def image_batches(images, batch_size: int, device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """Batches {"image": (B, 3, H, W)} of an image array, converted a batch at a time (a large
    array is never held twice as float)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield {"image": as_batch(images[start:start + batch_size], device)}


@dataclass
class Inference:
    """What `infer` gathered, on the host, one row per image in batch order."""

    columns: dict[str, np.ndarray]  # COLUMNS, each (N,) float64; NaN where the model lacks the output or the truth is unknown / empty
    embedding: np.ndarray | None  # (N, D) float32, or None when the model gives no embedding
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # requested probability maps, (N, H, W) float32
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # requested batch entries, (N,)

    def __len__(self) -> int:
        return len(self.columns["p_covid"])


class _Gather:
    """Per-key lists of device tensors, concatenated and copied to the host once."""

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {}

    def add(self, key: str, value: torch.Tensor) -> None:
        self.parts.setdefault(key, []).append(value.detach())

    def host(self) -> dict[str, np.ndarray]:
        return {k: torch.cat(v).cpu().numpy() for k, v in self.parts.items()}


def _overlap(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], task: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(Dice, IoU) per image at probability 0.5, NaN where the mask is unknown or empty."""
    if task not in out or task not in batch or f"has_{task}" not in batch:
        return None
    pred, gt = (out[task] >= 0).flatten(1), (batch[task] >= 0.5).flatten(1)  # logit >= 0 <=> p >= 0.5
    inter, ps, gs = (pred & gt).sum(1).double(), pred.sum(1).double(), gt.sum(1).double()
    gs = torch.where(batch[f"has_{task}"], gs, torch.zeros_like(gs))  # unknown masks count as empty truth: NaN
    return dice_from_counts(inter, ps, gs), iou_from_counts(inter, ps, gs)


def _forward(model: nn.Module, x: torch.Tensor, heads_only: bool) -> dict[str, torch.Tensor]:
    """The output dict; `heads_only` skips the decoders where the model has the encoder + heads API."""
    if heads_only and hasattr(model, "forward_features") and hasattr(model, "classify"):
        x = model.focus_input(x) if hasattr(model, "focus_input") else x
        return model.classify(model.forward_features(x).features)
    return model(x)


@torch.no_grad()
def infer(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    amp: torch.dtype | None = None,
    maps: Sequence[str] = (),
    targets: Sequence[str] = (),
    heads_only: bool = False,
    on_batch: Callable[[dict[str, torch.Tensor], Mapping[str, torch.Tensor]], None] | None = None,
) -> Inference:
    """Run `model` in eval mode over `batches` (its train/eval mode is restored afterwards).

    Args:
        batches: dicts with `image` (B, 3, H, W) on the model's device, and, for Dice / IoU, the
            masks and `has_lung` / `has_disease` switches.
        amp: autocast dtype (None = fp32).
        maps: segmentation outputs ("lung", "disease") whose sigmoid maps to return.
        targets: batch entries to gather alongside (e.g. "covid", "has_covid").
        heads_only: encoder and classification heads only (embeddings and class scores, no masks).
        on_batch: called with (float outputs, batch) per batch, e.g. to sum a loss on the device.

    Shape:
        columns: (N,); embedding: (N, D); maps[task]: (N, H, W).
    """
    was_training = model.training
    model.eval()
    gather = _Gather()
    device = None
    try:
        for batch in batches:
            device = batch["image"].device
            with autocast(device, amp):
                out = _forward(model, batch["image"], heads_only)
            out = {k: v.float() for k, v in out.items()}
            if on_batch is not None:
                on_batch(out, batch)
            _gather_batch(gather, out, batch, maps, targets)
    finally:
        model.train(was_training)
    host = gather.host()
    n = len(host.get("_n", ()))
    columns = {c: host[c].astype(np.float64) if c in host else np.full(n, math.nan) for c in COLUMNS}
    embedding = host["embedding"].astype(np.float32) if "embedding" in host else None
    return Inference(columns, embedding, {t: host[f"map_{t}"] for t in maps if f"map_{t}" in host},
                     {t: host[f"target_{t}"] for t in targets if f"target_{t}" in host})


def _gather_batch(gather: _Gather, out: dict[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                  maps: Sequence[str], targets: Sequence[str]) -> None:
    """Add one batch's columns, embedding, maps and targets to `gather` (still on the device)."""
    b = batch["image"].shape[0]
    gather.add("_n", torch.zeros(b, device=batch["image"].device))  # keeps N known when the model has no head
    if "healthy" in out:
        gather.add("p_healthy", torch.softmax(out["healthy"], dim=1)[:, 1])
    if "multilabel" in out:
        p = torch.sigmoid(out["multilabel"])
        gather.add("p_covid", p[:, 0])
        gather.add("p_other", p[:, 1])
    for task in SEG_TASKS:
        overlap = _overlap(out, batch, task)
        if overlap is not None:
            gather.add(f"{task}_dice", overlap[0])
            gather.add(f"{task}_iou", overlap[1])
        if task in maps and task in out:
            gather.add(f"map_{task}", torch.sigmoid(out[task])[:, 0])
    if "embedding" in out:
        gather.add("embedding", out["embedding"])
    for t in targets:
        if t in batch:
            gather.add(f"target_{t}", batch[t])
