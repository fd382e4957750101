"""The comparison with the paper's baselines (Section V-B, Table IV, Figs. 7-8).

Embedding classifiers: SVMs and a random forest trained on CMTNet's embeddings (the GAP of the
encoder's last block), as the paper's "CMTNet Embedding + SVM / RDF". Embeddings come from a trained
run (``run_embeddings``: the model over the cached splits) or from ``cmt evaluate RUN --split all``
(``evaluated_embeddings``: embeddings.npy in predictions.csv's row order). Embeddings are
standardised (fit on train); each classifier's hyper-parameters are chosen on the VALIDATION split
by COVID AUC (ties keep the first grid point); with them one-vs-rest models are fit on train for
COVID, healthy and other disease, their scores Platt-calibrated on validation (a monotone map: AUC,
EER and the 99 %-specificity threshold do not change; accuracies at 0.5 and calibration become
meaningful), and predictions.csv-shaped frames go to ``metrics_from_predictions``.

Deep baselines (DenseNet121, MobileNetV2, ResNet18, VGG19 + FC; UNet, SegNet, Mask R-CNN) train and
evaluate like CMTNet from params/baselines/*.yaml (``run_baseline``), or beside a report's run with its
data and training keys and only the file's model keys (``setting_params``; Mask R-CNN on a
``subset_cache``); ``comparison_table`` puts any runs' metrics side by side. scikit-learn is imported
only inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np
import pandas as pd
import torch

from cmtlib.errors import MissingInputError, UnknownNameError

log = logging.getLogger("cmtlib.baselines")

KERNEL_NOTE = (
    "The paper lists SVM kernels \"sigmoid\", \"Gaussian\" and \"RBF\"; in scikit-learn the RBF kernel IS the "
    "Gaussian kernel, exp(-gamma * ||x - x'||^2), so we run sigmoid, RBF, polynomial and linear kernels."
)
EMBEDDING_CLASSIFIERS: dict[str, str] = {
    "svm_sigmoid": "CMTNet embedding + SVM (sigmoid)",
    "svm_rbf": "CMTNet embedding + SVM (RBF = Gaussian)",
    "svm_poly": "CMTNet embedding + SVM (polynomial)",
    "svm_linear": "CMTNet embedding + SVM (linear)",
    "random_forest": "CMTNet embedding + random forest (RDF)",
}
# Searched on validation, in this order. gamma "scale" = 1 / (D * var) = 1 / D on standardised embeddings.
GRIDS: dict[str, dict[str, list]] = {
    "svm_sigmoid": {"C": [0.01, 0.1, 1.0, 10.0], "gamma": ["scale", 0.001, 0.01, 0.1]},
    "svm_rbf": {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 0.001, 0.01, 0.1]},
    "svm_poly": {"C": [0.01, 0.1, 1.0, 10.0], "degree": [2, 3], "coef0": [1.0]},
    "svm_linear": {"C": [0.001, 0.01, 0.1, 1.0, 10.0]},
    "random_forest": {"n_estimators": [100, 300], "max_depth": [None, 4, 8, 16]},
}
LABELS = ("covid", "healthy", "other")  # label_<x> columns -> p_<x>
DEEP_BASELINES: dict[str, str] = {  # registry name -> the paper's row (Table IV) or figure (Figs. 5-6)
    "densenet121": "DenseNet121 + FC", "mobilenet_v2": "MobileNetv2 + FC", "resnet18": "ResNet18 + FC", "vgg19": "VGG19 + FC",
    "unet": "UNet", "segnet": "SegNet", "maskrcnn": "Mask R-CNN (ResNet18-FPN)", "maskrcnn_resnet50": "Mask R-CNN (ResNet50-FPN)",
}
# The paper's protocol (Section IV-C), against which a CPU run states its reductions.
PAPER_PROTOCOL = {"image_size": 224, "width": 1.0, "epochs": 30, "encoder_weights": "imagenet"}


class EmbeddingSplit(NamedTuple):
    """One split's embeddings (N, D) and its rows (manifest columns incl. label_*, patient_id, split)."""

    emb: np.ndarray
    index: pd.DataFrame


# ---- embeddings --------------------------------------------------------------------------------


@torch.no_grad()
def extract_embeddings(model: torch.nn.Module, cache_dir: str | os.PathLike, split: str | None, device: str | torch.device = "cpu", batch_size: int = 64) -> tuple[np.ndarray, pd.DataFrame]:
    """``model.classify(model.forward_features(x))['embedding']`` over a cached split, in cache order.

    Args:
        model: any registered model (eval mode is set here).
        cache_dir: a cache folder (docs/CONTRACTS.md); split: train / val / test, None = all rows.

    Returns:
        (emb (N, D) float32, the split's index.csv rows in the same order).
    """
    from cmtlib.data.loader import EvalBatches, load_split, open_cache_folder

    dev = torch.device(device)
    data = load_split(open_cache_folder(cache_dir), split, dev)
    model.to(dev).eval()
    chunks = [model.classify(model.forward_features(b["image"]).features)["embedding"].float().cpu() for b in EvalBatches(data, batch_size)]
    emb = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    return emb.astype(np.float32), data.index.reset_index(drop=True)


def run_embeddings(run_dir: str | os.PathLike, splits: Iterable[str] = ("train", "val", "test"), device: str = "cpu", which: str = "best", batch_size: int = 64, cache_dir: str | os.PathLike | None = None) -> dict[str, EmbeddingSplit]:
    """Embeddings of a trained run's model over its own cached splits (run.json's data_cache)."""
    from cmtlib.checkpoint import load_model

    run_dir = Path(run_dir)
    if cache_dir is None:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8")) if (run_dir / "run.json").is_file() else {}
        cache_dir = info.get("data_cache") or ""
        if not cache_dir or not (Path(cache_dir) / "meta.json").is_file():
            raise MissingInputError(f"{run_dir}: its data cache ({cache_dir or 'not in run.json'}) is not here; pass cache_dir")
    model, _ = load_model(run_dir, which, device)
    return {s: EmbeddingSplit(*extract_embeddings(model, cache_dir, s, device, batch_size)) for s in splits}


def evaluated_embeddings(eval_dir: str | os.PathLike) -> dict[str, EmbeddingSplit]:
    """Embeddings written by ``cmt evaluate RUN --split all``: embeddings.npy rows in predictions.csv
    order (which holds the labels, patient ids and split of each row), grouped by split."""
    eval_dir = Path(eval_dir)
    emb = np.load(eval_dir / "embeddings.npy")
    rows = pd.read_csv(eval_dir / "predictions.csv", dtype=str, keep_default_na=False)
    if len(rows) != len(emb):
        raise ValueError(f"{eval_dir}: embeddings.npy has {len(emb)} rows but predictions.csv {len(rows)}; re-run cmt evaluate")
    out = {s: EmbeddingSplit(emb[(rows["split"] == s).to_numpy()], rows[rows["split"] == s].reset_index(drop=True)) for s in ("train", "val", "test")}
    missing = [s for s, e in out.items() if len(e.index) == 0]
    if missing:
        raise ValueError(f"{eval_dir} has no {', '.join(missing)} rows: evaluate the run with --split all")
    return out


# ---- embedding classifiers ---------------------------------------------------------------------


def _labels(index: pd.DataFrame, label: str) -> np.ndarray:
    """label_<label> as floats, '' / missing -> NaN."""
    col = index.get(f"label_{label}")
    if col is None:
        return np.full(len(index), np.nan)
    return pd.to_numeric(col.astype(str).str.strip().replace("", np.nan), errors="coerce").to_numpy(dtype=float)


def make_estimator(kind: str, params: Mapping[str, Any], seed: int = 0):
    """A scikit-learn estimator for ``kind`` (a key of EMBEDDING_CLASSIFIERS) with ``params``."""
    if kind not in EMBEDDING_CLASSIFIERS:
        raise UnknownNameError(f"unknown embedding classifier {kind!r}; valid: {', '.join(EMBEDDING_CLASSIFIERS)}")
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    from sklearn.svm import SVC

    return SVC(kernel=kind.removeprefix("svm_"), random_state=seed, **params)


def _scores(est, x: np.ndarray) -> np.ndarray:
    """Higher = positive: the SVM's decision function, the forest's probability."""
    return est.decision_function(x) if hasattr(est, "decision_function") else est.predict_proba(x)[:, 1]


@dataclass
class EmbeddingClassifierResult:
    """What ``fit_embedding_classifier`` chose and predicted."""

    kind: str
    params: dict[str, Any]  # the chosen hyper-parameters
    val_auc: float  # COVID AUC on validation with them
    search: list[dict[str, Any]]  # every grid point: its params and validation COVID AUC
    val: pd.DataFrame  # predictions (docs/CONTRACTS.md shape), validation split
    test: pd.DataFrame  # the same, test split
    threshold: dict[str, Any] = field(default_factory=dict)  # the validation COVID operating point


def select_hyperparameters(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, grid: Mapping[str, list] | None = None, seed: int = 0) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Fit every grid point on train, score validation by AUC; (best params, its AUC, all points).

    Ties keep the first point in grid order (scikit-learn's ParameterGrid: keys sorted).

    Raises:
        ValueError: train or validation lacks COVID positives or negatives.
    """
    from sklearn.model_selection import ParameterGrid

    from cmtlib.metrics import roc_auc

    for name, y in (("train", y_train), ("validation", y_val)):
        if len(np.unique(y)) < 2:
            raise ValueError(f"the {name} split needs COVID-positive and COVID-negative images with embeddings to fit and choose {kind}")
    search = []
    for params in ParameterGrid(dict(grid if grid is not None else GRIDS[kind])):
        est = make_estimator(kind, params, seed).fit(x_train, y_train)
        search.append({"params": dict(params), "val_auc": float(roc_auc(y_val, _scores(est, x_val)))})
    best = max(range(len(search)), key=lambda i: (search[i]["val_auc"], -i))
    return search[best]["params"], search[best]["val_auc"], search


def _platt(val_scores: np.ndarray, y_val: np.ndarray):
    """Monotone map from scores to probabilities, fit on validation (a 1-D logistic regression)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6).fit(val_scores[:, None], y_val)
    return lambda s: lr.predict_proba(s[:, None])[:, 1]


def fit_embedding_classifier(kind: str, train: EmbeddingSplit, val: EmbeddingSplit, test: EmbeddingSplit, seed: int = 0, grid: Mapping[str, list] | None = None) -> EmbeddingClassifierResult:
    """Standardise, choose hyper-parameters on validation (COVID AUC), fit one-vs-rest per label
    with them, calibrate on validation and return validation and test predictions."""
    from sklearn.preprocessing import StandardScaler

    from cmtlib.evaluate import choose_threshold, predictions_frame

    scaler = StandardScaler().fit(train.emb)
    x = {"train": scaler.transform(train.emb), "val": scaler.transform(val.emb), "test": scaler.transform(test.emb)}
    y = {name: {lab: _labels(s.index, lab) for lab in LABELS} for name, s in (("train", train), ("val", val), ("test", test))}
    known = {name: {lab: ~np.isnan(v) for lab, v in ys.items()} for name, ys in y.items()}
    ktr, kva = known["train"]["covid"], known["val"]["covid"]
    params, val_auc, search = select_hyperparameters(kind, x["train"][ktr], y["train"]["covid"][ktr], x["val"][kva], y["val"]["covid"][kva], grid, seed)
    cols = {s: {c: np.full(len(x[s]), np.nan) for c in ("p_healthy", "p_covid", "p_other", "lung_dice", "lung_iou", "disease_dice", "disease_iou")} for s in ("val", "test")}
    for lab in LABELS:
        ktr, kva = known["train"][lab], known["val"][lab]
        ytr, yva = y["train"][lab][ktr], y["val"][lab][kva]
        if len(np.unique(ytr)) < 2 or len(np.unique(yva)) < 2:
            log.info("%s: %s has one class in train or validation; p_%s stays empty", kind, lab, lab)
            continue
        est = make_estimator(kind, params, seed).fit(x["train"][ktr], ytr)
        if kind == "random_forest":
            for s in ("val", "test"):
                cols[s][f"p_{lab}"] = _scores(est, x[s])
        else:
            calibrate = _platt(_scores(est, x["val"][kva]), yva)
            for s in ("val", "test"):
                cols[s][f"p_{lab}"] = calibrate(_scores(est, x[s]))
    chosen = choose_threshold(predictions_frame(val.index, cols["val"], math.nan))
    threshold = float(chosen["covid_threshold"])
    val_df = predictions_frame(val.index, cols["val"], threshold)
    test_df = predictions_frame(test.index, cols["test"], threshold)
    return EmbeddingClassifierResult(kind, dict(params), val_auc, search, val_df, test_df, chosen)


def run_embedding_classifiers(embeddings: Mapping[str, EmbeddingSplit], kinds: Iterable[str] = tuple(EMBEDDING_CLASSIFIERS), seed: int = 0, n_boot: int = 1000, out_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Fit and evaluate each embedding classifier; one summary row per classifier.

    Writes, when ``out_dir`` is given, ``<out_dir>/<kind>/`` predictions.csv (test),
    predictions_val.csv, metrics.json and selection.json (chosen params, the search, the note).
    """
    from cmtlib.evaluate import write_csv
    from cmtlib.fileio import write_json
    from cmtlib.metrics import metrics_from_predictions

    rows = []
    for kind in kinds:
        res = fit_embedding_classifier(kind, embeddings["train"], embeddings["val"], embeddings["test"], seed=seed)
        metrics = metrics_from_predictions(res.test, res.threshold["covid_threshold"], val_df=res.val, n_boot=n_boot, seed=seed)
        if out_dir is not None:
            folder = Path(out_dir) / kind
            folder.mkdir(parents=True, exist_ok=True)
            write_csv(res.test, folder / "predictions.csv")
            write_csv(res.val, folder / "predictions_val.csv")
            write_json(folder / "metrics.json", metrics)
            write_json(folder / "selection.json", {"kind": kind, "label": EMBEDDING_CLASSIFIERS[kind], "params": res.params, "val_auc": res.val_auc,
                                                    "search": res.search, "threshold": res.threshold, "seed": seed, "note": KERNEL_NOTE})
        rows.append(metrics_row(EMBEDDING_CLASSIFIERS[kind], metrics, classifier=kind, params=json.dumps(res.params), val_auc=res.val_auc))
    return pd.DataFrame(rows)


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


def comparison_table(runs: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Rows from evaluated run folders (name -> folder holding metrics.json, run.json, config.yaml)."""
    import yaml

    rows = []
    for name, folder in runs.items():
        folder = Path(folder)
        if not (folder / "metrics.json").is_file():
            raise MissingInputError(f"{folder}: no metrics.json; evaluate the run first (cmt evaluate {folder})")
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        info = json.loads((folder / "run.json").read_text(encoding="utf-8")) if (folder / "run.json").is_file() else {}
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) if (folder / "config.yaml").is_file() else {}
        model = info.get("model") or config.get("model", "")
        rows.append(metrics_row(name, metrics, model=model, paper_name=DEEP_BASELINES.get(model, model), width=config.get("width"),
                                image_size=config.get("image_size"), epochs=config.get("epochs"),
                                encoder_weights_source=info.get("encoder_weights_source", "")))
    return pd.DataFrame(rows)


def baseline_params_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """params/baselines/*.yaml, sorted (one per deep baseline)."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parents[1] / "params" / "baselines"
    return sorted(folder.glob("*.yaml"))


def run_baseline(params_file: str | os.PathLike, overrides: Iterable[str] | Mapping[str, Any] = (), overwrite: bool = False, n_boot: int = 1000) -> Path:
    """Train one baseline with the engine and evaluate it on its test split; returns the run folder."""
    from cmtlib.engine import train
    from cmtlib.evaluate import evaluate_run
    from cmtlib.params import load_params

    params = load_params(params_file, overrides if isinstance(overrides, Mapping) else list(overrides))
    note = reduction_note(params)
    if note:
        log.info("%s: %s", params.run_name, note)
    run_dir = train(params, overwrite=overwrite)
    evaluate_run(run_dir, device=params.train.device, n_boot=n_boot)
    return run_dir


# ---- baselines at a report's setting -----------------------------------------------------------

MODEL_KEYS = ("model", "tasks", "width", "encoder_weights", "head_hidden")  # what a baseline file contributes


def _override_values(overrides: Iterable[str], name: str) -> dict[str, Any]:
    """``key=value`` entries for everyone and ``name:key=value`` entries for ``name``, parsed as YAML."""
    from cmtlib.params import ParamsError, parse_overrides

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
    import yaml

    from cmtlib.params import build_params

    values = run_params.flat()
    if params_file is not None:
        own = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
        values.update({k: v for k, v in own.items() if k in MODEL_KEYS})
    values.update(_override_values(overrides, name))
    values.update({k: v for k, v in (("image_size", image_size), ("epochs", epochs)) if v})
    values.update({"run_name": name, "seed": run_params.train.seed if seed is None else int(seed)})
    if run_dir is not None:
        values["run_dir"] = str(Path(run_dir).resolve())
    return build_params(values, name=name, source=str(params_file or run_params.source))


def subset_cache(cache_dir: str | os.PathLike, out: str | os.PathLike, max_train: int, seed: int = 0) -> Path:
    """A copy of a cache folder with at most ``max_train`` training films (a seeded sample of those
    whose lung and disease masks are both known, the films Mask R-CNN learns from), a quarter as
    many validation films, and every test film; reused when already made with these settings."""
    from cmtlib.data.cache import open_cache
    from cmtlib.data.manifest import write_manifest
    from cmtlib.fileio import atomic_path, write_json

    out = Path(out)
    key = {"subset_of": str(Path(cache_dir).resolve()), "max_train": int(max_train), "seed": int(seed)}
    if (out / "meta.json").is_file() and all(json.loads((out / "meta.json").read_text()).get(k) == v for k, v in key.items()):
        return out
    index, images, lung, disease, meta = open_cache(cache_dir)
    rng = np.random.default_rng(seed)
    split = index["split"].to_numpy()
    both = (index["has_lung"] == "1").to_numpy() & (index["has_disease"] == "1").to_numpy()
    keep = [np.flatnonzero(split == "test")]
    for name, n in (("train", max_train), ("val", max(1, -(-max_train // 4)))):
        pool = np.flatnonzero((split == name) & both) if name == "train" else np.flatnonzero(split == name)
        keep.append(rng.choice(pool, size=min(n, len(pool)), replace=False) if n < len(pool) else pool)
    rows = np.sort(np.concatenate(keep))
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    for name, arr in (("images", images), ("lung", lung), ("disease", disease)):
        with atomic_path(out / f"{name}.npy") as tmp:
            np.save(tmp, np.asarray(arr[rows]))
    sub = index.iloc[rows].reset_index(drop=True)
    sub["cache_row"] = [str(i) for i in range(len(sub))]
    write_manifest(sub, out / "index.csv")
    (out / "quarantine.csv").write_text("image_id,path,reason\n", encoding="utf-8")
    pool = int(((split == "train") & both).sum())
    write_json(out / "meta.json", {**meta, "n": len(rows), **key, "train_pool": pool})  # last: a folder without it is incomplete
    return out
