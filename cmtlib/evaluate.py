"""`cmt evaluate`: predictions.csv and metrics.json of a run, at its frozen operating threshold.

Two thresholds (DESIGN.md, Metrics), both chosen once, when the run was trained, on its validation
films (the run's threshold.json and predictions_val.csv, read through cmtlib.run.Run): the
operating threshold (`covid.threshold`, `pred_covid`) by the rule in `threshold_rule`, and the
paper's 99 %-specificity point (`covid.sens_at_spec99`). Evaluation never chooses either again, on
the run's own test split or on any other manifest (an external test set, cached at the run's image
size into `<run>/eval_cache/`), and never runs the validation films again.

Where the files go (a cmtlib.run.Evaluation folder): the run folder itself when the run's own data is
evaluated (the report chain reads them there); for another manifest, `out_dir` or by default
`<run>/external/<manifest stem>/`, so an external test set never replaces the run's own results.

Each film also gets the run's in-distribution verdict (cmtlib.indist, the reference recorded at
training; `in_distribution`, `ood_score`, `ood_reason`, empty where the run has none). The metrics
stay computed on every film, flagged or not, as before: leaving flagged films out would make a run
look better the more films it refuses; metrics.json's `in_distribution` block says how many were.

Written:
    predictions.csv        docs/CONTRACTS.md columns (+ cache_row), one row per evaluated image
    embeddings.npy         (N, D) float32 embeddings, rows in predictions.csv order, and
    embeddings_index.csv   image_id, split, cache_row of each row (for the t-SNE page)
    metrics.json           metrics_from_predictions (DESIGN.md, Metrics) + an `evaluation` block

Models without some outputs (ablation variants, baselines) leave the matching columns empty and
their metrics null: everything branches on the keys present, never on the model type.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmtlib.data.cache import build_cache, open_cache
from cmtlib.data.loader import EvalBatches, SplitData, load_split, open_cache_folder
from cmtlib.data.manifest import manifest_hash
from cmtlib.errors import CmtError, MissingInputError
from cmtlib.indist import Descriptors, Reference, judge, shorter_sides
from cmtlib.inference import infer
from cmtlib.metrics import metrics_from_predictions
from cmtlib.metrics.operating import threshold_notes
from cmtlib.predictions import predictions_frame
from cmtlib.run import Evaluation, Run
from cmtlib.runtime import autocast_dtype, resolve_device

log = logging.getLogger("cmtlib.evaluate")
SPLIT_CHOICES = ("train", "val", "test", "holdout", "all")


class EvaluateError(CmtError, ValueError):
    """An evaluation the inputs cannot give (no rows in the split, a cache at another size); the
    message says what to pass instead."""


def predict_split(model: torch.nn.Module, data: SplitData, batch_size: int = 64, amp: torch.dtype | None = None,
                  degrade_px: int = 0, described: Descriptors | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Run `model` over a split in order (cmtlib.inference.infer). `degrade_px`: every film reduced
    to that side and enlarged back first, as a thumbnail of it would look (0 = as cached).
    `described`: gathers what the in-distribution check reads, in the same pass.

    Returns:
        columns: p_healthy, p_covid, p_other and lung/disease dice and iou at 0.5, each (N,) float64
        with NaN where the model lacks the output or the ground truth is unknown or empty;
        embeddings: (N, D) float32, or None when the model gives no `embedding`.
    """
    batches = EvalBatches(data, batch_size)
    res = infer(model, degraded(batches, degrade_px) if degrade_px else batches, amp=amp, on_batch=described)
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


def _manifest_cache(run: Run, manifest: Path, size: int, own: Path | None) -> Path:
    """The run's own cache when `manifest` is the one it was built from, else a cache of it at
    the run's size in <run>/eval_cache/<stem>-<hash>/ (built once, reused while current)."""
    digest = manifest_hash(manifest)
    if own is not None and json.loads((own / "meta.json").read_text()).get("manifest_hash") == digest:
        return own
    out = run.eval_cache(manifest.stem, digest)
    if (out / "meta.json").is_file():
        _, images, _, _, meta = open_cache(out)
        if images.shape[1] == size and meta.get("manifest_hash") == digest:
            return out
    log.info("caching %s at %d px into %s", manifest, size, out)
    log.info(build_cache(manifest, size=size, out=out, workers=0).summary())
    return out


def _frozen(run: Run) -> dict[str, Any]:
    """The run's threshold record (threshold.json); an error saying to retrain when it has none."""
    if run.threshold is None or not run.finished:
        raise MissingInputError(f"{run.path} holds no frozen COVID-19 threshold (threshold.json): its training did not finish; "
                                "resume it (cmt train --params ... --resume) or train it again")
    return run.threshold


def output_dir(run_dir: str | os.PathLike, manifest: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None) -> Path:
    """Where evaluate_run writes: `out_dir` when given, else the run folder for its own data and
    `<run>/external/<manifest stem>/` for another manifest (never over the run's own results)."""
    if out_dir:
        return Path(out_dir)
    run = Run(run_dir)
    return run.external(Path(manifest).stem).path if manifest else run.path


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
    run = Run.open(run_dir)
    out = Evaluation(output_dir(run.path, manifest, out_dir))
    frozen = _frozen(run)
    threshold = run.operating_threshold
    dev = resolve_device(device)
    model, meta = run.load_model(which, dev)
    config = meta["config"]
    size = int(meta["preprocessing"]["input_size"][0])
    amp = autocast_dtype(config.get("precision", "auto"), dev)
    batch_size = int(config.get("eval_batch_size", 64))
    own = run.cache_dir(required=False)
    cache_dir = _manifest_cache(run, Path(manifest).resolve(), size, own) if manifest else own
    if cache_dir is None:
        raise MissingInputError(f"{run.path}: the run's data cache is not on this machine; pass --manifest to evaluate another manifest")
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
    described = Descriptors()
    cols, embeddings = predict_split(model, data, batch_size, amp, degrade_px, described)
    reference = Reference.from_arrays(run.indist)
    verdicts = judge(reference, described.host(), shorter_sides(data.index))
    df = predictions_frame(data.index, {**cols, **verdicts.columns()}, threshold)
    metrics = metrics_from_predictions(df, frozen.get("spec99_threshold"), n_boot=n_boot, operating_threshold=threshold,
                                       notes=threshold_notes(frozen))
    metrics["in_distribution"] = verdicts.summary(reference)
    metrics["evaluation"] = {
        "run": str(run.path), "checkpoint": which, "epoch": meta["epoch"], "model": meta["model"].get("name", config.get("model")),
        "split": split, "manifest": str(manifest) if manifest else cache.meta.get("manifest", ""), "cache": str(cache_dir),
        "threshold": threshold, "threshold_rule": frozen.get("threshold_rule", ""), "threshold_source": "threshold.json, chosen when the run was trained",
        "outputs": meta["model"].get("outputs", []), "out_dir": str(out.path), "degraded_to_px": degrade_px or None,
    }
    out.write(predictions=df, embeddings=embeddings, metrics=metrics)
    log.info("evaluated %d images of %s: COVID AUC %s, lung Dice %s; %s", len(df), split, metrics["covid"]["auc"], metrics["lung"]["dice"],
             verdicts.summary_text(reference))
    return metrics
