"""Bootstrap confidence intervals over patients, vectorised through the weighted kernels."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from cmtlib.errors import UnknownNameError
from cmtlib.metrics._kernels import _binary, _ranked, _scores, _w_auc, _w_ece, _w_eer, _w_mean
from cmtlib.metrics.masks import _probabilities

CHUNK = 64  # resamples per weight matrix: bounds memory at CHUNK x N floats; fixed so seeds repeat

class BootstrapCI(NamedTuple):
    """A percentile interval: the estimate on all data, the interval, and how many resamples made it."""

    estimate: float
    low: float
    high: float
    n_used: int  # resamples whose statistic was defined (not NaN)
    n_boot: int


def _resample_weights(codes: np.ndarray, n_boot: int, seed: int):
    """Yield (B, N) image weights: how often each image's patient was drawn, CHUNK resamples at a time."""
    n_groups = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot if n_groups else 0, CHUNK):
        b = min(CHUNK, n_boot - start)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        counts = np.bincount((draws + n_groups * np.arange(b)[:, None]).ravel(), minlength=b * n_groups)
        yield counts.reshape(b, n_groups)[:, codes].astype(float)


def _interval(values: np.ndarray, alpha: float, min_used: float):
    values = values[~np.isnan(values)]
    if values.size == 0 or values.size < min_used:
        return math.nan, math.nan, values.size
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), values.size


def _ranking_stat(kernel):
    def make(y, s):
        ranked = _ranked(_binary(y), _scores(s, len(y)))
        return lambda W: kernel(W, ranked)
    return make


def _ece_stat(y, p):
    y, p = _probabilities(y, p)
    return lambda W: _w_ece(W, y.astype(float), p, 10)


# Statistics that bootstrap_ci runs on every resample at once: name -> f(*arrays) -> (W -> (B,)).
WEIGHTED_STATISTICS: dict[str, Callable] = {
    "auc": _ranking_stat(_w_auc),
    "eer": _ranking_stat(_w_eer),
    "mean": lambda x: (lambda W, x=np.asarray(x, dtype=float): _w_mean(W, x)),
    "ece": _ece_stat,
}


def bootstrap_ci(statistic, arrays, groups, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 min_used: float = 0.5) -> BootstrapCI:
    """Percentile bootstrap CI over groups (patients): draw patients with replacement, take all their images.

    Args:
        statistic: a callable `f(*arrays) -> float` (or `f(df)` when `arrays` is a DataFrame), called
            once per resample; or a name in WEIGHTED_STATISTICS ("auc", "eer", "mean", "ece"), which
            runs every resample at once (fast) and gives the same values for the same seed.
        arrays: a sequence of (N,) arrays, one array, or a DataFrame; resampled together.
        groups: (N,) patient ids (any hashable values).
        n_boot: number of resamples.
        seed: seeds the resampling; the same seed gives the same interval.
        alpha: 0.05 for a 95 % interval.
        min_used: the least share of resamples with a defined (non-NaN) statistic, else the CI is NaN.

    Returns:
        BootstrapCI(estimate on all data, low, high, n_used, n_boot).
    """
    is_df = isinstance(arrays, pd.DataFrame)
    if not is_df and not isinstance(arrays, (list, tuple)):
        arrays = (arrays,)  # one array (or Series)
    n = len(arrays) if is_df else len(arrays[0])
    codes, _ = pd.factorize(pd.Series(np.asarray(groups, dtype=object)), use_na_sentinel=False)
    if codes.shape != (n,):
        raise ValueError(f"groups has {codes.size} ids; expected {n}, one per image")
    if isinstance(statistic, str):
        if statistic not in WEIGHTED_STATISTICS:
            raise UnknownNameError(f"unknown statistic {statistic!r}; valid: {sorted(WEIGHTED_STATISTICS)} or a callable")
        fn = WEIGHTED_STATISTICS[statistic](*arrays)
        with np.errstate(all="ignore"):
            estimate = float(fn(np.ones((1, n)))[0])
            values = np.concatenate([fn(W) for W in _resample_weights(codes, n_boot, seed)] or [np.empty(0)])
    else:
        take = (lambda i: (arrays.iloc[i],)) if is_df else (lambda i: tuple(np.asarray(a)[i] for a in arrays))
        estimate = float(statistic(*take(np.arange(n))))
        values = np.array([float(statistic(*take(np.repeat(np.arange(n), w.astype(int)))))
                           for W in _resample_weights(codes, n_boot, seed) for w in W])
    low, high, used = _interval(values, alpha, min_used * n_boot)
    return BootstrapCI(estimate, low, high, used, n_boot)


# ---- metrics.json from predictions.csv (docs/CONTRACTS.md) ----------------------------------------

