"""`cmt evaluate`: predictions.csv and metrics.json of a run, at its frozen operating threshold.

Two thresholds (DESIGN.md, Metrics). The operating threshold (`covid.threshold`, `pred_covid`) was
chosen once, when the run was trained, by the rule in `threshold_rule` (threshold.json); evaluation
never recomputes it, on the run's own test split or on any other manifest (an external test set,
cached at the run's image size into `<run>/eval_cache/`). The paper's 99 %-specificity point
(`covid.sens_at_spec99`) is a metric: chosen on the run's validation films here when its cache is
on this machine, else read from threshold.json. A run trained before thresholds were frozen gets
its threshold chosen once here, by the paper's rule, and stored with a note.

Where the files go: the run folder itself when the run's own data is evaluated (the report chain
reads them there); for another manifest, `out_dir` or by default `<run>/external/<manifest stem>/`,
so an external test set never replaces the run's own predictions and metrics (`output_dir`).

Written:
    predictions.csv        docs/CONTRACTS.md columns (+ cache_row), one row per evaluated image
    predictions_val.csv    the same for the validation split (the 99 % point's films)
    embeddings.npy         (N, D) float32 embeddings, rows in predictions.csv order, and
    embeddings_index.csv   image_id, split, cache_row of each row (for the t-SNE page)
    metrics.json           metrics_from_predictions (DESIGN.md, Metrics) + an `evaluation` block

Models without some outputs (ablation variants, baselines) leave the matching columns empty and
their metrics null: everything branches on the keys present, never on the model type.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cmtlib.checkpoint import load_model
from cmtlib.data.cache import build_cache, open_cache
from cmtlib.data.loader import EvalBatches, SplitData, load_split, open_cache_folder
from cmtlib.data.manifest import manifest_hash
from cmtlib.errors import CmtError, MissingInputError
from cmtlib.fileio import atomic_path, write_json
from cmtlib.inference import infer
from cmtlib.metrics import metrics_from_predictions, threshold_at_specificity
from cmtlib.metrics.operating import describe_rule
from cmtlib.run import Run
from cmtlib.runtime import autocast_dtype, resolve_device

log = logging.getLogger("cmtlib.evaluate")
META_COLUMNS = ("image_id", "patient_id", "source", "view", "offset_days", "sex", "age", "finding", "label_healthy", "label_covid", "label_other",
                "orig_height", "orig_width")
PRED_COLUMNS = ("p_healthy", "p_covid", "p_other", "pred_healthy", "pred_covid", "pred_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou")
SPECIFICITY = 0.99
SPLIT_CHOICES = ("train", "val", "test", "holdout", "all")


class EvaluateError(CmtError, ValueError):
    """An evaluation the inputs cannot give (no rows in the split, a cache at another size); the
    message says what to pass instead."""


def predict_split(model: torch.nn.Module, data: SplitData, batch_size: int = 64, amp: torch.dtype | None = None,
                  degrade_px: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Run `model` over a split in order (cmtlib.inference.infer). `degrade_px`: every film reduced
    to that side and enlarged back first, as a thumbnail of it would look (0 = as cached).

    Returns:
        columns: p_healthy, p_covid, p_other and lung/disease dice and iou at 0.5, each (N,) float64
        with NaN where the model lacks the output or the ground truth is unknown or empty;
        embeddings: (N, D) float32, or None when the model gives no `embedding`.
    """
    batches = EvalBatches(data, batch_size)
    res = infer(model, degraded(batches, degrade_px) if degrade_px else batches, amp=amp)
    return res.columns, res.embedding


def degraded(batches, px: int):
    """The batches with each image reduced to `px` and enlarged back (area, then bilinear), as a
    `px`-pixel thumbnail of the film would arrive."""
    for batch in batches:
        x = batch["image"]
        if max(x.shape[-2:]) > px:
            small = F.interpolate(x, size=(px, px), mode="area")
            x = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp_(0, 1)
        yield {**batch, "image": x}


def _decisions(p: np.ndarray, threshold: float) -> pd.array:
    """1 / 0 at `threshold`, empty (<NA>) where the probability or the threshold is missing."""
    missing = np.isnan(p) | math.isnan(threshold)
    return pd.array([pd.NA if m else int(v >= threshold) for v, m in zip(p, missing)], dtype="Int64")


def predictions_frame(index: pd.DataFrame, cols: dict[str, np.ndarray], threshold: float) -> pd.DataFrame:
    """predictions.csv rows (docs/CONTRACTS.md) from a split's index rows and model columns."""
    df = pd.DataFrame({c: index[c].to_numpy() if c in index.columns else "" for c in META_COLUMNS})
    df["p_healthy"], df["p_covid"], df["p_other"] = cols["p_healthy"], cols["p_covid"], cols["p_other"]
    df["pred_healthy"] = _decisions(cols["p_healthy"], 0.5)
    df["pred_covid"] = _decisions(cols["p_covid"], threshold)
    df["pred_other"] = _decisions(cols["p_other"], 0.5)
    for k in ("lung_dice", "lung_iou", "disease_dice", "disease_iou"):
        df[k] = cols[k]
    df["split"] = index["split"].to_numpy() if "split" in index.columns else ""
    df["cache_row"] = index["cache_row"].to_numpy() if "cache_row" in index.columns else np.arange(len(index))
    return df


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, na_rep="")
    return path


def choose_threshold(val_df: pd.DataFrame, specificity: float = SPECIFICITY) -> dict[str, Any]:
    """The COVID threshold at `specificity` on validation rows with a known label and a score."""
    y = pd.to_numeric(val_df["label_covid"].replace("", np.nan)).to_numpy(dtype=float)
    p = val_df["p_covid"].to_numpy(dtype=float)
    keep = ~np.isnan(y) & ~np.isnan(p)
    out: dict[str, Any] = {"specificity_target": specificity, "chosen_on": "val", "n_val": int(keep.sum()), "n_positive": int((y[keep] == 1).sum())}
    if not (y[keep] == 0).any():
        out.update(covid_threshold=math.nan, n_negative=0, k=0, estimable=False,
                   note="no COVID-negative validation images with a score (or no COVID output): no threshold; pred_covid is empty")
        return out
    op = threshold_at_specificity(y[keep].astype(int), p[keep], specificity)
    out.update(covid_threshold=op.threshold, n_negative=op.n_negative, k=op.k, estimable=op.estimable)
    if not op.estimable:
        out["note"] = f"fewer than 100 validation negatives ({op.n_negative}): the 1 % false-alarm rate cannot be estimated; the threshold sits above every negative"
    return out


def _manifest_cache(run_dir: Path, manifest: Path, size: int, own: Path | None) -> Path:
    """The run's own cache when `manifest` is the one it was built from, else a cache of it at
    the run's size in <run>/eval_cache/<stem>-<hash>/ (built once, reused while current)."""
    digest = manifest_hash(manifest)
    if own is not None and json.loads((own / "meta.json").read_text()).get("manifest_hash") == digest:
        return own
    out = run_dir / "eval_cache" / f"{manifest.stem}-{digest}"
    if (out / "meta.json").is_file():
        _, images, _, _, meta = open_cache(out)
        if images.shape[1] == size and meta.get("manifest_hash") == digest:
            return out
    log.info("caching %s at %d px into %s", manifest, size, out)
    log.info(build_cache(manifest, size=size, out=out, workers=0).summary())
    return out


def _number(v: Any) -> float:
    return math.nan if v is None else float(v)


def frozen_threshold(run: Run, model, meta: dict, which: str, own: Path | None, dev, batch_size: int, amp) -> dict[str, Any]:
    """The run's operating threshold (threshold.json, chosen when it was trained). A run trained
    before thresholds were frozen gets one now, once, by the paper's rule on its validation films,
    stored with a note; it is never chosen again."""
    stored = run.threshold
    if stored is not None and "threshold_rule" in stored:
        return {**stored, "covid_threshold": _number(stored.get("covid_threshold"))}
    if own is None:
        if stored is not None:  # an older threshold.json: the 99 % point it holds is the decision it made
            return {**stored, "covid_threshold": _number(stored.get("covid_threshold")), "threshold_rule": "specificity:0.99"}
        raise MissingInputError(f"{run.path}: the run has no threshold.json and its data cache (run.json data_cache) is not on this "
                                "machine; evaluate where the cache is, or copy it")
    val = load_split(open_cache_folder(own), "val", dev)
    cols, _ = predict_split(model, val, batch_size, amp)
    chosen = choose_threshold(predictions_frame(val.index, cols, math.nan))
    out = {**chosen, "threshold_rule": "specificity:0.99", "rule_text": describe_rule("specificity:0.99"),
           "spec99_threshold": chosen["covid_threshold"], "checkpoint": which, "epoch": meta["epoch"],
           "note": "chosen by cmt evaluate: the run was trained before operating thresholds were frozen at training"}
    write_json(run.file("threshold.json"), out)
    run.refresh()
    return out


def output_dir(run_dir: str | os.PathLike, manifest: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None) -> Path:
    """Where evaluate_run writes: `out_dir` when given, else the run folder for its own data and
    `<run>/external/<manifest stem>/` for another manifest (never over the run's own results)."""
    if out_dir:
        return Path(out_dir)
    run = Run(run_dir)
    return run.external_dir(manifest) if manifest else run.path


def evaluate_run(
    run_dir: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    split: str = "test",
    *,
    which: str = "best",
    device: str = "auto",
    n_boot: int = 1000,
    out_dir: str | os.PathLike | None = None,
    degrade_px: int = 0,
) -> dict[str, Any]:
    """Evaluate a run's `which` checkpoint on `split` (`all` = every row) of its own data or of
    `manifest`; write the files of the module docstring into `output_dir(run_dir, manifest,
    out_dir)` and return the metrics dict (its `evaluation.out_dir` says where they went)."""
    if split not in SPLIT_CHOICES:
        raise EvaluateError(f"split must be one of {', '.join(SPLIT_CHOICES)}; got {split!r}")
    run_dir = Path(run_dir)
    out = output_dir(run_dir, manifest, out_dir)
    dev = resolve_device(device)
    model, meta = load_model(run_dir, which, dev)
    config = meta["config"]
    size = int(meta["preprocessing"]["input_size"][0])
    amp = autocast_dtype(config.get("precision", "auto"), dev)
    batch_size = int(config.get("eval_batch_size", 64))
    run = Run(run_dir)
    own = run.cache_dir(required=False)
    frozen = frozen_threshold(run, model, meta, which, own, dev, batch_size, amp)
    threshold = frozen["covid_threshold"]
    val_df = None
    if own is not None:  # the paper's 99 % point is a metric of its own, chosen on these validation films
        val = load_split(open_cache_folder(own), "val", dev)
        cols, _ = predict_split(model, val, batch_size, amp)
        val_df = predictions_frame(val.index, cols, threshold)
        write_csv(val_df, out / "predictions_val.csv")
    else:
        log.info("the run's cache is not here; using the stored thresholds (operating %s, 99 %% point %s)", threshold, frozen.get("spec99_threshold"))

    cache_dir = _manifest_cache(run_dir, Path(manifest).resolve(), size, own) if manifest else own
    if cache_dir is None:
        raise MissingInputError(f"{run_dir}: the run's data cache is not on this machine; pass --manifest to evaluate another manifest")
    cache = open_cache_folder(cache_dir)
    if cache.size != size:
        raise EvaluateError(f"cache {cache_dir} is {cache.size} px but the model was trained at {size} px; evaluate a cache at {size} px")
    data = load_split(cache, None if split == "all" else split, dev)
    if len(data) == 0:
        splits = sorted(set(cache.index["split"]) - {""}) if "split" in cache.index.columns else []
        has = f"its splits: {', '.join(splits)}" if splits else "no row has a split"
        other = f"--split with one of {', '.join(splits)}" if splits else ""
        if manifest:
            fix = "pass --split all to evaluate every row of an external manifest" + (f", or {other}" if other else "")
            raise EvaluateError(f"no rows with split={split!r} in manifest {manifest} ({has}); {fix}")
        raise EvaluateError(f"no rows with split={split!r} in the run's cache {cache_dir} ({has}); pass {other or '--split all'}")
    cols, embeddings = predict_split(model, data, batch_size, amp, degrade_px)
    df = predictions_frame(data.index, cols, threshold)
    write_csv(df, out / "predictions.csv")
    if embeddings is not None:
        with atomic_path(out / "embeddings.npy") as tmp:
            np.save(tmp, embeddings)
        write_csv(df[["image_id", "split", "cache_row"]], out / "embeddings_index.csv")
    spec99 = None if val_df is not None else _number(frozen.get("spec99_threshold"))
    metrics = metrics_from_predictions(df, spec99, val_df=val_df, n_boot=n_boot, operating_threshold=threshold)
    metrics["evaluation"] = {
        "run": str(run_dir), "checkpoint": which, "epoch": meta["epoch"], "model": meta["model"].get("name", config.get("model")),
        "split": split, "manifest": str(manifest) if manifest else cache.meta.get("manifest", ""), "cache": str(cache_dir),
        "threshold": threshold, "threshold_rule": frozen.get("threshold_rule", ""), "threshold_source": "threshold.json, chosen when the run was trained",
        "outputs": meta["model"].get("outputs", []), "out_dir": str(out), "degraded_to_px": degrade_px or None,
    }
    write_json(out / "metrics.json", metrics)
    log.info("evaluated %d images of %s: COVID AUC %s, lung Dice %s", len(df), split, metrics["covid"]["auc"], metrics["lung"]["dice"])
    return metrics
