"""Multi-task loss with per-sample task switches (paper Section III-C: sum of T_i * Z_i).

Five terms: lung and disease segmentation (BCE with logits per pixel, averaged per image, as the
paper; with ``seg_loss="bce+dice"`` plus one minus the image's soft Dice, which keeps a decoder
whose target is a few per cent of the film from settling on "nothing anywhere"),
healthy/unhealthy (2-class cross-entropy), COVID and other disease (BCE with logits on the two
multilabel logits). Each term is computed per sample, switched by the batch's ``has_*`` flag and
averaged over the samples whose flag is on: ``(loss * mask).sum() / mask.sum().clamp_min(1)``.
A batch with no sample switched on for a term gives that term 0 and no gradient.

A term whose output the model does not produce (an ablation variant or a baseline without that
task) is skipped: it adds nothing to the total and is left out of ``parts``, so a logged history
only has columns for the tasks a model trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from cmtlib.errors import ConfigError

TERMS: tuple[str, ...] = ("lung", "disease", "healthy", "covid", "other")
SEG_LOSSES = ("bce", "bce+dice")
DICE_SMOOTH = 1.0  # added to both sides of the soft Dice: an empty target with an empty prediction scores 1
# Which model output each term reads (covid and other are the two columns of multilabel).
OUTPUT_OF: dict[str, str] = {"lung": "lung", "disease": "disease", "healthy": "healthy", "covid": "multilabel", "other": "multilabel"}


def _batch_item(batch: Mapping[str, torch.Tensor], key: str, term: str) -> torch.Tensor:
    if key not in batch:
        raise KeyError(
            f"the model predicts {OUTPUT_OF[term]!r} but the batch lacks {key!r} "
            "(see docs/CONTRACTS.md, Batches: targets are zero-filled and has_* switches them off)"
        )
    return batch[key]


def _switched_mean(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample losses over samples whose switch is on; 0 when none is.

    Shape:
        per_sample, mask: (B,).
        returns: () float32.
    """
    mask = mask.to(per_sample.dtype)
    return (per_sample * mask).sum() / mask.sum().clamp_min(1)


@dataclass
class MultiTaskLoss:
    """Weighted sum of the five switched terms; all weights 1 in the paper.

    Call with ``(outputs, batch)``: ``outputs`` is a model's dict of logits (DESIGN.md), ``batch``
    the loader's dict (docs/CONTRACTS.md). Returns ``(total, parts)``: the scalar to backpropagate
    and a dict term -> detached unweighted scalar for the terms the model has outputs for.
    Losses are computed in float32 whatever the autocast dtype of the logits.
    """

    w_lung: float = 1.0
    w_disease: float = 1.0
    w_healthy: float = 1.0
    w_covid: float = 1.0
    w_other: float = 1.0
    seg_loss: str = "bce"

    def __post_init__(self) -> None:
        if self.seg_loss not in SEG_LOSSES:
            raise ConfigError(f"seg_loss must be one of {', '.join(SEG_LOSSES)}, got {self.seg_loss!r}")
        for term in TERMS:
            w = getattr(self, f"w_{term}")
            if not (isinstance(w, (int, float)) and w >= 0):
                raise ConfigError(f"loss weight w_{term} must be a number >= 0, got {w!r}")

    @classmethod
    def from_config(cls, cfg) -> "MultiTaskLoss":
        """From a TrainConfig (or anything with w_lung .. w_other attributes)."""
        return cls(**{f"w_{t}": float(getattr(cfg, f"w_{t}")) for t in TERMS}, seg_loss=str(getattr(cfg, "seg_loss", "bce")))

    @property
    def weights(self) -> dict[str, float]:
        return {t: float(getattr(self, f"w_{t}")) for t in TERMS}

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts.

        Shape:
            outputs: lung, disease (B, 1, H, W); healthy (B, 2); multilabel (B, 2) logits.
            batch: lung, disease (B, 1, H, W) 0/1; healthy (B,) long; covid, other (B,) 0/1;
                has_* (B,) bool.
            returns: total () float32 and parts term -> () float32.
        """
        parts: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for term in TERMS:
            key = OUTPUT_OF[term]
            if key not in outputs:
                continue
            logits = outputs[key].float()
            mask = _batch_item(batch, f"has_{term}", term).to(device=logits.device).bool()
            target = _batch_item(batch, term, term).to(device=logits.device)
            per_sample = self._per_sample(term, logits, target, mask, self.seg_loss)
            value = _switched_mean(per_sample, mask)
            parts[term] = value.detach()
            weighted = value * getattr(self, f"w_{term}")
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError(
                f"outputs hold none of {sorted(set(OUTPUT_OF.values()))} (got {sorted(outputs)}); "
                "is this a model's output dict?"
            )
        return total, parts

    @staticmethod
    def _per_sample(term: str, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, seg_loss: str = "bce") -> torch.Tensor:
        """Unswitched loss of each sample, (B,) float32. Targets of switched-off samples are zeroed
        first, so a stray NaN there cannot reach the loss or its gradient."""
        b = logits.shape[0]
        if mask.shape != (b,):
            raise ValueError(f"has_{term} must have shape ({b},), got {tuple(mask.shape)}")
        if term in ("lung", "disease"):
            if target.shape != logits.shape:
                raise ValueError(f"batch[{term!r}] has shape {tuple(target.shape)}; the model's {term} logits are {tuple(logits.shape)} (expected (B, 1, H, W) 0/1 masks at the model's resolution)")
            target = torch.where(mask.view(b, 1, 1, 1), target.float(), 0.0)
            pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, 1, H, W)
            per_image = pixel.flatten(1).mean(dim=1)  # (B,)
            if seg_loss == "bce+dice":
                p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)  # (B, H*W)
                dice = (2 * (p * t).sum(1) + DICE_SMOOTH) / (p.sum(1) + t.sum(1) + DICE_SMOOTH)
                per_image = per_image + (1 - dice)
            return per_image
        if target.shape != (b,):
            raise ValueError(f"batch[{term!r}] must have shape ({b},), got {tuple(target.shape)}")
        if term == "healthy":
            target = torch.where(mask, target.long(), 0)
            return F.cross_entropy(logits, target, reduction="none")  # (B,)
        column = 0 if term == "covid" else 1  # multilabel: 0 = COVID, 1 = other disease
        target = torch.where(mask, target.float(), 0.0)
        return F.binary_cross_entropy_with_logits(logits[:, column], target, reduction="none")  # (B,)
