"""CMTNet (paper Section III, Fig. 3): a shared VGG16-BN encoder, two SegNet decoders, two FC heads."""

from __future__ import annotations

from typing import Sequence

import torch

from cmtlib.configs import ALL_TASKS
from cmtlib.errors import ConfigError
from cmtlib.models.base import ContractModel
from cmtlib.models.encoder import EncoderOutput, ImageNetPreprocess, VGG16BNEncoder
from cmtlib.models.heads import ClassificationHead
from cmtlib.models.segnet import SegNetDecoder
from cmtlib.models.weights import load_encoder_weights

SEGMENTATION_TASKS = ("lung", "disease")
# Healthy head: index 1 = healthy; multilabel head: index 0 = COVID, 1 = other disease (DESIGN.md).


def validate_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Check a CMTNet task subset and return it in canonical order (lung, disease, healthy, multilabel).

    Valid subsets hold multilabel (the COVID-19 output). The paper's Table V variants keep at least one
    segmentation task; healthy + multilabel without either (the same encoder and heads, no outline
    to learn) is the classification-only control of the explanation study, which tests the paper's
    premise that learning the outlines makes the classifier look at the right place
    (params/ablation_control/).

    Raises:
        ValueError: an unknown or repeated task, or a subset without multilabel.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise ValueError(f"unknown CMTNet task(s) {unknown}; valid tasks are {', '.join(ALL_TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks {tasks} repeat a task; list each once")
    if "multilabel" not in tasks:
        raise ValueError(f"tasks {tasks} are not a CMTNet variant: keep 'multilabel' (the COVID output); the paper's "
                         "Table V variants also keep at least one of 'lung', 'disease'")
    return tuple(t for t in ALL_TASKS if t in tasks)


class CMTNet(ContractModel):
    """COVID-19 multi-task network, or one of its ablation variants (a subset of its tasks).

    Args:
        tasks: any of lung, disease, healthy, multilabel (see ``validate_tasks``); a task left out
            has no parameters and no output key.
        width: channel multiplier of the VGG16-BN encoder (1.0 = the paper).
        encoder_weights: ``imagenet``, ``none`` or a state_dict path (``load_encoder_weights``).
        head_hidden: width of the two hidden FC layers of each head (the paper does not give it).
        effective_px: acquisition harmonisation (ModelConfig.effective_px; 0 = off).
        lung_focus: the heads classify the film with everything outside the network's own lung outline
            painted over (``focus_on_lungs``; a second encoder pass); needs the lung task.

    Input: (B, 3, H, W) float in [0, 1] (or (B, 1, H, W), repeated to 3 channels), any H, W >= 32;
    ImageNet normalisation happens inside. Output: a dict of raw logits (DESIGN.md's Model contract).
    """

    name = "cmtnet"
    SWITCHES = ("effective_px", "lung_focus")

    def __init__(
        self,
        tasks: Sequence[str] = ALL_TASKS,
        width: float = 1.0,
        encoder_weights: str = "imagenet",
        head_hidden: int = 256,
        effective_px: int = 0,
        lung_focus: bool = False,
    ) -> None:
        super().__init__()
        self.tasks = validate_tasks(tasks)
        if lung_focus and "lung" not in self.tasks:
            raise ConfigError(f"lung_focus needs the network's own lung outline: add the lung task (tasks {list(self.tasks)})")
        self.width = float(width)
        self.head_hidden = int(head_hidden)
        self.encoder_weights = str(encoder_weights)
        self.preprocess = ImageNetPreprocess(effective_px=effective_px)
        self.encoder = VGG16BNEncoder(width=width, in_channels=3)
        self.encoder_weights_source = load_encoder_weights(self.encoder, encoder_weights)
        channels, depths = self.encoder.out_channels, self.encoder.depths
        self.embedding_dim = channels[-1]
        # A task left out stays None: no parameters, no state_dict keys, no output key.
        self.lung_decoder = SegNetDecoder(channels, 1, depths) if "lung" in self.tasks else None
        self.disease_decoder = SegNetDecoder(channels, 1, depths) if "disease" in self.tasks else None
        self.healthy_head = ClassificationHead(self.embedding_dim, self.head_hidden, 2) if "healthy" in self.tasks else None
        self.multilabel_head = ClassificationHead(self.embedding_dim, self.head_hidden, 2)
        self.lung_focus = bool(lung_focus)

    def forward_features(self, x: torch.Tensor) -> EncoderOutput:
        """Preprocess and encode (no decoders): what CAM and embedding code need.

        Shape:
            x: (B, 3 or 1, H, W) float in [0, 1].
            returns.features: (B, D, H/32, W/32); see EncoderOutput for the rest.
        """
        return self.encoder(self.preprocess(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All task outputs as raw logits.

        Shape:
            x: (B, 3 or 1, H, W) float in [0, 1].
            lung, disease: (B, 1, H, W); healthy: (B, 2); multilabel: (B, 2); embedding: (B, D).
        """
        enc = self.forward_features(x)
        out: dict[str, torch.Tensor] = {}
        if self.lung_decoder is not None:
            out["lung"] = self.lung_decoder(enc)
        if self.disease_decoder is not None:
            out["disease"] = self.disease_decoder(enc)
        if self.lung_focus:  # a second pass through the encoder, on the lungs alone
            out.update(self.classify(self.forward_features(focus_on_lungs(x, out["lung"])).features))
        else:
            out.update(self.classify(enc.features))
        return out

    def focus_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input the heads classify: the film with only its own lungs left when lung_focus is on."""
        if not self.lung_focus:
            return x
        with torch.no_grad():
            lung = self.lung_decoder(self.forward_features(x))
        return focus_on_lungs(x, lung)

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The keys ``forward`` returns, in order."""
        keys = [t for t in SEGMENTATION_TASKS if t in self.tasks]
        return tuple(keys + ["embedding"] + [t for t in ("healthy", "multilabel") if t in self.tasks])


    def describe_own(self) -> dict:
        return {"arch": "CMTNet: VGG16-BN encoder, two SegNet decoders (lung, disease), two 3-layer FC heads after GAP"
                        + ("; the heads classify the film's own lung region (a second encoder pass)" if self.lung_focus else ""),
                "encoder_channels": list(self.encoder.out_channels), "lung_focus": bool(self.lung_focus)}


def focus_on_lungs(x: torch.Tensor, lung_logits: torch.Tensor, min_share: float = 0.01) -> torch.Tensor:
    """The film with everything outside the network's own lung outline (p >= 0.5, not dilated) filled
    with mid-grey, and the lungs normalised per film (mean 0.5, spread 0.2), so that neither what lies
    outside the lungs nor a film's brightness or contrast reaches the classifier. One mask source for
    every film: the network's own lung decoder. A film whose outline covers less than `min_share` of it
    is classified whole. The outline is not differentiated through (the lung task learns it).

    Shape:
        x: (B, 1 or 3, H, W) in [0, 1]; lung_logits: (B, 1, H, W); returns (B, 3, H, W) in [0, 1].
    """
    g = x[:, :1].float()  # (B, 1, H, W): the channels of an X-ray are copies
    mask = (torch.sigmoid(lung_logits.detach().float()) >= 0.5).float()
    empty = mask.flatten(1).sum(1) < min_share * mask[0].numel()
    mask = torch.where(empty.view(-1, 1, 1, 1), torch.ones_like(mask), mask)
    w = mask / mask.flatten(1).sum(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    mean = (w * g).flatten(1).sum(1).view(-1, 1, 1, 1)
    spread = (w * (g - mean) ** 2).flatten(1).sum(1).sqrt().clamp_min(0.02).view(-1, 1, 1, 1)
    g = ((g - mean) / spread * 0.2 + 0.5).clamp(0, 1)
    return (mask * g + (1 - mask) * 0.5).expand(-1, 3, -1, -1)  # (B, 3, H, W), a view
