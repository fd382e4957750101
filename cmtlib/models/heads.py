"""Classification heads on the pooled embedding."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Sequential):
    """The paper's branch: three fully connected layers, ReLU after the first two.

    The paper ends each branch in softmax (healthy) or sigmoid (multilabel); both live in the
    loss and in evaluation, so this returns logits.

    Args:
        in_features: embedding size D.
        hidden: width of the two hidden layers.
        n_out: number of logits.
    """

    def __init__(self, in_features: int, hidden: int, n_out: int) -> None:
        if in_features < 1 or hidden < 1 or n_out < 1:
            raise ValueError(f"ClassificationHead sizes must be positive, got in={in_features}, hidden={hidden}, out={n_out}")
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, n_out),
        )
        self.in_features = in_features
        self.n_out = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from embeddings.

        Shape:
            x: (B, in_features).
            returns: (B, n_out) raw logits.
        """
        return super().forward(x)
