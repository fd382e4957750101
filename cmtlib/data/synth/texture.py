"""Textures shared by many films: lung vessel trees, smooth random fields and marker glyphs.

Vessel trees are drawn once per process in polar coordinates around a hilum (angle x radius) and
looked up per film, so a film pays for one arctan2, not for drawing a branching tree. The trees
come from a fixed seed, so every process (and every run) gets the same ones.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

N_TEMPLATES = 8
N_ANGLE, N_RADIUS = 360, 160
R_MAX = 1.15  # radius covered, in lung heights (the hilum to the farthest costophrenic angle)
_TEMPLATE_SEED = 20200807


def _tree(rng: np.random.Generator) -> np.ndarray:
    """One vessel tree, (N_ANGLE, N_RADIUS): trunks leave the hilum, wander, fork and taper."""
    theta = np.linspace(-np.pi, np.pi, N_ANGLE, endpoint=False, dtype=np.float32)
    out = np.zeros((N_ANGLE, N_RADIUS), np.float32)
    # Angle 0 points to the chest wall; |angle| > ~2.2 would point into the mediastinum.
    n0 = int(rng.integers(7, 11))
    ang = np.sort(rng.uniform(-2.1, 2.1, n0))
    wid = rng.uniform(0.012, 0.018, n0)
    amp = np.ones(n0)
    for j in range(N_RADIUS):
        r = (j + 0.5) / N_RADIUS * R_MAX
        if r >= 0.04:
            d = (theta[:, None] - ang[None, :].astype(np.float32) + np.pi) % (2 * np.pi) - np.pi  # wrapped
            z = d * (r / wid).astype(np.float32)
            out[:, j] = (amp.astype(np.float32) * np.exp(-np.minimum(z * z, 30.0))).sum(axis=1)
        ang = ang + rng.normal(0, 0.03, ang.size)
        wid = wid * 0.992
        # Forks: the daughter veers off, the parent bends the other way a little; both thin.
        fork = (rng.random(ang.size) < 0.045) & (np.arange(ang.size) < 120 - ang.size)
        spread = rng.uniform(0.1, 0.25, ang.size)
        ang, wid, amp = (
            np.concatenate([ang - 0.4 * spread * fork, (ang + spread)[fork]]),
            np.concatenate([wid * np.where(fork, 0.85, 1.0), (wid * 0.8)[fork]]),
            np.concatenate([amp, (amp * 0.85)[fork]]),
        )
    r = (np.arange(N_RADIUS) + 0.5) / N_RADIUS * R_MAX
    out *= np.clip((1.0 - r) / 0.45, 0.0, 1.0)[None, :] ** 1.5  # markings fade toward the periphery
    return (out / np.quantile(out[out > 0], 0.995)).clip(0, 1.5).astype(np.float32)


@lru_cache(maxsize=1)
def vessel_trees() -> np.ndarray:
    """(N_TEMPLATES, N_ANGLE, N_RADIUS) float32 vessel trees, identical in every process."""
    rng = np.random.default_rng(_TEMPLATE_SEED)
    return np.stack([_tree(rng) for _ in range(N_TEMPLATES)])


def vessel_map(x: np.ndarray, y: np.ndarray, hila: dict[int, tuple[float, float]], mid: float, scale: float, template: int) -> np.ndarray:
    """Vessel markings of both lungs: (H, W) in about [0, 1.5].

    Args:
        x, y: (1, W) and (H, 1) posed coordinates.
        hila: side -> (x, y) of that hilum.
        mid: midline x; columns left of it use the right (image-left) hilum.
        scale: lung height, so trees scale with the lungs.
        template: picks a tree per side (template, template + 1).
    """
    trees = vessel_trees()
    left = x < mid
    hx = np.where(left, hila[-1][0], hila[1][0])
    hy = np.where(left, hila[-1][1], hila[1][1])
    side = np.where(left, -1.0, 1.0)
    dx, dy = side * (x - hx), y - hy
    # Mirroring the left lung keeps angle 0 pointing to the chest wall on both sides.
    ia = ((np.arctan2(dy, dx) + np.pi) * (N_ANGLE / (2 * np.pi))).astype(np.int32) % N_ANGLE
    ir = np.minimum((np.sqrt(dx * dx + dy * dy) * (N_RADIUS / (R_MAX * scale))).astype(np.int32), N_RADIUS - 1)
    t_left, t_right = trees[template % N_TEMPLATES], trees[(template + 1) % N_TEMPLATES]
    return np.where(left, t_left[ia, ir], t_right[ia, ir])


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field (size, size), about unit variance, with features ~size/cells wide."""
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    # Bicubic upsampling in Pillow: ~0.3 ms at 256 px, where a gaussian-weighted upsampling in numpy
    # costs ten times that and BLAS matmuls stall on thread wake-ups when cores are shared.
    f = np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BICUBIC))
    return f / (f.std() + 1e-6)


# 5 x 7 glyphs of the side markers hospitals burn into films, and of the planted text (cues.py).
_GLYPHS = {
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "I": ["11111", "00100", "00100", "00100", "00100", "00100", "11111"],
    "C": ["01111", "10000", "10000", "10000", "10000", "10000", "01111"],
    "U": ["10001", "10001", "10001", "10001", "10001", "10001", "01110"],
}


def glyph(letter: str, size: int) -> np.ndarray:
    """The marker letter as a bool bitmap about 3.5 % of the image side tall (at least 7 px)."""
    bits = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]])
    k = max(1, round(size * 0.035 / 7))
    return np.kron(bits, np.ones((k, k), dtype=bool))
