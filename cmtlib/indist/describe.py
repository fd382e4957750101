"""What the in-distribution check reads of each film, gathered inside the model pass (an `infer`
hook) and copied to the host once; and the appearance of a film turned, computed without a pass."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

GRID = 8  # the lung map is averaged over GRID x GRID cells: where the lungs are, not their every pixel
QUANTILES = (0.02, 0.25, 0.5, 0.75, 0.98)  # brightness quantiles of the appearance signal
LAYOUT = 4  # the appearance's brightness layout: mean brightness over LAYOUT x LAYOUT cells


def _appearance(gray: torch.Tensor) -> torch.Tensor:
    """(B, 9 + LAYOUT^2): brightness quantiles, log mean absolute differences across and along at 1 and
    2 px, and the mean brightness of each LAYOUT x LAYOUT cell (row by row).

    Shape:
        gray: (B, H, W) in [0, 1].
    """
    flat = gray.flatten(1).float()
    ranks = torch.tensor([round(q * (flat.shape[1] - 1)) for q in QUANTILES], device=flat.device)
    quantiles = flat.sort(dim=1).values[:, ranks]  # (B, 5)
    edges = [(gray[:, :, k:] - gray[:, :, :-k]).abs().mean((1, 2)) for k in (1, 2)]
    edges += [(gray[:, k:, :] - gray[:, :-k, :]).abs().mean((1, 2)) for k in (1, 2)]
    layout = F.adaptive_avg_pool2d(gray[:, None].float(), LAYOUT).flatten(1)  # (B, LAYOUT^2)
    return torch.cat([quantiles, torch.log(torch.stack(edges, 1) + 1e-4), layout], 1)


def _lung_shape(p: torch.Tensor) -> torch.Tensor:
    """(B, 3): lung area share, balance between the image halves (smaller / larger), height of the
    lungs' centre (0 = top, 1 = bottom; 0.5 where no lung is found), all at probability 0.5.

    Shape:
        p: (B, H, W) lung probabilities.
    """
    m = (p >= 0.5).float()
    h, w = m.shape[-2:]
    left, right = m[:, :, : w // 2].sum((1, 2)), m[:, :, w - w // 2:].sum((1, 2))
    balance = torch.minimum(left, right) / torch.maximum(left, right).clamp_min(1.0)
    rows = torch.linspace(0, 1, h, device=p.device).view(1, h, 1)
    total = m.sum((1, 2))
    height = torch.where(total > 0, (m * rows).sum((1, 2)) / total.clamp_min(1.0), torch.full_like(total, 0.5))
    return torch.stack([m.mean((1, 2)), balance, height], 1)


@torch.no_grad()
def describe(outputs: Mapping[str, torch.Tensor], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the check reads of a batch: `features` (B, D) where the model gives an embedding, `lungs`
    (B, GRID * GRID) and `lung_shape` (B, 3) where it outlines lungs, `appearance` (B, 9 + LAYOUT^2) always.

    Shape:
        outputs: the model's float outputs (DESIGN.md's contract); images: (B, 1 or 3, H, W) in [0, 1].
    """
    out = {"appearance": _appearance(images[:, 0])}
    if "embedding" in outputs:
        out["features"] = outputs["embedding"].float().flatten(1)
    if "lung" in outputs:
        p = torch.sigmoid(outputs["lung"].float())  # (B, 1, H, W)
        out["lungs"] = F.adaptive_avg_pool2d(p, GRID).flatten(1)
        out["lung_shape"] = _lung_shape(p[:, 0])
    return out


class Descriptors:
    """An `infer(..., on_batch=...)` hook gathering `describe` per batch on the device; `host()` copies
    them once at the end (no per-batch synchronisation on a GPU)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {}

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        for key, value in describe(outputs, batch["image"]).items():
            self.parts.setdefault(key, []).append(value)

    def host(self) -> dict[str, np.ndarray]:
        return {k: torch.cat(v).cpu().numpy().astype(np.float64) for k, v in self.parts.items()}


def turned(appearance: np.ndarray, k: int) -> np.ndarray:
    """The appearance descriptors of the same films turned by k quarter turns, without a pass: the
    quantiles stay, the edge strengths across and along swap on odd k, the layout grid turns.

    Shape:
        appearance: (N, 9 + LAYOUT^2), as `_appearance` gives it.
    """
    out = np.array(appearance, dtype=np.float64, copy=True)
    grid = out[:, 9:].reshape(-1, LAYOUT, LAYOUT)
    out[:, 9:] = np.rot90(grid, k, axes=(1, 2)).reshape(len(out), -1)
    if k % 2:
        out[:, 5:9] = out[:, [7, 8, 5, 6]]
    return out
