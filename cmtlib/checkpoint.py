"""Self-describing checkpoints that load with `torch.load(path, weights_only=True)`.

A checkpoint is a dict of plain data and tensors only (no pickled classes):
    format, format_version      'cmtlib-checkpoint', 1
    config                      the run's resolved flat params (every key; cmtlib.params)
    class_names                 cmtlib.models.base.CLASS_NAMES: each two-logit head's classes in index order
    versions                    cmtlib, torch, torchvision, python
    preprocessing               input size, channels, range, mean/std (from model.describe())
    model                       model.describe()
    epoch                       epochs completed (1-based: 1 after the first epoch)
    history                     one dict of numbers per completed epoch (engine.py)
    best                        {'by': criterion, 'value': best so far, 'epoch': its epoch}
    state_dict                  model weights
    optimizer                   optimizer.state_dict()
    rng                         torch CPU (and CUDA) generator states after the epoch, as uint8 tensors
Written atomically (cmtlib.fileio): a kill mid-save leaves the previous file whole.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

import cmtlib
from cmtlib.configs import ModelConfig
from cmtlib.errors import CmtError, MissingInputError
from cmtlib.fileio import atomic_path
from cmtlib.models.base import CLASS_NAMES
from cmtlib.models.registry import build_model

FORMAT = "cmtlib-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(CmtError, ValueError):
    """A checkpoint that is missing or cannot be used; the message says what to do."""


def versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses. torchvision's
    # version from its metadata: importing it costs seconds and saving a checkpoint needs none of it.
    return {"cmtlib": str(cmtlib.__version__), "torch": str(torch.__version__), "torchvision": _version("torchvision"),
            "python": platform.python_version()}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def plain(obj: Any) -> Any:
    """Recursively turn tuples into lists and numpy/torch scalars into numbers, so that the result
    loads with weights_only=True and compares equal after a round trip."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    for kind in (bool, int, float, str):  # exact types: subclasses (TorchVersion, IntEnum) are refused on load
        if isinstance(obj, kind):
            return kind(obj)
    if obj is None:
        return obj
    return str(obj)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def make_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    config: dict[str, Any],
    epoch: int,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    image_size: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of the module docstring (tensors stay on their device; torch.save moves
    nothing, torch.load maps them to the CPU)."""
    bare = unwrap(model)
    describe = plain(bare.describe()) if hasattr(bare, "describe") else {"name": type(bare).__name__}
    preprocessing = dict(describe.get("preprocessing", {}))
    preprocessing.update({"input_size": [int(image_size), int(image_size)], "resize": "to input_size x input_size, aspect ratio not kept (docs/CONTRACTS.md, Cache)"})
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": plain(config),
        "class_names": plain(CLASS_NAMES),
        "versions": versions(),
        "preprocessing": preprocessing,
        "model": describe,
        "epoch": int(epoch),
        "history": plain(history),
        "best": plain(best),
        "state_dict": {k: v.detach() for k, v in bare.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "rng": rng_state(),
    }
    if extra:
        ckpt.update(plain(extra))
    return ckpt


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temporary file beside `path`, then rename (a kill leaves the old file)."""
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


# What prediction needs of a checkpoint: no optimizer state (twice the weights for Adam), RNG or history.
INFERENCE_KEYS = ("format", "format_version", "config", "class_names", "versions", "preprocessing", "model", "epoch", "best", "state_dict")


def save_inference_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """The best checkpoint's weights and description only (a run's checkpoints/model.pt): a third of
    best.pt's size for Adam, read with mmap by `load_model`, so a cold `cmt predict` starts in a fraction of the time."""
    return save_checkpoint({k: ckpt[k] for k in INFERENCE_KEYS if k in ckpt}, path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True and check its format. `mmap`: tensors stay in the
    file's pages until touched (for inference: the weights are read as the model first uses them)."""
    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True, mmap=mmap)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cmtlib checkpoint (no format={FORMAT!r}); it may be a bare state_dict")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format_version']}; this cmtlib reads up to {FORMAT_VERSION}: upgrade cmtlib")
    return ckpt


def model_config(config: dict[str, Any]):
    """The ModelConfig stored in a checkpoint's flat config, with encoder_weights=none: the trained
    weights replace the encoder's anyway, so nothing is read from ImageNet files."""
    kwargs = {f.name: config[f.name] for f in fields(ModelConfig) if f.name in config}
    kwargs["encoder_weights"] = "none"
    return ModelConfig(**kwargs)


# torch.nn.init's in-place initialisers. On the meta device they only cost time, and the first
# normal_ there imports torch._dynamo (about a second of a cold `cmt predict`).
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
                 "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """torch.nn.init's initialisers as no-ops while a model is built for its weights to be loaded.
    Process-wide while it lasts: a model another thread initialises at that moment is not initialised."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITIALISERS if hasattr(torch.nn.init, name)}
    try:
        for name in saved:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint file (a run folder's: `Run.load_model`).

    The model is built on the meta device (no memory, no random initialisation of weights the
    checkpoint replaces anyway) and the checkpoint's tensors, memory-mapped, are assigned to it.

    Returns:
        (model in eval mode on `device`, the checkpoint without state_dict and optimizer).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint not found: {path}")
    ckpt = read_checkpoint(path, mmap=True)
    cfg = model_config(ckpt["config"])
    try:
        with torch.device("meta"), _no_init():
            model = build_model(cfg)
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise RuntimeError("a tensor the checkpoint does not hold stayed on the meta device")
    except (NotImplementedError, RuntimeError):  # a model that cannot be built on meta: the ordinary way
        model = build_model(cfg)
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model its config describes (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "it was written by another cmtlib version or edited"
        )
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "rng")}
    meta["path"] = str(path)
    return model, meta
