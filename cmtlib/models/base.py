"""What every model of the registry shares: the rebuild config and the pooled heads."""

from __future__ import annotations

import torch
from torch import nn


class ContractModel(nn.Module):
    """Base of the registry's models (DESIGN.md, Model contract).

    Subclasses set ``tasks``, ``width``, ``encoder_weights`` and ``head_hidden`` and, when they
    classify, ``healthy_head`` / ``multilabel_head`` modules; ``forward_features(x).features`` is
    the last encoder block's output (what CAM explains).
    """

    def classify(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embedding (global average pooling) and the classification logits the model has.

        Shape:
            features: (B, D, h, w) or (B, D) already pooled.
            embedding: (B, D); healthy, multilabel: (B, 2) when the model has those heads.
        """
        emb = features.mean(dim=(2, 3)) if features.ndim == 4 else features  # (B, D)
        out = {"embedding": emb}
        # getattr: a registered head lives in _modules; a model without the task has no attribute.
        for key in ("healthy", "multilabel"):
            head = getattr(self, f"{key}_head", None)
            if head is not None:
                out[key] = head(emb)
        return out

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture with ``create_model(name, **config)``."""
        return {"tasks": list(self.tasks), "width": self.width, "encoder_weights": self.encoder_weights, "head_hidden": self.head_hidden}
