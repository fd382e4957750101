"""What the training page (02_training) says about a run, as plain text and (label, value) rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cmtlib.run import RunInfo


def weights_text(info: RunInfo) -> str:
    """Where the encoder's starting weights came from, said plainly (run.json
    `encoder_weights_source`, written by cmtlib.models.weights)."""
    source = info.encoder_weights_source
    low = source.lower()
    if not source:
        return "Not recorded: the run folder does not say where the encoder's starting weights came from."
    if low.startswith("random") or low in {"none", ""}:
        reason = source[source.find("(") + 1:source.rfind(")")] if "(" in source else ""
        return ("The encoder started from random weights, without ImageNet pre-training"
                + (f" ({reason})" if reason else "") + ". The paper started from ImageNet weights, so these "
                "results are not directly comparable to its numbers.")
    if low.startswith("imagenet"):
        return "The encoder started from ImageNet-pretrained VGG16-BN weights (torchvision), as in the paper."
    return f"The encoder started from weights in a file given by the user: {source}."


def run_facts(info: RunInfo, history: pd.DataFrame | None) -> list[tuple[str, object]]:
    """(label, value) rows: device, precision, epochs, time per epoch, throughput, versions."""
    rows: list[tuple[str, object]] = [
        ("status", info.status or "not recorded"),
        ("device", info.device or "not recorded"),
        ("numeric precision", _precision(info.precision)),
        ("processes (GPUs)", info.world_size),
        ("training images / validation images", f"{info.n_train or '?'} / {info.n_val or '?'}"),
    ]
    if history is not None and len(history):
        seconds = pd.to_numeric(history.get("seconds", pd.Series(dtype=float)), errors="coerce").dropna()
        rows.append(("epochs run", len(history)))
        if len(seconds):
            rows.append(("time per epoch", f"{seconds.mean():.1f} s on average (total {seconds.sum() / 60:.1f} min)"))
        if "images_per_s" in history.columns:
            rows.append(("training speed", f"{np.nanmean(pd.to_numeric(history['images_per_s'], errors='coerce')):.1f} images per second"))
    rows += [
        ("started / finished", f"{info.start_time or '?'} / {info.end_time or 'not finished'}"),
        ("software", ", ".join(f"{k} {v}" for k, v in (("cmtlib", info.cmtlib), ("torch", info.torch), ("torchvision", info.torchvision)) if v)),
        ("git commit", info.git_commit or "not recorded"),
    ]
    return [(k, v) for k, v in rows if v not in (None, "")]


def _precision(p: str) -> str:
    return {"bf16": "bfloat16 mixed precision (GPU)", "fp32": "32-bit floating point"}.get(str(p), str(p) or "not recorded")


def best_epoch_text(history: pd.DataFrame | None, best_by: str = "val_loss") -> str:
    """Which epoch's weights the run keeps and why (the engine's best_by)."""
    if best_by == "last" and history is not None and not history.empty:
        return (f"The evaluated weights are those of the last epoch ({int(history['epoch'].max())}): the learning rate has "
                "decayed to zero there, and on small collections the lowest validation loss can fall on an underfit early epoch.")
    if history is None or history.empty or best_by not in history.columns:
        return ""
    values = pd.to_numeric(history[best_by], errors="coerce")
    if values.isna().all():
        return ""
    pos = int(values.idxmax() if best_by.endswith("auc") else values.idxmin())
    epoch = int(history["epoch"].iloc[pos]) if "epoch" in history.columns else pos + 1
    what = "highest validation COVID-19 AUC" if best_by.endswith("auc") else "lowest validation loss"
    return f"The evaluated weights are those of epoch {epoch}, the epoch with the {what} ({values.iloc[pos]:.4f})."
