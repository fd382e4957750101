"""`cmt evaluate`: predictions.csv, metrics.json and the validation COVID threshold of a run.

The COVID operating point is always chosen on the run's own validation split (DESIGN.md: chosen
on validation, then held fixed), stored in `threshold.json`, and applied to whatever is evaluated:
the run's own test split by default, or the `split` rows of another manifest (an external test
set), which is cached at the run's image size into `<run>/eval_cache/`. When the run's own cache is
not on this machine (a run trained elsewhere on a carried cache), the stored threshold.json is used.

Where the files go: the run folder itself when the run's own data is evaluated (the report chain
reads them there); for another manifest, `out_dir` or by default `<run>/external/<manifest stem>/`,
so an external test set never replaces the run's own predictions and metrics (`output_dir`).
threshold.json always stays in the run folder: it belongs to the run, not to one evaluation.

Written:
    predictions.csv        docs/CONTRACTS.md columns (+ cache_row), one row per evaluated image
    predictions_val.csv    the same for the validation split the threshold came from
    embeddings.npy         (N, D) float32 embeddings, rows in predictions.csv order, and
    embeddings_index.csv   image_id, split, cache_row of each row (for the t-SNE page)
    metrics.json           metrics_from_predictions (DESIGN.md, Metrics) + an `evaluation` block
    threshold.json         the COVID threshold and how it was chosen

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

from cmtlib.checkpoint import load_model
from cmtlib.data.cache import build_cache, open_cache
from cmtlib.data.loader import EvalBatches, SplitData, load_split, open_cache_folder
from cmtlib.data.manifest import manifest_hash
from cmtlib.errors import CmtError, MissingInputError
from cmtlib.fileio import atomic_path, write_json
from cmtlib.inference import infer
from cmtlib.metrics import metrics_from_predictions, threshold_at_specificity
from cmtlib.run import Run
from cmtlib.runtime import autocast_dtype, resolve_device

log = logging.getLogger("cmtlib.evaluate")
META_COLUMNS = ("image_id", "patient_id", "source", "view", "offset_days", "sex", "age", "finding", "label_healthy", "label_covid", "label_other")
PRED_COLUMNS = ("p_healthy", "p_covid", "p_other", "pred_healthy", "pred_covid", "pred_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou")
SPECIFICITY = 0.99
SPLIT_CHOICES = ("train", "val", "test", "all")


class EvaluateError(CmtError, ValueError):
    """An evaluation the inputs cannot give (no rows in the split, a cache at another size); the
    message says what to pass instead."""


def predict_split(model: torch.nn.Module, data: SplitData, batch_size: int = 64, amp: torch.dtype | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Run `model` over a split in order (cmtlib.inference.infer).

    Returns:
        columns: p_healthy, p_covid, p_other and lung/disease dice and iou at 0.5, each (N,) float64
        with NaN where the model lacks the output or the ground truth is unknown or empty;
        embeddings: (N, D) float32, or None when the model gives no `embedding`.
    """
    res = infer(model, EvalBatches(data, batch_size), amp=amp)
    return res.columns, res.embedding


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
    own = Run(run_dir).cache_dir(required=False)

    if own is not None:
        val = load_split(open_cache_folder(own), "val", dev)
        cols, _ = predict_split(model, val, batch_size, amp)
        val_df = predictions_frame(val.index, cols, math.nan)
        chosen = choose_threshold(val_df)
        chosen.update(checkpoint=which, epoch=meta["epoch"], cache=str(own))
        threshold = float(chosen["covid_threshold"])
        val_df["pred_covid"] = _decisions(val_df["p_covid"].to_numpy(dtype=float), threshold)
        write_csv(val_df, out / "predictions_val.csv")
        write_json(run_dir / "threshold.json", chosen)
    elif (run_dir / "threshold.json").is_file():
        chosen = json.loads((run_dir / "threshold.json").read_text(encoding="utf-8"))
        threshold = math.nan if chosen.get("covid_threshold") is None else float(chosen["covid_threshold"])
        val_df = None
        log.info("the run's cache is not here; using the stored threshold %s", threshold)
    else:
        raise MissingInputError(f"{run_dir}: the run's data cache (run.json data_cache) is not on this machine and there is no threshold.json; evaluate where the cache is, or copy it")

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
    cols, embeddings = predict_split(model, data, batch_size, amp)
    df = predictions_frame(data.index, cols, threshold)
    write_csv(df, out / "predictions.csv")
    if embeddings is not None:
        with atomic_path(out / "embeddings.npy") as tmp:
            np.save(tmp, embeddings)
        write_csv(df[["image_id", "split", "cache_row"]], out / "embeddings_index.csv")
    metrics = metrics_from_predictions(df, threshold, val_df=val_df, n_boot=n_boot)
    metrics["evaluation"] = {
        "run": str(run_dir), "checkpoint": which, "epoch": meta["epoch"], "model": meta["model"].get("name", config.get("model")),
        "split": split, "manifest": str(manifest) if manifest else cache.meta.get("manifest", ""), "cache": str(cache_dir),
        "threshold": threshold, "threshold_source": "validation split of the run's own data" if own is not None else "stored threshold.json",
        "outputs": meta["model"].get("outputs", []), "out_dir": str(out),
    }
    write_json(out / "metrics.json", metrics)
    log.info("evaluated %d images of %s: COVID AUC %s, lung Dice %s", len(df), split, metrics["covid"]["auc"], metrics["lung"]["dice"])
    return metrics
