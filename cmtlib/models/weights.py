"""Encoder initialisation: torchvision's ImageNet VGG16-BN weights from a local file, or a state_dict.

Nothing here downloads: on an offline machine ImageNet weights come from ``$CMT_VGG16_BN_WEIGHTS``
or torch hub's checkpoint cache (where ``torchvision.models.vgg16_bn(weights="IMAGENET1K_V1")``
saves them on a machine that is online). Without them the encoder keeps its random
initialisation and a WARNING says where we looked.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import torch

from cmtlib.errors import CmtError, MissingInputError
from cmtlib.models.encoder import VGG16BNEncoder

log = logging.getLogger(__name__)

ENV_VAR = "CMT_VGG16_BN_WEIGHTS"
# File name of torchvision's VGG16_BN_Weights.IMAGENET1K_V1
# (url https://download.pytorch.org/models/vgg16_bn-6c64b313.pth; hub keeps the url's basename).
TORCHVISION_FILE = "vgg16_bn-6c64b313.pth"
ENCODER_PREFIX = "encoder."


class WeightsError(CmtError, ValueError):
    """A weights file that cannot be mapped onto the encoder; the message says why."""


def imagenet_candidates() -> list[Path]:
    """Where ``imagenet`` looks, in order: ``$CMT_VGG16_BN_WEIGHTS``, then torch hub's cache."""
    out = []
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        out.append(Path(env).expanduser())
    out.append(Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE)
    return out


def load_encoder_weights(encoder: VGG16BNEncoder, spec: str) -> str:
    """Initialise ``encoder`` from ``spec`` and say where its weights came from.

    Args:
        encoder: the encoder to fill in place.
        spec: ``imagenet`` (torchvision's vgg16_bn ImageNet file, found locally, else random init
            with a WARNING), ``none`` (keep the random init), or a path to a state_dict holding
            torchvision-style ``features.N.*`` keys, our ``blocks.b.j.*`` keys, or a whole CMTNet
            state_dict (``encoder.*`` keys).

    Returns:
        A short description for reports, e.g. ``"ImageNet (torchvision vgg16_bn, /path)"`` or
        ``"random init (ImageNet weights not found in ...)"``.

    Raises:
        FileNotFoundError: spec is a path that does not exist.
        WeightsError: the file lacks encoder tensors, has extra ones, or shapes differ.
    """
    spec = str(spec).strip()
    if spec.lower() in ("none", ""):
        return "random init (encoder_weights=none)"
    if spec.lower() == "imagenet":
        return _load_imagenet(encoder)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise MissingInputError(
            f"encoder_weights={spec!r} is neither 'imagenet', 'none' nor an existing state_dict file"
        )
    load_state_dict_file(encoder, path)
    return f"state_dict ({path})"


def _load_imagenet(encoder: VGG16BNEncoder) -> str:
    if encoder.width != 1.0 or encoder.in_channels != 3:
        msg = (
            f"ImageNet VGG16-BN weights need width 1.0 and 3 input channels (got width {encoder.width}, "
            f"{encoder.in_channels} channels): the encoder is randomly initialised. "
            "Set encoder_weights: none to silence this, or width: 1.0 to use ImageNet weights."
        )
        log.warning(msg)
        return f"random init (ImageNet weights need width 1.0, got {encoder.width})"
    candidates = imagenet_candidates()
    for path in candidates:
        if path.is_file():
            load_state_dict_file(encoder, path)
            return f"ImageNet (torchvision vgg16_bn, {path})"
    looked = ", ".join(str(p) for p in candidates)
    hint = "" if os.environ.get(ENV_VAR) else f" (set {ENV_VAR} to the file's path)"
    log.warning(
        "ImageNet VGG16-BN weights not found (looked in %s)%s; the encoder is randomly initialised. "
        "Copy %s there from a machine where torchvision downloaded it.",
        looked, hint, TORCHVISION_FILE,
    )
    return f"random init (ImageNet weights not found in {looked})"


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """A state_dict file (torch.load with weights_only=True); WeightsError if it holds anything else."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return state


def load_state_dict_file(encoder: VGG16BNEncoder, path: Path) -> None:
    """Load a state_dict file into the encoder, strictly."""
    encoder.load_state_dict(map_to_encoder(encoder, read_state_dict(path), source=str(path)), strict=True)


def map_to_encoder(encoder: VGG16BNEncoder, state: Mapping[str, torch.Tensor], source: str = "state_dict") -> dict[str, torch.Tensor]:
    """Rename a state_dict's keys to the encoder's and check every encoder tensor is filled.

    Accepts torchvision ``vgg16_bn`` keys (``features.N.*``; ``classifier.*`` is ignored), the
    encoder's own keys, or ``encoder.``-prefixed keys of a CMTNet state_dict (other keys ignored).
    A missing ``num_batches_tracked`` is filled with 0: torchvision's 2017 ImageNet file predates
    that buffer.

    Raises:
        WeightsError: naming the missing, unexpected or wrongly shaped tensors.
    """
    target = encoder.state_dict()
    if any(k.startswith("features.") for k in state):
        prefix_map = encoder.torchvision_key_map()
        mapped: dict[str, torch.Tensor] = {}
        unexpected = []
        for key, value in state.items():
            if not key.startswith("features."):
                continue
            module, _, leaf = key.rpartition(".")
            if module not in prefix_map:
                unexpected.append(key)
                continue
            mapped[f"{prefix_map[module]}.{leaf}"] = value
        kind = "torchvision vgg16_bn"
    elif any(k.startswith(ENCODER_PREFIX) for k in state):
        mapped = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        unexpected = [k for k in mapped if k not in target]
        kind = "CMTNet (encoder.*)"
    else:
        mapped = dict(state)
        unexpected = [k for k in mapped if k not in target]
        kind = "encoder"
    problems = _fit_problems(mapped, target, unexpected, "encoder")
    if problems:
        raise WeightsError(
            f"{source} ({kind} keys) does not fit a VGG16-BN encoder of width {encoder.width}: "
            + "; ".join(problems)
            + ". ImageNet-style files need width 1.0; our own files need the width they were saved with."
        )
    return {k: mapped[k] for k in target}


def _fit_problems(mapped: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], unexpected: list[str], what: str) -> list[str]:
    """What keeps `mapped` from loading into a module whose state_dict is `target`: missing,
    unexpected (as given) and wrongly shaped tensors, in words ([] = it fits). A missing
    ``num_batches_tracked`` is filled into `mapped` with 0 first: older torchvision files predate it.
    """
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(value)
    missing = [k for k in target if k not in mapped]
    wrong = [f"{k}: file {tuple(mapped[k].shape)} vs {what} {tuple(v.shape)}" for k, v in target.items() if k in mapped and mapped[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} {what} tensors missing (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (first: {'; '.join(wrong[:3])})")
    return problems


# ---- any torchvision network (the baselines) -------------------------------------------------

WEIGHTS_DIR_ENV = "CMT_WEIGHTS_DIR"


def torchvision_candidates(file_name: str) -> list[Path]:
    """Where ``imagenet`` looks for a torchvision file, in order: ``$CMT_WEIGHTS_DIR/<file>``, then
    torch hub's checkpoint cache (where torchvision saves a download)."""
    out = []
    folder = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    if folder:
        out.append(Path(folder).expanduser() / file_name)
    out.append(Path(torch.hub.get_dir()) / "checkpoints" / file_name)
    return out


def load_torchvision_weights(
    module: torch.nn.Module,
    spec: str,
    *,
    arch: str,
    file_name: str,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    remap=None,
    imagenet_ok: str = "",
) -> str:
    """Initialise a torchvision sub-network (a baseline's encoder) from ``spec``; never downloads.

    Args:
        module: the network to fill in place, e.g. ``densenet121().features``.
        spec: ``imagenet`` (torchvision's file ``file_name``, found locally, else random init with
            a WARNING), ``none``, or a path to a state_dict: torchvision's whole-model keys, the
            module's own keys, or a cmtlib model's (``encoder.``-prefixed) keys.
        arch: torchvision's name for the network (reports and messages).
        file_name: torchvision's file name for its ImageNet weights (its url's basename).
        prefix: torchvision's key prefix of ``module`` (``features.`` for DenseNet, VGG, MobileNet).
        skip: torchvision key prefixes that are not part of ``module`` (the classifier, ``fc.``).
        remap: optional function renaming torchvision keys (DenseNet's pre-2018 names).
        imagenet_ok: a reason ImageNet weights cannot fit (e.g. a narrowed network); '' = they fit.

    Returns:
        A short description for reports (``"ImageNet (torchvision densenet121, /path)"``,
        ``"random init (...)"`` or ``"state_dict (/path)"``).

    Raises:
        FileNotFoundError: spec is a path that does not exist.
        WeightsError: the file does not fit ``module`` (missing, unexpected or reshaped tensors).
    """
    spec = str(spec).strip()
    if spec.lower() in ("none", ""):
        return "random init (encoder_weights=none)"
    if spec.lower() == "imagenet":
        if imagenet_ok:
            log.warning("%s: %s; the network is randomly initialised. Set encoder_weights: none to silence this.", arch, imagenet_ok)
            return f"random init ({imagenet_ok})"
        candidates = torchvision_candidates(file_name)
        for path in candidates:
            if path.is_file():
                _load_into(module, path, prefix, skip, remap, arch)
                return f"ImageNet (torchvision {arch}, {path})"
        looked = ", ".join(str(p) for p in candidates)
        log.warning(
            "ImageNet weights of %s not found (looked in %s); the network is randomly initialised. Copy %s there "
            "from a machine where torchvision downloaded it, or set %s to a folder holding it.",
            arch, looked, file_name, WEIGHTS_DIR_ENV,
        )
        return f"random init (ImageNet weights not found in {looked})"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise MissingInputError(f"encoder_weights={spec!r} is neither 'imagenet', 'none' nor an existing state_dict file")
    _load_into(module, path, prefix, skip, remap, arch)
    return f"state_dict ({path})"


def _load_into(module: torch.nn.Module, path: Path, prefix: str, skip: tuple[str, ...], remap, arch: str) -> None:
    state = read_state_dict(path)
    target = module.state_dict()
    if any(k.startswith(ENCODER_PREFIX) for k in state):  # a cmtlib model's whole state_dict
        kind, mapped = "cmtlib model (encoder.*)", {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    elif set(state) <= set(target):
        kind, mapped = "own keys", dict(state)
    else:
        kind = f"torchvision {arch}"
        state = remap(dict(state)) if remap is not None else state
        mapped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(skip)}
    problems = _fit_problems(mapped, target, [k for k in mapped if k not in target], "model")
    if problems:
        raise WeightsError(f"{path} ({kind} keys) does not fit this {arch}: " + "; ".join(problems)
                           + ". ImageNet files need width 1.0; our own files need the width they were saved with.")
    module.load_state_dict({k: mapped[k] for k in target}, strict=True)
