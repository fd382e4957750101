"""CMTNet embedding + SVM / random forest (the paper's Table IV rows "CMTNet Embedding + SVM / RDF").

Embeddings are the GAP of the encoder's last block, from a trained run (``run_embeddings``: the
model's encoder and heads over the cached splits, through cmtlib.inference) or from
``cmt evaluate RUN --split all`` (``evaluated_embeddings``: embeddings.npy in predictions.csv's row
order). Embeddings are standardised (fit on train); each classifier's hyper-parameters are chosen on
the VALIDATION split by COVID AUC (ties keep the first grid point); with them one-vs-rest models are
fit on train for COVID, healthy and other disease, their scores Platt-calibrated on validation (a
monotone map: AUC, EER and the 99 %-specificity threshold do not change; accuracies at 0.5 and
calibration become meaningful), and predictions.csv-shaped frames go to ``metrics_from_predictions``.
Each classifier decides COVID-19 as the run it is compared with does: by that run's threshold rule,
on its own validation scores (cmtlib.metrics.operating.choose_thresholds).
scikit-learn is imported inside the functions that use it: a bare GPU machine lacks it.
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

from cmtlib.data.loader import EvalBatches, load_split, open_cache_folder
from cmtlib.errors import UnknownNameError
from cmtlib.experiments.baselines import metrics_row
from cmtlib.fileio import write_json
from cmtlib.inference import infer
from cmtlib.metrics import metrics_from_predictions, roc_auc
from cmtlib.metrics.operating import choose_thresholds, threshold_notes
from cmtlib.predictions import predictions_frame, with_threshold
from cmtlib.run import Evaluation, Run

log = logging.getLogger("cmtlib.experiments")

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


class EmbeddingSplit(NamedTuple):
    """One split's embeddings (N, D) and its rows (manifest columns incl. label_*, patient_id, split)."""

    emb: np.ndarray
    index: pd.DataFrame


# ---- embeddings --------------------------------------------------------------------------------


def extract_embeddings(model: torch.nn.Module, cache_dir: str | os.PathLike, split: str | None, device: str | torch.device = "cpu", batch_size: int = 64) -> tuple[np.ndarray, pd.DataFrame]:
    """The model's ``embedding`` over a cached split, in cache order (encoder and heads only, through
    cmtlib.inference: the segmentation decoders are not run).

    Args:
        model: any registered model.
        cache_dir: a cache folder (docs/CONTRACTS.md); split: train / val / test, None = all rows.

    Returns:
        (emb (N, D) float32, the split's index.csv rows in the same order).
    """
    dev = torch.device(device)
    data = load_split(open_cache_folder(cache_dir), split, dev)
    res = infer(model.to(dev), EvalBatches(data, batch_size), heads_only=True)
    emb = res.embedding if res.embedding is not None else np.zeros((0, 0), np.float32)
    return emb.astype(np.float32), data.index.reset_index(drop=True)


def run_embeddings(run_dir: str | os.PathLike, splits: Iterable[str] = ("train", "val", "test"), device: str = "cpu", which: str = "best", batch_size: int = 64, cache_dir: str | os.PathLike | None = None) -> dict[str, EmbeddingSplit]:
    """Embeddings of a trained run's model over its own cached splits (run.json's data_cache)."""
    run = Run.open(run_dir)
    cache_dir = cache_dir or run.cache_dir()
    model, _ = run.load_model(which, device)
    return {s: EmbeddingSplit(*extract_embeddings(model, cache_dir, s, device, batch_size)) for s in splits}


def evaluated_embeddings(eval_dir: str | os.PathLike) -> dict[str, EmbeddingSplit]:
    """Embeddings written by ``cmt evaluate RUN --split all``: embeddings.npy rows in predictions.csv
    order (which holds the labels, patient ids and split of each row), grouped by split."""
    done = Evaluation(eval_dir)
    emb = np.load(done.embeddings_path)
    rows = pd.read_csv(done.path / Evaluation.PREDICTIONS, dtype=str, keep_default_na=False)
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
    threshold: dict[str, Any] = field(default_factory=dict)  # choose_thresholds on the validation scores


def select_hyperparameters(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, grid: Mapping[str, list] | None = None, seed: int = 0) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Fit every grid point on train, score validation by AUC; (best params, its AUC, all points).

    Ties keep the first point in grid order (scikit-learn's ParameterGrid: keys sorted).

    Raises:
        ValueError: train or validation lacks COVID positives or negatives.
    """
    from sklearn.model_selection import ParameterGrid

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


def fit_embedding_classifier(kind: str, train: EmbeddingSplit, val: EmbeddingSplit, test: EmbeddingSplit, rule: str, seed: int = 0,
                             grid: Mapping[str, list] | None = None) -> EmbeddingClassifierResult:
    """Standardise, choose hyper-parameters on validation (COVID AUC), fit one-vs-rest per label
    with them, calibrate on validation, choose the COVID-19 threshold by `rule` on the validation
    scores and return validation and test predictions decided at it."""
    from sklearn.preprocessing import StandardScaler

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
    val_df = predictions_frame(val.index, cols["val"], math.nan)
    chosen = choose_thresholds(val_df, rule)
    threshold = float(chosen["covid_threshold"])
    return EmbeddingClassifierResult(kind, dict(params), val_auc, search, with_threshold(val_df, threshold),
                                     predictions_frame(test.index, cols["test"], threshold), chosen)


def run_embedding_classifiers(embeddings: Mapping[str, EmbeddingSplit], rule: str, kinds: Iterable[str] = tuple(EMBEDDING_CLASSIFIERS), seed: int = 0,
                              n_boot: int = 1000, out_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Fit and evaluate each embedding classifier, deciding by threshold `rule`; one summary row per classifier.

    Writes, when ``out_dir`` is given, ``<out_dir>/<kind>/`` predictions.csv (test),
    predictions_val.csv, metrics.json and selection.json (chosen params, the search, the note).
    """
    rows = []
    for kind in kinds:
        res = fit_embedding_classifier(kind, embeddings["train"], embeddings["val"], embeddings["test"], rule, seed=seed)
        metrics = metrics_from_predictions(res.test, res.threshold["spec99_threshold"], n_boot=n_boot, seed=seed,
                                           operating_threshold=res.threshold["covid_threshold"], notes=threshold_notes(res.threshold))
        if out_dir is not None:
            folder = Evaluation(Path(out_dir) / kind)
            folder.path.mkdir(parents=True, exist_ok=True)
            write_json(folder.path / "selection.json", {"kind": kind, "label": EMBEDDING_CLASSIFIERS[kind], "params": res.params, "val_auc": res.val_auc,
                                                         "search": res.search, "threshold": res.threshold, "seed": seed, "note": KERNEL_NOTE})
            folder.write(predictions=res.test, predictions_val=res.val, metrics=metrics)  # metrics.json last: the folder is done
        rows.append(metrics_row(EMBEDDING_CLASSIFIERS[kind], metrics, classifier=kind, params=json.dumps(res.params), val_auc=res.val_auc))
    return pd.DataFrame(rows)
