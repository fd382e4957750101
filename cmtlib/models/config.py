"""Which network to build and how wide."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_TASKS: tuple[str, ...] = ("lung", "disease", "healthy", "multilabel")


@dataclass
class ModelConfig:
    # A name in cmtlib.models.registry (cmtnet, or a baseline such as resnet18).
    model: str = "cmtnet"
    # CMTNet tasks (paper's t1..t4 = lung, disease, healthy, multilabel); the ablation drops some,
    # keeping at least one segmentation task and multilabel (Table V).
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    # Channel multiplier on VGG16-BN (1.0 = the paper); 0.25 makes CPU runs feasible.
    width: float = 1.0
    # imagenet (torchvision's vgg16_bn weights from a local file or cache), none, or a path to a state_dict.
    encoder_weights: str = "imagenet"
    # Width of the two hidden layers in each 3-layer FC head (the paper gives none; 256 < D = 512 at width 1).
    head_hidden: int = 256
