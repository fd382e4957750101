"""One training / evaluation loop for every model (CMTNet, ablation variants, baselines).

`fit` knows nothing of CMTNet (STYLE rule 5): it calls `model(batch["image"])` and
`loss_fn(outputs, batch)` and reads only the output contract's keys for its cheap validation
metrics (`multilabel` column 0 for COVID AUC, `lung` / `disease` for Dice), skipping absent ones.
`train(params)` wires data, model and loss and writes the run folder through cmtlib.run.Run:
config.yaml, run.json, history, checkpoints, train.log, and at the end the validation films scored by
the best checkpoint (predictions_val.csv) with the operating threshold chosen on them (threshold.json)
and, from one more pass over the training films, the in-distribution reference whose thresholds are
set on that same validation pass (indist.npz, cmtlib.indist).
Validation runs the model through cmtlib.inference, the loop every other consumer uses too.

Best checkpoint: lowest validation loss (`best_by: val_loss`, the default) or highest validation
COVID AUC (`best_by: val_covid_auc`). Validation loss is the default because it covers every task
(the segmentation heads too) and keeps improving after AUC saturates at 1.0 on easy data, where an
AUC criterion would freeze on the first epoch that reaches it; ties keep the earlier epoch.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

import cmtlib
from cmtlib.checkpoint import versions, make_checkpoint, read_checkpoint, restore_rng, save_checkpoint, save_inference_checkpoint
from cmtlib.configs import BEST_BY, LR_SCHEDULES, TrainConfig
from cmtlib.data.loader import EvalBatches, TrainBatches, keep_covid_loss_within, load_split, make_batch, open_cache_folder, stratum_weights
from cmtlib.data.prepare import prepare_data
from cmtlib.errors import ConfigError
from cmtlib.indist import Descriptors, Verdicts, shorter_sides, spread_rows
from cmtlib.indist import fit as fit_indist
from cmtlib.inference import infer
from cmtlib.metrics import roc_auc
from cmtlib.metrics.operating import choose_thresholds, parse_rule
from cmtlib.models.losses_for import loss_for
from cmtlib.models.registry import build_model
from cmtlib.predictions import predictions_frame, with_threshold
from cmtlib.run import Run, RunInfo, run_dir_for
from cmtlib.runtime import (
    DistInfo,
    autocast,
    autocast_dtype,
    barrier,
    describe_device,
    dist_from_env,
    git_commit,
    init_distributed,
    mix_seed,
    resolve_device,
    seed_everything,
    set_threads,
    shutdown_distributed,
)

log = logging.getLogger("cmtlib.train")


def _check(cfg: TrainConfig) -> None:
    if cfg.best_by not in BEST_BY:
        raise ConfigError(f"best_by must be one of {', '.join(BEST_BY)}, got {cfg.best_by!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    parse_rule(cfg.threshold_rule)  # a misspelt rule must stop the run before training, not after it
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


class _LossSums:
    """Validation loss and its terms summed on the device, batch by batch (an `infer` hook)."""

    def __init__(self, loss_fn: Callable):
        self.loss_fn, self.total, self.n_images = loss_fn, None, 0
        self.keys: list[str] | None = None
        self.sums = self.counts = None

    def __call__(self, outputs: dict[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        loss, parts = self.loss_fn(outputs, batch)
        b = batch["image"].shape[0]
        self.total = loss.detach() * b if self.total is None else self.total + loss.detach() * b
        self.n_images += b
        k, s, c = _weighted_parts(parts, batch)
        if self.keys is None:
            self.keys, self.sums, self.counts = k, s, c
        else:
            self.sums, self.counts = self.sums + s, self.counts + c


def validate(model: nn.Module, loss_fn: Callable, batches: Iterable[Mapping[str, torch.Tensor]], device: torch.device, amp: torch.dtype | None = None) -> dict[str, float]:
    """Validation loss and its terms (exact means over switched samples), COVID AUC and lung /
    disease Dice at 0.5 (mean over images with a known, non-empty mask), through cmtlib.inference:
    outputs stay on the device until one copy at the end."""
    losses = _LossSums(loss_fn)
    res = infer(model, batches, amp=amp, targets=("covid", "has_covid"), on_batch=losses)
    if losses.n_images == 0:
        raise ConfigError("the validation split is empty; the run needs rows with split=val")
    out = {"val_loss": float(losses.total.item() / losses.n_images)}
    for key, s, c in zip(losses.keys or [], (losses.sums / losses.counts.clamp_min(1)).tolist(), losses.counts.tolist()):
        out[f"val_{key}"] = s if c > 0 else math.nan
    out["val_covid_auc"] = math.nan
    known = res.targets.get("has_covid")
    if known is not None and not np.isnan(res.columns["p_covid"]).all():
        y, scores = res.targets["covid"][known], res.columns["p_covid"][known]
        if len(np.unique(y)) == 2:
            out["val_covid_auc"] = roc_auc(y, scores)
    for task in ("lung", "disease"):
        d = res.columns[f"{task}_dice"]
        out[f"val_{task}_dice"] = float(np.nanmean(d)) if (~np.isnan(d)).any() else math.nan
    return out


def fit(
    model: nn.Module,
    loss_fn: Callable,
    train_batches,
    val_batches,
    cfg: TrainConfig,
    run: Run | None = None,
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
        run: the run folder history and checkpoints go to (rank 0 only); None writes nothing.
        resume: a checkpoint dict (checkpoint.read_checkpoint) to continue from.
        config: the flat params stored in checkpoints.
        on_epoch: called with each history row (after it is written).
    """
    _check(cfg)
    device = train_batches.data.device
    amp = autocast_dtype(cfg.precision, device)
    state = _TrainState.start(model, cfg, device, resume)
    if resume is not None and run is not None and dist.is_main:
        run.write_history(state.history)  # a kill after last.pt but before the history files
    net = _wrap(state.model, cfg, dist, device)
    for epoch in range(state.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        keys, means = _train_epoch(net, state.optimizer, loss_fn, train_batches, cfg, epoch, amp, dist)
        train_seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "seconds": 0.0,
            "images_per_s": len(train_batches) * train_batches.global_batch / train_seconds,
            "lr": state.optimizer.param_groups[0]["lr"],
            "train_loss": means[0],
        }
        row.update({f"train_{k}": v for k, v in zip(keys, means[1:])})
        row.update(validate(state.model, loss_fn, val_batches, device, amp))
        row["seconds"] = time.perf_counter() - t0
        is_best = state.record(row, cfg)
        if run is not None and dist.is_main:
            state.save(run, config, is_best, train_batches.data.size)
        log.info(_epoch_line(row, cfg.epochs, is_best))
        if on_epoch is not None:
            on_epoch(row)
    return state.history  # the trained weights live in `model` itself (DDP and compile share its parameters)


class _TrainState:
    """The model, its optimizer, the history and the best epoch so far: what a checkpoint holds."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, history: list[dict[str, Any]], best: dict[str, Any], start_epoch: int):
        self.model, self.optimizer, self.history, self.best, self.start_epoch = model, optimizer, history, best, start_epoch

    @classmethod
    def start(cls, model: nn.Module, cfg: TrainConfig, device: torch.device, resume: Mapping[str, Any] | None) -> _TrainState:
        """Fresh, or restored from a checkpoint dict (weights, optimizer, history, RNG)."""
        bare = model.to(device)
        if cfg.channels_last:
            bare = bare.to(memory_format=torch.channels_last)
        # The fused kernel (CUDA and CPU) updates all parameters at once instead of several ops per tensor.
        optimizer = torch.optim.Adam(bare.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cuda", "cpu"))
        if resume is None:
            return cls(bare, optimizer, [], {"by": cfg.best_by, "value": None, "epoch": None}, 0)
        bare.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        restore_rng(resume["rng"])
        return cls(bare, optimizer, list(resume["history"]), dict(resume["best"]), int(resume["epoch"]))

    def record(self, row: dict[str, Any], cfg: TrainConfig) -> bool:
        """Append an epoch's row; True when it is the best so far."""
        self.history.append(row)
        mode = BEST_BY[cfg.best_by]
        if mode == "last":
            self.best = {"by": "last", "value": row["epoch"], "epoch": row["epoch"]}
        elif _improved(row[cfg.best_by], self.best["value"], mode):
            self.best = {"by": cfg.best_by, "value": row[cfg.best_by], "epoch": row["epoch"]}
        return self.best["epoch"] == row["epoch"]

    def save(self, run: Run, config: Mapping[str, Any] | None, is_best: bool, image_size: int) -> None:
        epoch = self.history[-1]["epoch"]
        ckpt = make_checkpoint(self.model, self.optimizer, config=dict(config or {}), epoch=epoch, history=self.history, best=self.best, image_size=image_size)
        # best.pt before last.pt: a kill in between leaves last.pt at the previous epoch, so a
        # resume redoes this epoch and writes best.pt again.
        if is_best:
            save_inference_checkpoint(ckpt, run.checkpoint("model"))
            save_checkpoint(ckpt, run.checkpoint("best"))
        save_checkpoint(ckpt, run.checkpoint("last"))
        run.write_history(self.history)


def _wrap(bare: nn.Module, cfg: TrainConfig, dist: DistInfo, device: torch.device) -> nn.Module:
    """DDP under torchrun, then torch.compile when asked; both share `bare`'s parameters."""
    net: nn.Module = bare
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(bare, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return net


def _train_epoch(net: nn.Module, optimizer, loss_fn: Callable, train_batches, cfg: TrainConfig, epoch: int,
                 amp: torch.dtype | None, dist: DistInfo) -> tuple[list[str], list[float]]:
    """One pass over the training batches; (loss term names, [mean total, mean per term])."""
    from tqdm.auto import tqdm

    device = train_batches.data.device
    steps = len(train_batches)
    # Dropout and any other global-RNG use repeat per epoch, also after a resume.
    torch.manual_seed(mix_seed(cfg.seed, epoch, dist.rank, 3))
    net.train()
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
    return keys, (acc / steps).tolist()


def _epoch_line(row: Mapping[str, Any], epochs: int, is_best: bool) -> str:
    terms = ", ".join(f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("train_") and k != "train_loss")
    val = f"val loss {row['val_loss']:.4f}, COVID AUC {row['val_covid_auc']:.4f}, lung Dice {row['val_lung_dice']:.4f}"
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} ({terms}); {val}; "
        f"{row['images_per_s']:.1f} img/s, {row['seconds']:.1f} s" + (" [best]" if is_best else "")
    )


def train(params, resume: bool = False, overwrite: bool = False) -> Path:
    """Prepare data, build model and loss, `fit`, and write the run folder; returns its path.

    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 alone writes files.
    """
    cfg = params.train
    _check(cfg)
    dist = dist_from_env()
    device = resolve_device(cfg.device, dist.local_rank)
    started = init_distributed(device, dist)
    run = Run(run_dir_for(params))
    # Decided on every rank before rank 0 touches the folder, so all ranks agree on `resume`.
    reuse = run.unfinished_start() and not (resume and overwrite)
    resume = resume and not reuse  # a reused folder holds no epoch and no config.yaml: start afresh in it
    try:
        if dist.is_main and not reuse:
            run.claim(resume, overwrite)
            if resume:
                run.check_resume(params.flat())
        barrier(dist)
        with run.logging(dist.is_main):
            if reuse:
                log.info("%s holds only the train.log of an earlier start that stopped before writing a run; starting afresh in it", run.path)
            _train_in(run, params, device, dist, resume)
        barrier(dist)
    finally:
        if started:
            shutdown_distributed()
    return run.path


def _train_in(run: Run, params, device: torch.device, dist: DistInfo, resume: bool) -> None:
    """The body of `train` once the run folder is claimed and logging to it."""
    cfg = params.train
    threads = run.info.threads if resume else 0
    if threads and threads != torch.get_num_threads():
        # A CPU run's numbers depend on its thread count (the order of sums): resume with the count it used.
        log.info("resuming with the %d CPU thread(s) the run used (threads=%s asked for now)", threads, cfg.threads)
    set_threads(threads or cfg.threads)
    seed_everything(cfg.seed)
    cache, train_data, val_data = _training_data(params, device)
    torch.manual_seed(cfg.seed)
    model = build_model(params.model)
    loss_fn = loss_for(model, cfg)  # the model's own loss when it has one (Mask R-CNN), else MultiTaskLoss
    if cfg.covid_loss_within:
        log.info("covid_loss_within: the COVID-19 loss counts for %d of %d training films (collections holding both labels)",
                 keep_covid_loss_within(train_data), len(train_data))
    train_batches = TrainBatches(
        train_data, cfg.batch_size, seed=cfg.seed, covid_oversample=cfg.covid_oversample, rotate_deg=cfg.rotate_deg,
        translate_px=cfg.translate_px, dist=dist, channels_last=cfg.channels_last,
        weights=stratum_weights(train_data.index, cfg.balance_cap) if cfg.balance_sources else None,
    )
    val_batches = EvalBatches(val_data, cfg.eval_batch_size, channels_last=cfg.channels_last)
    last = run.checkpoint("last")
    ckpt = read_checkpoint(last, map_location=device) if resume and last.is_file() else None
    if resume and ckpt is None:
        log.info("no epoch of %s finished before it stopped: starting it from epoch 1", run.path)
    if dist.is_main:
        run.dump_config(params)
        run.write_info(_run_info(run, params, model, device, dist, cache, train_batches, len(val_data), resume, ckpt))
    log.info(
        "training %s on %s: %d train images (%d per epoch with COVID x%g), %d val, %d steps of %d",
        params.model.model, describe_device(device), len(train_data), train_batches.images_per_epoch,
        cfg.covid_oversample, len(val_data), len(train_batches), train_batches.global_batch,
    )
    history = fit(model, loss_fn, train_batches, val_batches, cfg, run, dist=dist, resume=ckpt, config=params.flat())
    if dist.is_main:
        rows = spread_rows(len(train_data))  # at most FIT_FILMS training films, spread over the split, not augmented
        train_films = (make_batch(train_data, chunk, None, cfg.channels_last) for chunk in torch.from_numpy(rows).to(device).split(cfg.eval_batch_size))
        threshold = freeze_threshold(run, model, val_batches, val_data.index, cfg.threshold_rule, autocast_dtype(cfg.precision, device),
                                     train_batches=train_films, train_index=train_data.index.iloc[rows])
        run.update_info(status="finished", end_time=_now(), seconds_per_epoch=[round(r["seconds"], 3) for r in history], epochs_done=len(history),
                        threshold_rule=cfg.threshold_rule)
        log.info("COVID-19 operating threshold %.4g (%s): validation specificity %.3f, sensitivity %.3f; run folder: %s",
                 threshold["covid_threshold"], cfg.threshold_rule, threshold["val_specificity"], threshold["val_sensitivity"], run.path)


def freeze_threshold(run: Run, model: nn.Module, val_batches, val_index: pd.DataFrame, rule: str, amp: torch.dtype | None = None, *,
                     train_batches=None, train_index: pd.DataFrame | None = None) -> dict[str, Any]:
    """Score the validation films with the best checkpoint (predictions_val.csv) and choose the run's
    operating COVID-19 threshold on them, once, by `rule`, beside the paper's 99 %-specificity point
    (cmtlib.metrics.operating.choose_thresholds); write threshold.json. Given the training films
    (`train_batches`, in order), record the in-distribution reference too (`record_in_distribution`),
    its thresholds set on the same validation pass. Evaluation and prediction only read them
    (DESIGN.md, Metrics; docs/CONTRACTS.md, The in-distribution check)."""
    best = read_checkpoint(run.checkpoint("best"), map_location=next(model.parameters()).device)
    model.load_state_dict(best["state_dict"])
    described = Descriptors()
    columns = dict(infer(model, val_batches, amp=amp, on_batch=described).columns)
    if train_batches is not None:
        verdicts = record_in_distribution(run, model, train_batches, train_index, described.host(), val_index, amp)
        columns.update(verdicts.columns())
    scored = predictions_frame(val_index, columns, math.nan)
    record = {**choose_thresholds(scored, rule), "checkpoint": "best", "epoch": int(best["epoch"])}
    run.write(predictions_val=with_threshold(scored, record["covid_threshold"]))
    run.write_threshold(record)
    return record


def record_in_distribution(run: Run, model: nn.Module, train_batches, train_index: pd.DataFrame, val_described: dict[str, np.ndarray],
                           val_index: pd.DataFrame, amp: torch.dtype | None = None) -> Verdicts:
    """One pass of `model` (the best checkpoint) over the training films, the in-distribution reference
    fitted on them with thresholds set on the validation films' descriptors (cmtlib.indist.fit),
    written as the run's indist.npz; returns the validation films' verdicts."""
    t0 = time.perf_counter()
    described = Descriptors()
    infer(model, train_batches, amp=amp, on_batch=described)
    ref, verdicts = fit_indist(described.host(), val_described, shorter_sides(train_index), shorter_sides(val_index))
    run.write_indist(ref.to_arrays())
    if ref.available:
        log.info("in-distribution check: %d training films recorded (%s); its thresholds flag %.1f %% of the %d validation films (%.1f s)",
                 ref.n_train, ", ".join(ref.gaussians), 100 * ref.val_flagged, ref.n_val, time.perf_counter() - t0)
    else:
        log.info("in-distribution check not available for this run: %s", ref.why_not)
    return verdicts


def _training_data(params, device: torch.device):
    """(cache folder, train split, val split) on `device`, the data prepared first when needed."""
    cache_dir = prepare_data(params)
    cache = open_cache_folder(cache_dir)
    if cache.size != params.data.image_size:
        raise ConfigError(f"cache {cache_dir} is {cache.size} px but image_size is {params.data.image_size}")
    train_data, val_data = load_split(cache, "train", device), load_split(cache, "val", device)
    if len(val_data) == 0:
        raise ConfigError(f"cache {cache_dir} has no rows with split=val; the best checkpoint and the COVID threshold need a validation split")
    return cache, train_data, val_data


def _now() -> str:
    import datetime as dt

    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _run_info(run: Run, params, model: nn.Module, device: torch.device, dist: DistInfo, cache, train_batches, n_val: int,
              resume: bool, ckpt: Mapping[str, Any] | None) -> RunInfo:
    """run.json at the start of training (a resumed run keeps its start time and lists each resume)."""
    old = run.info if resume else RunInfo()
    resumed = old.resumed_at + [{"time": _now(), "from_epoch": int(ckpt["epoch"]) if ckpt else 0}] if resume else []
    return RunInfo(
        name=params.run_name, params_file=params.source, run_dir=str(run.path), status="running",
        device=describe_device(device), world_size=dist.world_size, threads=torch.get_num_threads(),
        precision="bf16" if autocast_dtype(params.train.precision, device) else "fp32",
        torch=str(torch.__version__), torchvision=versions()["torchvision"], cmtlib=cmtlib.__version__,
        git_commit=git_commit(), model=params.model.model,
        encoder_weights_source=getattr(model, "encoder_weights_source", params.model.encoder_weights),
        data_cache=str(cache.path), manifest=cache.meta.get("manifest", ""), manifest_hash=cache.meta.get("manifest_hash", ""),
        n_train=len(train_batches.data), n_val=n_val, steps_per_epoch=len(train_batches),
        images_per_epoch=train_batches.images_per_epoch, start_time=old.start_time or _now(), end_time=None, resumed_at=resumed,
    )
