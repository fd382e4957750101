"""Mask R-CNN baseline (paper Section V-A, Figs. 5-6) behind an adapter to the model contract.

torchvision's Mask R-CNN detects lung (label 1) and disease (label 2) instances. The adapter turns
it into a segmentation model for evaluation, and trains it with its own loss through the one engine:

* eval mode: ``forward(x)`` returns ``lung`` / ``disease`` logit maps (B, 1, H, W): per class, the
  max over detected instances of score x pasted mask probability, as a logit (clamped to
  [1e-4, 1 - 1e-4]); plus ``embedding``, the GAP of the backbone's last stage (C5).
* train mode: ``forward(x)`` returns ``embedding`` and the FPN feature maps under ``_fpn.<level>``
  keys, and ``MaskRCNNLoss`` (``model.make_loss(train_cfg)``) builds instance targets from the
  batch's masks (connected components -> boxes, masks, labels) and runs the RPN and ROI heads on
  those features to get torchvision's five losses. The backbone thus runs once per step.
  Validation (eval mode) scores the logit maps with the multi-task BCE, so ``val_loss`` and the
  engine's Dice are comparable with the other segmentation models.

Images enter at their own size (no resize to 800 px as torchvision's transform would), padded to a
multiple of 32; anchors (12 ... 192 px on P2 ... P6) fit lungs and lesions at 64-224 px.
``maskrcnn`` uses a ResNet18-FPN (light, for CPUs); ``maskrcnn_resnet50`` torchvision's ResNet50-FPN
(params/paper.yaml, GPU). ``width`` narrows the FPN and the box / mask heads (256, 1024, 256 at 1.0),
not the ResNet, so ImageNet backbone weights load at any width.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image

from cmtlib.losses import MultiTaskLoss
from cmtlib.models.base import ContractModel
from cmtlib.models.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderOutput,
    ImageNetPreprocess,
)
from cmtlib.models.segnet_single import segmentation_tasks
from cmtlib.models.weights import load_torchvision_weights

FPN_PREFIX = "_fpn."  # train-mode output keys carrying FPN levels to MaskRCNNLoss
SIZE_DIVISIBLE = 32
ANCHOR_SIZES = ((12,), (24,), (48,), (96,), (192,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)
# Fewer proposals and detections than torchvision's defaults (2000/1000, 512, 100): an X-ray holds two
# lungs and a few lesions, and the CPU budget is small.
DETECTOR_SETTINGS = dict(
    rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=150,
    box_batch_size_per_image=128, box_detections_per_img=20,
)
PROB_EPS = 1e-4  # map probabilities are clamped to [eps, 1 - eps] before the logit
MIN_AREA = 4  # connected components smaller than this (pixels) are not instances (augmentation specks)
LOSS_TERMS = ("objectness", "rpn_box_reg", "classifier", "box_reg", "mask")  # torchvision's loss_* keys
BACKBONES = {  # name -> (torchvision builder, C2..C5 channels, ImageNet file)
    "resnet18": ("resnet18", (64, 128, 256, 512), "resnet18-f37072fd.pth"),
    "resnet50": ("resnet50", (256, 512, 1024, 2048), "resnet50-0676ba61.pth"),
}


def _scaled(c: int, width: float, minimum: int = 16) -> int:
    if not width > 0:
        raise ValueError(f"width must be a positive channel multiplier (1.0 = torchvision's Mask R-CNN heads), got {width!r}")
    return max(minimum, int(round(c * width)))


def _padded(h: int, w: int) -> tuple[int, int]:
    return math.ceil(h / SIZE_DIVISIBLE) * SIZE_DIVISIBLE, math.ceil(w / SIZE_DIVISIBLE) * SIZE_DIVISIBLE


class MaskRCNNAdapter(ContractModel):
    """Mask R-CNN for lung / disease instances, answering in DESIGN.md's output contract.

    Args:
        tasks: lung and/or disease (one detector class each; classification tasks ignored).
        width: multiplier of the FPN and head widths (the ResNet is not narrowed).
        encoder_weights: ``imagenet`` (torchvision's ResNet file, found locally), ``none`` or a
            path to a ResNet state_dict.
        head_hidden: accepted for the registry's common signature; unused.
        effective_px: acquisition harmonisation (ModelConfig.effective_px; 0 = off).
    """

    name = "maskrcnn"
    backbone_name = "resnet18"

    def __init__(self, tasks: Sequence[str] = ("lung", "disease"), width: float = 1.0, encoder_weights: str = "imagenet", head_hidden: int = 256, effective_px: int = 0) -> None:
        super().__init__()
        self.tasks = segmentation_tasks(tasks)
        self.labels = {t: i + 1 for i, t in enumerate(self.tasks)}  # 0 = background
        self.width = float(width)
        self.encoder_weights = str(encoder_weights)
        self.head_hidden = int(head_hidden)
        arch, in_channels, weights_file = BACKBONES[self.backbone_name]
        fpn, rep, mask = _scaled(256, width), _scaled(1024, width), _scaled(256, width)
        body = getattr(torchvision.models, arch)(weights=None)
        body.avgpool, body.fc = nn.Identity(), nn.Identity()  # not part of the backbone
        self.encoder_weights_source = load_torchvision_weights(body, self.encoder_weights, arch=arch, file_name=weights_file, skip=("fc.",))
        backbone = BackboneWithFPN(body, {f"layer{i + 1}": str(i) for i in range(4)}, list(in_channels), fpn)
        n = len(self.tasks) + 1
        self.detector = MaskRCNN(
            backbone, num_classes=None, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
            rpn_anchor_generator=AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS),
            box_head=TwoMLPHead(fpn * 7 * 7, rep), box_predictor=FastRCNNPredictor(rep, n),
            mask_head=MaskRCNNHeads(fpn, (mask,) * 4, 1), mask_predictor=MaskRCNNPredictor(mask, mask, n),
            **DETECTOR_SETTINGS,
        )
        self.embedding_dim = in_channels[-1]
        self.preprocess = ImageNetPreprocess(effective_px=effective_px)

    # ---- shared backbone pass ----------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, OrderedDict, OrderedDict]:
        """(normalised images padded to a multiple of 32, ResNet stages "0".."3", FPN levels)."""
        h, w = x.shape[-2:]
        ph, pw = _padded(h, w)
        x = F.pad(self.preprocess(x), (0, pw - w, 0, ph - h))  # zero = the ImageNet mean, as torchvision pads
        body = self.detector.backbone.body(x)  # C2..C5: (B, C_i, ph/4 ... ph/32, ...)
        return x, body, self.detector.backbone.fpn(body)

    @staticmethod
    def _c5(body: Mapping[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
        """C5 without the padding's columns and rows: (B, C5, ceil(h/32), ceil(w/32))."""
        return body["3"][..., : math.ceil(h / 32), : math.ceil(w / 32)]

    def forward_features(self, x: torch.Tensor) -> EncoderOutput:
        """The ResNet's last stage (C5), what CAM and embedding code need.

        Shape:
            x: (B, 3 or 1, H, W) float in [0, 1].
            returns.features: (B, C5, ceil(H/32), ceil(W/32)); stages: C2..C4 (padded size).
        """
        _, body, _ = self._encode(x)
        h, w = x.shape[-2:]
        return EncoderOutput(features=self._c5(body, h, w), indices=[], sizes=[], stages=[body[k] for k in ("0", "1", "2")])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval: ``lung`` / ``disease`` logit maps and ``embedding``. Train: ``embedding`` and the
        FPN levels (``_fpn.0`` ... ``_fpn.pool``) for MaskRCNNLoss.

        Shape:
            x: (B, 3 or 1, H, W) float in [0, 1].
            lung, disease: (B, 1, H, W); embedding: (B, C5); _fpn.k: (B, C_fpn, h_k, w_k).
        """
        h, w = x.shape[-2:]
        padded, body, fpn = self._encode(x)
        emb = self.classify(self._c5(body, h, w))["embedding"]
        if self.training:
            return {"embedding": emb, **{FPN_PREFIX + k: v for k, v in fpn.items()}}
        out = self._maps(padded, fpn, (int(h), int(w)))
        out["embedding"] = emb
        return out

    def _maps(self, padded: torch.Tensor, fpn: OrderedDict, hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Per class, max over instances of score x mask probability, as logits (B, 1, H, W)."""
        b = padded.shape[0]
        images = ImageList(padded, [hw] * b)
        proposals, _ = self.detector.rpn(images, fpn)
        detections, _ = self.detector.roi_heads(fpn, proposals, images.image_sizes)
        probs = padded.new_zeros(b, len(self.tasks), *hw)
        for i, det in enumerate(detections):
            if det["boxes"].shape[0] == 0:
                continue
            pasted = paste_masks_in_image(det["masks"], det["boxes"], hw, padding=1)[:, 0]  # (N, H, W) probabilities
            weighted = det["scores"][:, None, None] * pasted
            for c, task in enumerate(self.tasks):
                sel = det["labels"] == self.labels[task]
                if sel.any():
                    probs[i, c] = weighted[sel].amax(dim=0)
        logits = torch.logit(probs.clamp(PROB_EPS, 1 - PROB_EPS))
        return {task: logits[:, c : c + 1] for c, task in enumerate(self.tasks)}

    def detector_losses(self, outputs: Mapping[str, torch.Tensor], targets: list[dict[str, torch.Tensor]], keep: torch.Tensor, hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """torchvision's RPN and ROI-head losses on the train-mode features of images ``keep``.

        Args:
            outputs: this model's train-mode output (the ``_fpn.*`` levels are read).
            targets: one dict per kept image: boxes (N, 4) float, labels (N,) int64, masks (N, H, W) uint8.
            keep: (K,) long positions of those images in the batch.
            hw: the images' (unpadded) size.

        Returns:
            objectness, rpn_box_reg, classifier, box_reg, mask: scalar tensors.
        """
        if not self.training:
            raise RuntimeError("Mask R-CNN losses need the model in train mode (model.train()); in eval mode its outputs are logit maps")
        fpn = OrderedDict((k[len(FPN_PREFIX):], v[keep]) for k, v in outputs.items() if k.startswith(FPN_PREFIX))
        if not fpn:
            raise KeyError(f"outputs lack the {FPN_PREFIX}* feature maps: pass the outputs of this model's train-mode forward")
        first = next(iter(fpn.values()))
        # The anchor generator reads only the padded batch's shape: an expanded zero costs no memory.
        images = ImageList(first.new_zeros(()).expand(len(keep), 3, *_padded(*hw)), [hw] * len(keep))
        proposals, rpn_losses = self.detector.rpn(images, fpn, targets)
        _, roi_losses = self.detector.roi_heads(fpn, proposals, images.image_sizes, targets)
        losses = {**rpn_losses, **roi_losses}
        return {t: losses[f"loss_{t}"] for t in LOSS_TERMS}

    def make_loss(self, train_cfg=None) -> "MaskRCNNLoss":
        """The loss the engine trains this model with (``cmtlib.models.losses_for.loss_for``)."""
        return MaskRCNNLoss(self, MultiTaskLoss.from_config(train_cfg) if train_cfg is not None else MultiTaskLoss())

    def describe_own(self) -> dict:
        return {
            "arch": f"torchvision Mask R-CNN, {self.backbone_name}-FPN backbone; instance masks -> per-class logit maps",
            "labels": dict(self.labels),
            "preprocessing": {**self.preprocess.describe(), "resize": "none: padded to a multiple of 32"},
            "training": "own loss: MaskRCNNLoss (model.make_loss), instance targets from connected components of the masks",
        }


class MaskRCNNResNet50(MaskRCNNAdapter):
    """torchvision's standard ResNet50-FPN Mask R-CNN (the paper's protocol, on a GPU)."""

    name = "maskrcnn_resnet50"
    backbone_name = "resnet50"


# ---- targets and loss -----------------------------------------------------------------------------


def connected_components(masks: torch.Tensor, check_every: int = 4) -> torch.Tensor:
    """Label 8-connected components of binary masks by max-label propagation.

    Each foreground pixel starts with its own id; repeated 3x3 max-pooling within the foreground
    spreads every component's largest id over it (converged when nothing changes).

    Shape:
        masks: (N, H, W) bool.
        returns: (N, H, W) float32, 0 on background, one positive id per component.
    """
    n, h, w = masks.shape
    fg = masks.float()
    labels = torch.arange(1, h * w + 1, device=masks.device, dtype=torch.float32).view(1, h, w) * fg  # ids exact below 2^24
    while True:
        before = labels
        for _ in range(check_every):
            labels = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * fg
        if torch.equal(labels, before):
            return labels


def instance_targets(batch: Mapping[str, torch.Tensor], labels: Mapping[str, int], require_all_masks: bool = True, min_area: int = MIN_AREA) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """Mask R-CNN targets from a batch's masks: one instance per connected component.

    Args:
        batch: the loader's batch (docs/CONTRACTS.md): ``lung`` / ``disease`` (B, 1, H, W) 0/1 and
            their ``has_*`` switches.
        labels: task -> detector label (lung 1, disease 2).
        require_all_masks: an image takes part only when every task's mask is known (a detector
            reads every unannotated region as background, so an unknown disease mask would teach
            "no disease here"); False: when any is (unknown ones then give no instances).
        min_area: smallest component, in pixels, that becomes an instance.

    Returns:
        (targets, keep): one dict per kept image (boxes (N, 4) float32 as [x0, y0, x1, y1] pixel
        edges, labels (N,) int64, masks (N, H, W) uint8), and keep (K,) long, their batch positions.
        Images without a known mask contribute nothing.
    """
    tasks = list(labels)
    known = torch.stack([batch[f"has_{t}"].bool() for t in tasks])  # (T, B)
    keep = torch.nonzero(known.all(0) if require_all_masks else known.any(0)).flatten()
    if keep.numel() == 0:
        return [], keep
    masks = torch.stack([batch[t][keep, 0] >= 0.5 for t in tasks], dim=1)  # (K, T, H, W)
    k, t, h, w = masks.shape
    comps = connected_components(masks.reshape(k * t, h, w)).view(k, t, h, w)
    known_k = known[:, keep].T.cpu()  # (K, T)
    targets = []
    for i in range(k):
        boxes, labs, inst = [], [], []
        for j, task in enumerate(tasks):
            if not known_k[i, j]:
                continue
            ids = torch.unique(comps[i, j])
            ids = ids[ids > 0]
            m = comps[i, j][None] == ids[:, None, None]  # (M, H, W)
            m = m[m.flatten(1).sum(1) >= min_area]
            if m.shape[0]:
                b = torchvision.ops.masks_to_boxes(m)  # inclusive pixel indices
                boxes.append(b + torch.tensor([0.0, 0.0, 1.0, 1.0], device=b.device))  # -> pixel edges
                labs.append(torch.full((m.shape[0],), labels[task], dtype=torch.int64, device=m.device))
                inst.append(m.to(torch.uint8))
        dev = masks.device
        targets.append({
            "boxes": torch.cat(boxes) if boxes else torch.zeros(0, 4, device=dev),
            "labels": torch.cat(labs) if labs else torch.zeros(0, dtype=torch.int64, device=dev),
            "masks": torch.cat(inst) if inst else torch.zeros(0, h, w, dtype=torch.uint8, device=dev),
        })
    return targets, keep


@dataclass
class MaskRCNNLoss:
    """The engine's ``loss_fn`` for MaskRCNNAdapter: ``(outputs, batch) -> (total, parts)``.

    Train-mode outputs (``_fpn.*`` keys): torchvision's five losses summed (weights 1), parts
    ``objectness``, ``rpn_box_reg``, ``classifier``, ``box_reg``, ``mask``; a batch in which no image
    has its masks gives 0 (still attached to the graph, so ``backward`` works) and all five parts 0.
    Eval-mode outputs (logit maps): ``seg_loss`` (the multi-task BCE on lung / disease).
    Single process only: under torchrun a batch without masks would leave the heads without
    gradients, which DistributedDataParallel cannot reduce.
    """

    model: MaskRCNNAdapter
    seg_loss: MultiTaskLoss = field(default_factory=MultiTaskLoss)
    require_all_masks: bool = True
    min_area: int = MIN_AREA

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not any(k.startswith(FPN_PREFIX) for k in outputs):
            return self.seg_loss(outputs, batch)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise NotImplementedError("the Mask R-CNN baseline trains in a single process; run it without torchrun")
        targets, keep = instance_targets(batch, self.model.labels, self.require_all_masks, self.min_area)
        if keep.numel() == 0:
            zero = sum(v.sum() for k, v in outputs.items() if k.startswith(FPN_PREFIX)) * 0.0
            return zero, {t: zero.detach() for t in LOSS_TERMS}
        hw = (int(batch["image"].shape[-2]), int(batch["image"].shape[-1]))
        parts = self.model.detector_losses(outputs, targets, keep, hw)
        total = torch.stack(list(parts.values())).sum()
        return total, {k: v.detach() for k, v in parts.items()}
