"""One training / evaluation loop for every model (CMTNet, ablation variants, baselines).

`fit` knows nothing of CMTNet (STYLE rule 5): it calls `model(batch["image"])` and
`loss_fn(outputs, batch)` and reads only the output contract's keys for its cheap validation
metrics (`multilabel` column 0 for COVID AUC, `lung` / `disease` for Dice), skipping absent ones.
`train(params)` wires data, model and loss and owns the run folder: config.yaml, run.json,
history.csv/json, checkpoints/{last,best}.pt, train.log.

Best checkpoint: lowest validation loss (`best_by: val_loss`, the default) or highest validation
COVID AUC (`best_by: val_covid_auc`). Validation loss is the default because it covers every task
(the segmentation heads too) and keeps improving after AUC saturates at 1.0 on easy data, where an
AUC criterion would freeze on the first epoch that reaches it; ties keep the earlier epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from cmtlib.errors import ConfigError
from cmtlib.runtime import DistInfo, autocast, autocast_dtype, mix_seed
from cmtlib.train_config import BEST_BY, LR_SCHEDULES, TrainConfig

log = logging.getLogger("cmtlib.train")


def _check(cfg: TrainConfig) -> None:
    if cfg.best_by not in BEST_BY:
        raise ConfigError(f"best_by must be one of {', '.join(BEST_BY)}, got {cfg.best_by!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    if cfg.epochs < 1 or cfg.lr <= 0 or cfg.log_every < 1:
        raise ConfigError(f"need epochs >= 1, lr > 0 and log_every >= 1; got {cfg.epochs}, {cfg.lr}, {cfg.log_every}")


def _improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return best is None
    if best is None or not math.isfinite(best):
        return True
    return value < best if mode == "min" else value > best


def _weighted_parts(parts: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Per-term (mean x count, count): terms are means over the samples whose has_<term> switch
    is on (or over the batch when the batch has no such switch), so sums / counts average exactly."""
    keys = list(parts)
    n = batch["image"].shape[0]
    counts = [batch[f"has_{k}"].sum() if f"has_{k}" in batch else torch.tensor(n, device=batch["image"].device) for k in keys]
    counts_t = torch.stack([c.float() for c in counts])
    values = torch.stack([parts[k].detach().float() for k in keys])
    return keys, values * counts_t, counts_t


@torch.no_grad()
def validate(model: nn.Module, loss_fn: Callable, batches: Iterable[Mapping[str, torch.Tensor]], device: torch.device, amp: torch.dtype | None = None) -> dict[str, float]:
    """Validation loss and its terms (exact means over switched samples), COVID AUC and lung /
    disease Dice at 0.5 (mean over images with a known, non-empty mask). One sync at the end."""
    from cmtlib.metrics import roc_auc

    model.eval()
    total = torch.zeros((), device=device)
    n_images = 0
    keys: list[str] | None = None
    sums = counts = None
    covid_scores, covid_labels = [], []
    dice = {k: torch.zeros(2, device=device) for k in ("lung", "disease")}  # (sum, count)
    for batch in batches:
        with autocast(device, amp):
            outputs = model(batch["image"])
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, parts = loss_fn(outputs, batch)
        b = batch["image"].shape[0]
        total += loss.detach() * b
        n_images += b
        k, s, c = _weighted_parts(parts, batch)
        if keys is None:
            keys, sums, counts = k, s, c
        else:
            sums, counts = sums + s, counts + c
        if "multilabel" in outputs and "has_covid" in batch:
            known = batch["has_covid"]
            covid_scores.append(outputs["multilabel"][:, 0][known])
            covid_labels.append(batch["covid"][known])
        for task in dice:
            if task in outputs and f"has_{task}" in batch:
                pred = outputs[task] >= 0  # logit >= 0 <=> probability >= 0.5
                gt = batch[task] >= 0.5
                inter = (pred & gt).flatten(1).sum(1).float()
                size = pred.flatten(1).sum(1).float() + gt.flatten(1).sum(1).float()
                use = batch[f"has_{task}"] & (gt.flatten(1).sum(1) > 0)
                dice[task] += torch.stack([(2 * inter / size.clamp_min(1))[use].sum(), use.sum().float()])
    if n_images == 0:
        raise ConfigError("the validation split is empty; the run needs rows with split=val")
    out = {"val_loss": float(total.item() / n_images)}
    for key, s, c in zip(keys or [], (sums / counts.clamp_min(1)).tolist(), counts.tolist()):
        out[f"val_{key}"] = s if c > 0 else math.nan
    out["val_covid_auc"] = math.nan
    if covid_scores:
        y, s = torch.cat(covid_labels).cpu().numpy(), torch.cat(covid_scores).cpu().numpy()
        if len(np.unique(y)) == 2:
            out["val_covid_auc"] = roc_auc(y, s)
    for task, acc in dice.items():
        sum_, count = acc.tolist()
        out[f"val_{task}_dice"] = sum_ / count if count > 0 else math.nan
    return out


def fit(
    model: nn.Module,
    loss_fn: Callable,
    train_batches,
    val_batches,
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    dist: DistInfo = DistInfo(),
    resume: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `model` for cfg.epochs epochs; returns the history (one dict per epoch).

    Args:
        model: any module returning the output dict of DESIGN.md.
        loss_fn: `loss_fn(outputs, batch) -> (total, parts)`.
        train_batches: has `epoch(e)` yielding batches on the model's device, `len()` steps and
            `global_batch` (loader.TrainBatches).
        val_batches: an iterable of batches (loader.EvalBatches).
        run_dir: where history.* and checkpoints/ go (rank 0 only); None writes nothing.
        resume: a checkpoint dict (checkpoint.read_checkpoint) to continue from.
        config: the flat params stored in checkpoints.
        on_epoch: called with each history row (after it is written).
    """
    from tqdm.auto import tqdm

    from cmtlib.checkpoint import make_checkpoint, restore_rng, save_checkpoint

    _check(cfg)
    device = train_batches.data.device
    amp = autocast_dtype(cfg.precision, device)
    bare = model.to(device)
    if cfg.channels_last:
        bare = bare.to(memory_format=torch.channels_last)
    # The fused CUDA kernel updates all parameters in a few launches instead of several per tensor.
    optimizer = torch.optim.Adam(bare.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"by": cfg.best_by, "value": None, "epoch": None}
    start_epoch = 0
    if resume is not None:
        bare.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        history, best, start_epoch = list(resume["history"]), dict(resume["best"]), int(resume["epoch"])
        restore_rng(resume["rng"])
        if run_dir is not None and dist.is_main:
            write_history(history, Path(run_dir))  # a kill after last.pt but before the history files
    net: nn.Module = bare
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(bare, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
    writes = ckpt_dir is not None and dist.is_main
    steps = len(train_batches)
    for epoch in range(start_epoch, cfg.epochs):
        # Dropout and any other global-RNG use repeat per epoch, also after a resume.
        torch.manual_seed(mix_seed(cfg.seed, epoch, dist.rank, 3))
        net.train()
        t0 = time.perf_counter()
        acc: torch.Tensor | None = None
        keys: list[str] = []
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not dist.is_main or None, leave=False)
        for step, batch in enumerate(train_batches.epoch(epoch)):
            if cfg.lr_schedule == "cosine":
                lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch * steps + step) / (cfg.epochs * steps)))
                for group in optimizer.param_groups:
                    group["lr"] = lr
            with autocast(device, amp):
                outputs = net(batch["image"])
            loss, parts = loss_fn({k: v.float() for k, v in outputs.items()}, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_losses = torch.stack([loss.detach().float()] + [parts[k].detach().float() for k in (keys or parts)])
            if acc is None:
                keys, acc = list(parts), torch.zeros_like(step_losses)
            acc += step_losses  # stays on the device: no sync per step
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                bar.set_postfix(loss=f"{acc[0].item() / (step + 1):.4f}")  # the one sync per log_every steps
            bar.update(1)
        bar.close()
        if acc is None:
            raise ConfigError("the training epoch had no batches; lower batch_size or add training images")
        if dist.enabled:
            import torch.distributed as tdist

            tdist.all_reduce(acc)
            acc /= dist.world_size
        train_seconds = time.perf_counter() - t0
        means = (acc / steps).tolist()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "seconds": 0.0,
            "images_per_s": steps * train_batches.global_batch / train_seconds,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": means[0],
        }
        row.update({f"train_{k}": v for k, v in zip(keys, means[1:])})
        row.update(validate(bare, loss_fn, val_batches, device, amp))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if _improved(row[cfg.best_by], best["value"], BEST_BY[cfg.best_by]):
            best = {"by": cfg.best_by, "value": row[cfg.best_by], "epoch": epoch + 1}
        is_best = best["epoch"] == epoch + 1
        if writes:
            ckpt = make_checkpoint(bare, optimizer, config=dict(config or {}), epoch=epoch + 1, history=history, best=best, image_size=train_batches.data.size)
            # best.pt before last.pt: a kill in between leaves last.pt at the previous epoch, so a
            # resume redoes this epoch and writes best.pt again.
            if is_best:
                save_checkpoint(ckpt, ckpt_dir / "best.pt")
            save_checkpoint(ckpt, ckpt_dir / "last.pt")
            write_history(history, Path(run_dir))
        log.info(_epoch_line(row, cfg.epochs, is_best))
        if on_epoch is not None:
            on_epoch(row)
    return history  # the trained weights live in `model` itself (DDP and compile share its parameters)


def write_history(history: list[dict[str, Any]], run_dir: Path) -> None:
    """history.csv and history.json, each written atomically."""
    import pandas as pd

    from cmtlib.fileio import atomic_path, write_json

    write_json(run_dir / "history.json", history)
    with atomic_path(run_dir / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def _epoch_line(row: Mapping[str, Any], epochs: int, is_best: bool) -> str:
    terms = ", ".join(f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("train_") and k != "train_loss")
    val = f"val loss {row['val_loss']:.4f}, COVID AUC {row['val_covid_auc']:.4f}, lung Dice {row['val_lung_dice']:.4f}"
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} ({terms}); {val}; "
        f"{row['images_per_s']:.1f} img/s, {row['seconds']:.1f} s" + (" [best]" if is_best else "")
    )


def unfinished_start(run_dir: Path) -> bool:
    """True when `run_dir` holds nothing but train.log: a start that failed before writing
    config.yaml, run.json or a checkpoint (a cache at another size, an empty split). A rerun may
    reuse such a folder; a folder holding anything else is a run or the user's, and stays as it is."""
    return run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == ["train.log"]


def train(params, resume: bool = False, overwrite: bool = False) -> Path:
    """Prepare data, build model and loss, `fit`, and write the run folder; returns its path.

    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 alone writes files.
    """
    import datetime as dt

    import torchvision

    import cmtlib
    from cmtlib.checkpoint import read_checkpoint
    from cmtlib.data.loader import EvalBatches, TrainBatches, load_split, open_cache_folder
    from cmtlib.data.prepare import prepare_data
    from cmtlib.fileio import write_json
    from cmtlib.models.losses_for import loss_for
    from cmtlib.models.registry import build_model
    from cmtlib.params import dump_params
    from cmtlib.runtime import (RunLogging, barrier, check_resume_config, claim_run_dir, describe_device, dist_from_env, git_commit,
                                init_distributed, resolve_device, run_dir_for, seed_everything, set_threads, shutdown_distributed)

    cfg = params.train
    _check(cfg)
    dist = dist_from_env()
    device = resolve_device(cfg.device, dist.local_rank)
    started = init_distributed(device, dist)
    run_dir = run_dir_for(params)
    flat = params.flat()
    # Decided on every rank before rank 0 touches the folder, so all ranks agree on `resume`.
    reuse = unfinished_start(run_dir) and not (resume and overwrite)
    if reuse:
        resume = False  # nothing to resume: no epoch, no config.yaml; start afresh in the same folder
    try:
        if dist.is_main and not reuse:
            claim_run_dir(run_dir, resume, overwrite)
            if resume:
                check_resume_config(run_dir, flat)
        barrier(dist)
        with RunLogging(run_dir, dist.is_main):
            if reuse:
                log.info("%s holds only the train.log of an earlier start that stopped before writing a run; starting afresh in it", run_dir)
            set_threads(cfg.threads)
            seed_everything(cfg.seed)
            cache_dir = prepare_data(params)
            cache = open_cache_folder(cache_dir)
            if cache.size != params.data.image_size:
                raise ConfigError(f"cache {cache_dir} is {cache.size} px but image_size is {params.data.image_size}")
            train_data, val_data = load_split(cache, "train", device), load_split(cache, "val", device)
            if len(val_data) == 0:
                raise ConfigError(f"cache {cache_dir} has no rows with split=val; the best checkpoint and the COVID threshold need a validation split")
            torch.manual_seed(cfg.seed)
            model = build_model(params.model)
            loss_fn = loss_for(model, cfg)  # the model's own loss when it has one (Mask R-CNN), else MultiTaskLoss
            train_batches = TrainBatches(
                train_data, cfg.batch_size, seed=cfg.seed, covid_oversample=cfg.covid_oversample, rotate_deg=cfg.rotate_deg,
                translate_px=cfg.translate_px, dist=dist, channels_last=cfg.channels_last,
            )
            val_batches = EvalBatches(val_data, cfg.eval_batch_size, channels_last=cfg.channels_last)
            last = run_dir / "checkpoints" / "last.pt"
            ckpt = read_checkpoint(last, map_location=device) if resume and last.is_file() else None
            if resume and ckpt is None:
                log.info("no epoch of %s finished before it stopped: starting it from epoch 1", run_dir)
            amp = autocast_dtype(cfg.precision, device)
            info: dict[str, Any] = {}
            if dist.is_main:
                dump_params(params, run_dir / "config.yaml")
                old = json.loads((run_dir / "run.json").read_text()) if resume and (run_dir / "run.json").is_file() else {}
                info = {
                    **old,
                    "name": params.run_name, "params_file": params.source, "run_dir": str(run_dir), "status": "running",
                    "device": describe_device(device), "world_size": dist.world_size, "precision": "bf16" if amp else "fp32",
                    "torch": torch.__version__, "torchvision": torchvision.__version__, "cmtlib": cmtlib.__version__,
                    "git_commit": git_commit(), "model": params.model.model,
                    "encoder_weights_source": getattr(model, "encoder_weights_source", params.model.encoder_weights),
                    "data_cache": str(cache_dir), "manifest": cache.meta.get("manifest", ""), "manifest_hash": cache.meta.get("manifest_hash", ""),
                    "n_train": len(train_data), "n_val": len(val_data), "steps_per_epoch": len(train_batches),
                    "images_per_epoch": train_batches.images_per_epoch, "start_time": old.get("start_time") or dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "end_time": None,
                }
                if resume:
                    info["resumed_at"] = old.get("resumed_at", []) + [{"time": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "from_epoch": int(ckpt["epoch"]) if ckpt else 0}]
                write_json(run_dir / "run.json", info)
            log.info(
                "training %s on %s: %d train images (%d per epoch with COVID x%g), %d val, %d steps of %d",
                params.model.model, describe_device(device), len(train_data), train_batches.images_per_epoch,
                cfg.covid_oversample, len(val_data), len(train_batches), train_batches.global_batch,
            )
            history = fit(model, loss_fn, train_batches, val_batches, cfg, run_dir, dist=dist, resume=ckpt, config=flat)
            if dist.is_main:
                info.update(status="finished", end_time=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                            seconds_per_epoch=[round(r["seconds"], 3) for r in history], epochs_done=len(history))
                write_json(run_dir / "run.json", info)
                log.info("run folder: %s", run_dir)
        barrier(dist)
    finally:
        if started:
            shutdown_distributed()
    return run_dir
