"""SegNet baseline (paper Section V-A, Figs. 5-6): CMTNet's encoder and SegNet decoder, no heads.

The paper compares CMTNet's masks with SegNet trained for one task: ``tasks: [lung]`` or
``tasks: [disease]`` (params/baselines/segnet_lung.yaml, segnet_disease.yaml). Listing both gives
one decoder per task on a shared encoder (CMTNet without its classification heads). Classification
tasks in ``tasks`` are ignored. Module names match CMTNet's (``encoder``, ``lung_decoder``,
``disease_decoder``), so a CMTNet state_dict's encoder and decoders load into it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from cmtlib.models.base import ContractModel
from cmtlib.models.encoder import EncoderOutput, ImageNetPreprocess, VGG16BNEncoder
from cmtlib.models.segnet import SegNetDecoder
from cmtlib.models.weights import load_encoder_weights

SEGMENTATION_TASKS = ("lung", "disease")


def segmentation_tasks(tasks: Sequence[str] | str) -> tuple[str, ...]:
    """The segmentation tasks in ``tasks`` (lung, disease), in canonical order.

    Raises:
        ValueError: an unknown task name, or neither lung nor disease listed.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in ("lung", "disease", "healthy", "multilabel")]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid tasks are lung, disease, healthy, multilabel")
    out = tuple(t for t in SEGMENTATION_TASKS if t in tasks)
    if not out:
        raise ValueError(f"tasks {list(tasks)} hold no segmentation task; a segmentation baseline needs 'lung' and/or 'disease'")
    return out


class SegNet(ContractModel):
    """VGG16-BN encoder (SegNet's) + one SegNet decoder per segmentation task.

    Args:
        tasks: lung and/or disease (classification tasks ignored); one for the paper's baseline.
        width: channel multiplier of the VGG16-BN encoder (1.0 = SegNet).
        encoder_weights: ``imagenet``, ``none`` or a state_dict path (``load_encoder_weights``).
        head_hidden: accepted for the registry's common signature; unused (no FC heads).

    Output: ``lung`` and/or ``disease`` (B, 1, H, W) logits and ``embedding`` (B, D), the GAP of
    the encoder's last block.
    """

    name = "segnet"

    def __init__(self, tasks: Sequence[str] = ("lung",), width: float = 1.0, encoder_weights: str = "imagenet", head_hidden: int = 256, effective_px: int = 0) -> None:
        super().__init__()
        self.tasks = segmentation_tasks(tasks)
        self.width = float(width)
        self.encoder_weights = str(encoder_weights)
        self.head_hidden = int(head_hidden)
        self.preprocess = ImageNetPreprocess(effective_px=effective_px)
        self.encoder = VGG16BNEncoder(width=width, in_channels=3)
        self.encoder_weights_source = load_encoder_weights(self.encoder, encoder_weights)
        channels, depths = self.encoder.out_channels, self.encoder.depths
        self.embedding_dim = channels[-1]
        self.lung_decoder = SegNetDecoder(channels, 1, depths) if "lung" in self.tasks else None
        self.disease_decoder = SegNetDecoder(channels, 1, depths) if "disease" in self.tasks else None

    def forward_features(self, x: torch.Tensor) -> EncoderOutput:
        """Preprocess and encode.

        Shape:
            x: (B, 3 or 1, H, W) float in [0, 1].
            returns.features: (B, D, H/32, W/32); see EncoderOutput for the rest.
        """
        return self.encoder(self.preprocess(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segmentation logits and the embedding.

        Shape:
            x: (B, 3 or 1, H, W); lung, disease: (B, 1, H, W); embedding: (B, D).
        """
        enc = self.forward_features(x)
        out: dict[str, torch.Tensor] = {}
        if self.lung_decoder is not None:
            out["lung"] = self.lung_decoder(enc)
        if self.disease_decoder is not None:
            out["disease"] = self.disease_decoder(enc)
        out.update(self.classify(enc.features))
        return out

    def describe_own(self) -> dict:
        return {"arch": "SegNet: VGG16-BN encoder with pooling indices, one SegNet decoder per task",
                "encoder_channels": list(self.encoder.out_channels)}
