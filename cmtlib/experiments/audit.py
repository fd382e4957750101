"""The shortcut audit of one run (page 8, studies): its checks, both verdicts, its twins' truth.

`audit_run(run_dir)` measures every twin-free check on the run's test films (with floors trained on
its train films), gives the data verdict and the network verdict (cmtlib.explain.verdicts), and on
phantoms with cue twins the twins' truth beside them, the check of the audit that never makes it;
writes it all to the run folder's shortcut_audit.json through `Run` and reuses it while the run's
best checkpoint is older and the format and settings are the same. `analysis(run_dir)` is the same
as a study's per-run analysis (cmtlib.experiments.study.run_study), returning the compact record the
calibration reads. Keys: docs/CONTRACTS.md, "The shortcut audit".
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.explain import cue_checks as cc
from cmtlib.explain import swaps
from cmtlib.explain.checks import default_maps
from cmtlib.explain.cue_twins import run_twin_truth
from cmtlib.explain.overlays import ImageSet, load_images
from cmtlib.explain.shortcut import blanking_aucs, covid_scores
from cmtlib.explain.verdicts import AUDIT_FORMAT, SETTINGS, data_verdict, network_verdict
from cmtlib.fileio import finite
from cmtlib.inference import image_batches, infer, model_device
from cmtlib.metrics import roc_auc
from cmtlib.run import Run
from cmtlib.runtime import quietly

MAX_TRAIN = 1500  # train films the floors learn from (a seeded sample when there are more)
HEAT_MAP_FILMS = 12  # test films (half COVID-19 where there are enough) whose default heat map is measured
N_BOOT = 1000


def _clean(value):
    """As shortcut_audit.json holds it: NaN as None, numpy scalars as plain numbers, 4 decimals."""
    return finite(value, digits=4)


def _pass(model, films: ImageSet) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One full pass over films: p(COVID-19), the embedding, the network's own lung outline (p >= 0.5)."""
    res = infer(model, image_batches(films.images, 64, model_device(model)), maps=("lung",))
    lungs = res.maps["lung"] >= 0.5 if "lung" in res.maps else np.zeros(films.images.shape, bool)
    return res.columns["p_covid"], res.embedding, lungs


def _auc(y, p) -> float:
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    use = ~np.isnan(y) & ~np.isnan(p)
    return roc_auc(y[use].astype(int), p[use]) if use.any() and len(set(y[use])) == 2 else math.nan


def _heat_map(model, test: ImageSet, lungs, y, seed: int) -> dict:
    """The default map's share outside the lungs, in the frame and in the corners, beside each
    region's share of the film (what an even map would put there), on a few test films."""
    rng = np.random.default_rng(seed)
    covid, rest = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k = min(len(covid), HEAT_MAP_FILMS // 2)
    pick = np.concatenate([rng.permutation(covid)[:k], rng.permutation(rest)[:HEAT_MAP_FILMS - k]]).astype(int)
    pick = pick[lungs[pick].any(axis=(1, 2))]
    if not len(pick):
        return {"n": 0}
    maps = quietly(default_maps, model, test.images[pick])
    total = maps.sum(axis=(1, 2)) + 1e-12
    size = maps.shape[-1]
    out = {"n": int(len(pick))}
    regions = {"outside the lungs": ~lungs[pick], "frame": swaps.geometry("frame", size)[None], "corners": swaps.geometry("corners", size)[None]}
    for name, region in regions.items():
        region = np.broadcast_to(region, maps.shape)
        out[name] = {"share": float(((maps * region).sum(axis=(1, 2)) / total).mean()), "area": float(region.mean())}
    return out


def _metadata(index: pd.DataFrame, y, patients, train, test, p_test, emb_test, seed: int) -> dict:
    """Per metadata cue: the data's tie, the network's score within each class, the embedding's probe."""
    out = {}
    test_rows = np.flatnonzero(test)
    for cue in cc.METADATA:
        levels = cc.cue_levels(index, cue, train)
        tie = cc.data_tie(levels, y, patients, train, test, n_boot=N_BOOT, seed=seed)
        p = np.full(len(y), math.nan)
        p[test_rows] = p_test
        within = cc.within_class(p, levels, y, patients, train, test, n_boot=N_BOOT, seed=seed)
        probe = (cc.within_class_probe(emb_test, levels[test_rows], y[test_rows], patients[test_rows], np.ones(len(test_rows), bool), seed)
                 if emb_test is not None else {"accuracy": math.nan, "majority_rate": math.nan, "classes": 0})
        out[cue] = {"tie": tie, "within_class": within, "probe": probe}
    return out


def _floors(train: ImageSet, test: ImageSet, lungs, p_test, y_test, patients_test) -> dict:
    field = cc.lung_field(lungs)
    found = cc.floors(train.images, train.labels(), test.images, y_test, field)
    out = {}
    for name, f in found.items():
        low, high = cc.floor_ci(f["p_test"], y_test, patients_test, n_boot=N_BOOT)
        out[name] = {"auc": f["auc"], "ci_low": low, "ci_high": high, "area": f["area"],
                     "association": cc.floor_association(p_test, f["p_test"], y_test) if name in cc.CUE_FLOORS else math.nan}
    return out


def measure(run: Run, seed: int = 0) -> dict:
    """Every check of the audit on a run (module docstring), as a JSON-able dict without verdicts."""
    t0 = time.perf_counter()
    model, _ = run.load_model()
    cache = run.cache_dir()
    test = load_images(cache, "test")
    train = load_images(cache, "train")
    if len(train.images) > MAX_TRAIN:
        train = train.take(np.sort(np.random.default_rng(seed).choice(len(train.images), MAX_TRAIN, replace=False)))
    y = test.labels()
    patients = test.index["patient_id"].astype(str).to_numpy()
    p, emb, lungs = _pass(model, test)
    score = lambda images: covid_scores(model, images, batch_size=64)  # noqa: E731 -- the checks' one scoring function
    per_swap = swaps.swap_effects(score, test.images, lungs, y, patients, seed=seed)
    both = pd.concat([train.index, test.index], ignore_index=True)
    is_train = np.r_[np.ones(len(train.index), bool), np.zeros(len(test.index), bool)]
    meta = _metadata(both, np.r_[train.labels(), y], np.r_[train.index["patient_id"].astype(str).to_numpy(), patients],
                     is_train, ~is_train, p, emb, seed)
    return {"n_test": int(len(y)), "n_train": int(len(train.images)), "model_auc": _auc(y, p),
            "swaps": swaps.summarise_swaps(per_swap, n_boot=N_BOOT, seed=seed).to_dict("records"),
            "metadata": meta, "floors": _floors(train, test, lungs, p, y, patients),
            "blanking": blanking_aucs(model, test.images, lungs, np.ones(len(y), bool), y, batch_size=64,
                                      masks=(lungs, np.ones(len(y), bool))),
            "heat_map": _heat_map(model, test, lungs, y, seed),
            "seconds": round(time.perf_counter() - t0, 1)}


def audit_run(run_dir: str | Path, seed: int = 0, refresh: bool = False, twins: bool = True) -> dict:
    """The run's shortcut_audit.json: measured (module docstring) or reused; returns its content. A
    kept audit made under other thresholds keeps its measurements: only its verdicts are made again."""
    run = Run.open(run_dir)
    found = run.shortcut_audit
    best = run.checkpoint("best")
    if (not refresh and found is not None and found.get("audit_format") == AUDIT_FORMAT
            and run.shortcut_audit_at is not None and best.is_file() and run.shortcut_audit_at >= best.stat().st_mtime):
        if found.get("settings") == SETTINGS:
            return found
        checks = found["checks"]
        audit = found | {"settings": SETTINGS, "network_verdict": network_verdict(checks), "data_verdict": data_verdict(checks)}
        run.write_shortcut_audit(audit)
        return audit
    checks = _clean(measure(run, seed))
    audit = {"audit_format": AUDIT_FORMAT, "settings": SETTINGS, "seed": seed, "checks": checks,
             "network_verdict": network_verdict(checks), "data_verdict": data_verdict(checks),
             "twins": _clean(run_twin_truth(run)) if twins else None}
    run.write_shortcut_audit(audit)
    return audit


def analysis(run_dir: str | Path) -> dict:
    """A study's per-run analysis (run_study): the audit (reused when current) in the compact form
    the calibration reads: each verdict's named cues, and the twins' truth per cue."""
    audit = audit_run(run_dir)
    return {"network": audit["network_verdict"]["named"], "data": audit["data_verdict"]["named"], "twins": audit["twins"],
            "model_auc": audit["checks"]["model_auc"], "seconds": audit["checks"]["seconds"]}
