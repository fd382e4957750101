"""The statistics of the in-distribution check: a Mahalanobis distance with a Ledoit-Wolf-shrunk
covariance, and the conformal threshold on validation scores (numpy only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """(covariance, shrinkage): the empirical covariance of the rows of `z` shrunk towards a scaled
    identity by Ledoit and Wolf's (2004) closed-form intensity, as sklearn.covariance.LedoitWolf
    computes it (sklearn is not on a bare GPU machine; tests compare the two).

    Shape:
        z: (N, P); covariance: (P, P).
    """
    n, p = z.shape
    x = z - z.mean(0)
    cov = x.T @ x / n
    mu = np.trace(cov) / p
    frob = (cov**2).sum()  # ||S||_F^2
    # (1 / (n^2 p)) sum_k ||x_k x_k^T - S||_F^2, written with sum_k ||x_k||^4 so no (P, P) matrix per row is formed
    beta = (((x**2).sum(1) ** 2).sum() / n - frob) / (n * p)
    delta = (frob - 2 * mu * np.trace(cov) + p * mu**2) / p  # ||S - mu I||_F^2 / p
    shrinkage = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    return (1 - shrinkage) * cov + shrinkage * mu * np.eye(p), shrinkage


@dataclass
class Gaussian:
    """A Mahalanobis distance fitted on rows: standardise each feature, then a shrunk covariance."""

    centre: np.ndarray  # (P,) training mean
    scale: np.ndarray  # (P,) training standard deviation (1 where a feature never varies)
    precision: np.ndarray  # (P, P) inverse of the shrunk covariance of the standardised features

    @classmethod
    def fit(cls, rows: np.ndarray) -> Gaussian:
        rows = np.asarray(rows, dtype=np.float64)
        centre, scale = rows.mean(0), rows.std(0)
        scale = np.where(scale > 1e-8, scale, 1.0)  # a feature constant in training: any change of it is far
        cov, _ = ledoit_wolf((rows - centre) / scale)
        # A small ridge keeps the inverse finite where a feature is constant in training.
        ridge = 1e-3 * max(float(np.trace(cov)) / len(cov), 1e-6)
        return cls(centre, scale, np.linalg.inv(cov + ridge * np.eye(len(cov))))

    def distance(self, rows: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distances; infinite where a row is not finite (a broken output is far)."""
        z = (np.asarray(rows, dtype=np.float64) - self.centre) / self.scale
        bad = ~np.isfinite(z).all(1)
        z = np.where(np.isfinite(z), z, 0.0)
        d = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))
        return np.where(bad, np.inf, d)


def conformal_threshold(scores: np.ndarray, share: float) -> float:
    """The k-th smallest validation score, k = ceil((n + 1)(1 - share)) (at most n): a new film
    exchangeable with the validation films scores above it with probability at most `share` (split
    conformal prediction; at most 1 / (n + 1) above `share`, when n < 1 / share - 1, the largest score).
    An empirical quantile would sit lower, its few films above it a noisy estimate on ~100 films."""
    finite = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    if not len(finite):
        return math.inf
    k = min(len(finite), math.ceil((len(finite) + 1) * (1 - share)))
    return float(finite[k - 1])
