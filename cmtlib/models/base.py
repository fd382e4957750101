"""What every model of the registry shares: the rebuild config and the pooled heads."""

from __future__ import annotations

import torch
from torch import nn

# Class order of each two-logit head (index 0, 1), in words: what models describe and checkpoints store.
CLASS_NAMES: dict[str, list[str]] = {"healthy": ["unhealthy", "healthy"], "multilabel": ["COVID-19", "other disease"]}


class ContractModel(nn.Module):
    """Base of the registry's models (DESIGN.md, Model contract).

    Subclasses set ``tasks``, ``width``, ``encoder_weights`` and ``head_hidden`` and, when they
    classify, ``healthy_head`` / ``multilabel_head`` modules; ``forward_features(x).features`` is
    the last encoder block's output (what CAM explains). Each sets ``name``, ``embedding_dim``,
    ``encoder_weights_source`` and ``preprocess`` and says what is its own in ``describe_own``.

    ``SWITCHES`` declares the ModelConfig switches (cmtlib.configs.switch) a model takes as
    constructor arguments; the registry refuses a switch that is on for a model not declaring it, and
    the experiments layer leaves it off when it trains such a model beside a run that has it on.
    Every model's ``preprocess`` applies acquisition harmonisation, so ``effective_px`` is everyone's.
    """

    SWITCHES: tuple[str, ...] = ("effective_px",)

    @property
    def effective_px(self) -> int:
        return self.preprocess.effective_px

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

    def focus_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the classification heads look at, for an input x: x itself, except in a model that
        classifies its own lung region (CMTNet with lung_focus). Code that runs only the encoder and the
        heads (embeddings, CAMs) passes its input through this first, never branching on the model."""
        return x

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The keys ``forward`` returns, in order (models that order them otherwise override this)."""
        return self.tasks + ("embedding",)

    def describe(self) -> dict:
        """Plain-data description for self-describing checkpoints and reports: what every model
        has, then ``describe_own()`` (``arch`` in words and the model's own entries, which win)."""
        return {
            "name": self.name,
            "tasks": list(self.tasks),
            "width": self.width,
            "config": self.config(),
            "outputs": list(self.output_keys),
            "class_names": {k: v for k, v in CLASS_NAMES.items() if k in self.tasks},
            "embedding_dim": self.embedding_dim,
            "parameters": sum(p.numel() for p in self.parameters()),
            "encoder_weights_source": self.encoder_weights_source,
            "preprocessing": self.preprocess.describe(),
            **self.describe_own(),
        }

    def describe_own(self) -> dict:
        """``describe``'s entries particular to a model: at least ``arch``."""
        raise NotImplementedError

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture, switches included, with ``create_model(name, **config)``."""
        common = {"tasks": list(self.tasks), "width": self.width, "encoder_weights": self.encoder_weights, "head_hidden": self.head_hidden}
        return {**common, **{name: getattr(self, name) for name in self.SWITCHES}}
