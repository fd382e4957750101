"""The paper's deep baselines (Section V-B, Table IV, Figs. 5-8): DenseNet121, MobileNetV2, ResNet18,
VGG19 + FC; UNet, SegNet, Mask R-CNN. They train and evaluate like CMTNet, with the one engine, from
params/baselines/*.yaml (`cmt train --params params/baselines/<name>.yaml`), or beside a report's run
with its data and training keys and only the file's model keys (``setting_params``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from cmtlib.models.registry import undeclared_switches
from cmtlib.params import ParamsError, build_params, parse_overrides

log = logging.getLogger("cmtlib.experiments")

DEEP_BASELINES: dict[str, str] = {  # registry name -> the paper's row (Table IV) or figure (Figs. 5-6)
    "densenet121": "DenseNet121 + FC", "mobilenet_v2": "MobileNetv2 + FC", "resnet18": "ResNet18 + FC", "vgg19": "VGG19 + FC",
    "unet": "UNet", "segnet": "SegNet", "maskrcnn": "Mask R-CNN (ResNet18-FPN)", "maskrcnn_resnet50": "Mask R-CNN (ResNet50-FPN)",
}
# The paper's protocol (Section IV-C), against which a CPU run states its reductions.
PAPER_PROTOCOL = {"image_size": 224, "width": 1.0, "epochs": 30, "encoder_weights": "imagenet"}


# ---- deep baselines and the comparison table ---------------------------------------------------


def metrics_row(name: str, metrics: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One comparison-table row: COVID AUC, EER, sensitivity at 99 % specificity and accuracy, lung /
    disease Dice and IoU (each with CIs), healthy / other accuracy; NaN where a model has no such output."""
    def get(section: str, key: str) -> float:
        v = (metrics.get(section) or {}).get(key)
        return math.nan if v is None else float(v)

    row: dict[str, Any] = {"name": name}
    for section, key in (("covid", "auc"), ("covid", "eer"), ("covid", "sens_at_spec99"), ("covid", "accuracy"), ("lung", "dice"),
                         ("lung", "iou"), ("disease", "dice"), ("disease", "iou")):
        for suffix in ("", "_ci_low", "_ci_high"):
            row[f"{section}_{key}{suffix}"] = get(section, key + suffix)
    row["healthy_accuracy"], row["other_accuracy"] = get("healthy", "accuracy"), get("other", "accuracy")
    row.update(extra)
    return row


def reduction_note(params) -> str:
    """How a run departs from the paper's protocol (224 px, width 1.0, 30 epochs, ImageNet), for the
    report to say so; '' when it does not."""
    got = {"image_size": params.data.image_size, "width": params.model.width, "epochs": params.train.epochs, "encoder_weights": params.model.encoder_weights}
    diffs = [f"{k} {got[k]} (paper {v})" for k, v in PAPER_PROTOCOL.items() if got[k] != v]
    return ("reduced for the CPU: " + ", ".join(diffs)) if diffs else ""


def baseline_params_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """params/baselines/*.yaml, sorted (one per deep baseline)."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parents[2] / "params" / "baselines"
    return sorted(folder.glob("*.yaml"))


# ---- baselines at a report's setting -----------------------------------------------------------

MODEL_KEYS = ("model", "tasks", "width", "encoder_weights", "head_hidden")  # what a baseline file contributes


def _override_values(overrides: Iterable[str], name: str) -> dict[str, Any]:
    """``key=value`` entries for everyone and ``name:key=value`` entries for ``name``, parsed as YAML."""
    mine = []
    for item in overrides:
        target, sep, rest = str(item).partition(":")
        if sep and "=" not in target:
            if not rest:
                raise ParamsError(f"baseline override {item!r}: expected NAME:key=value")
            if target == name:
                mine.append(rest)
        else:
            mine.append(str(item))
    return parse_overrides(mine)


def setting_params(run_params, name: str, params_file: str | os.PathLike | None = None, *, image_size: int = 0, epochs: int = 0,
                   seed: int | None = None, overrides: Iterable[str] = (), run_dir: str | os.PathLike | None = None):
    """A run's params for training ``name`` beside it: its data, split, optimiser, augmentation and
    metrics, with only the model keys (MODEL_KEYS) of ``params_file`` (a baseline; None = the run's own
    model), then ``overrides`` (``key=value`` or ``name:key=value``), ``image_size`` / ``epochs`` when
    non-zero, ``seed`` and ``run_dir``. Other keys in the baseline file (its own ``epochs``, say) are
    left out: the run being compared with decides them."""
    values = run_params.flat()
    if params_file is not None:
        own = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
        values.update({k: v for k, v in own.items() if k in MODEL_KEYS})
        # The run's switches reach the baseline where its model declares them (ContractModel.SWITCHES);
        # the others stay off (lung focus is CMTNet's: a baseline classifies the film as the paper's did).
        values.update(undeclared_switches(values["model"]))
    values.update(_override_values(overrides, name))
    values.update({k: v for k, v in (("image_size", image_size), ("epochs", epochs)) if v})
    values.update({"run_name": name, "seed": run_params.train.seed if seed is None else int(seed)})
    if run_dir is not None:
        values["run_dir"] = str(Path(run_dir).resolve())
    return build_params(values, name=name, source=str(params_file or run_params.source))
