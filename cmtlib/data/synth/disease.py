"""Lesions drawn into the lung fields, with their ground-truth masks.

Each lesion's shape comes from a generator seeded by the patient's `disease_seed`, so follow-up
films show the same lesion (COVID opacities grow in place); only small jitter is per film.
Densities are in the units of render.py, where full lung aeration removes about 0.6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmtlib.data.synth.anatomy import Chest, Lung, smoothstep
from cmtlib.data.synth.cohort import Case
from cmtlib.data.synth.texture import smooth_field


@dataclass
class Lesion:
    density: np.ndarray              # (H, W) added density
    mask: np.ndarray | None          # (H, W) bool ground truth; None: no lung-field lesion
    extra_air: np.ndarray | None = None   # (H, W) added lucency (pneumothorax)
    no_vessels: np.ndarray | None = None  # (H, W) bool: no lung markings here (pneumothorax)
    bronchograms: np.ndarray | None = None  # (H, W) bool: markings drawn dark (air in bronchi)


def _at(lung: Lung, v: float, across: float) -> tuple[float, float]:
    """Posed (x, y) of a point given in lung coordinates (v down the lung, `across` from the wall)."""
    y = lung.top + v * (lung.base - lung.top)
    row = int(np.argmin(np.abs(lung.v[:, 0] - v)))
    x_lat, x_med = float(lung.x_lat[row, 0]), float(lung.x_med[row, 0])
    return x_lat + across * (x_med - x_lat), y


def covid(case: Case, chest: Chest, lrng: np.random.Generator, rng: np.random.Generator) -> Lesion:
    """Bilateral, peripheral, lower-zone patchy ground-glass opacities; extent and density follow
    `case.severity` (which grows with the day), denser consolidation appearing late."""
    size, sev = chest.size, case.severity
    weight = np.zeros((size, size), np.float32)
    for lung in chest.lungs.values():
        periph = np.exp(-lung.across / 0.3)
        lower = 0.3 + 0.7 * smoothstep(0.15, 0.8, lung.v)
        weight += lung.field * periph * lower * lrng.uniform(0.8, 1.0)
    patches = 0.8 * smooth_field(lrng, size, 7) + 0.5 * smooth_field(lrng, size, 14) + 0.15 * smooth_field(rng, size, 12)
    score = weight * np.exp(0.6 * patches)
    vis = chest.lung_mask
    values = score[vis]
    if values.size == 0:
        return Lesion(np.zeros_like(score), np.zeros_like(vis))
    # The share of the lung involved grows with severity: 5 % at onset to ~45 % at the peak.
    frac = 0.05 + 0.42 * sev
    k = int((1 - frac) * (values.size - 1))
    thr = float(np.partition(values, k)[k])
    # Ground glass: ill-defined margins (a wide ramp around the threshold) over a faint haze of the
    # whole lower periphery; denser consolidation appears where the score is highest, late.
    core = smoothstep(0.55 * thr, 2.0 * thr, score)
    amp = 0.04 + 0.3 * sev
    density = amp * (0.75 * core + 0.25 * sev * weight) + 0.12 * sev ** 2 * smoothstep(2.0 * thr, 3.5 * thr, score)
    mask = vis & (score > thr)
    return Lesion(density.astype(np.float32), mask)


def consolidation(case: Case, chest: Chest, lrng: np.random.Generator, rng: np.random.Generator) -> Lesion:
    """Unilateral lobar consolidation: dense, fairly homogeneous, sharp at a fissure, with air
    bronchograms (render.py draws the lung markings dark inside it)."""
    lung = chest.lungs[case.side]
    fuzz = smooth_field(lrng, chest.size, 10)
    lobe = int(lrng.integers(0, 3))
    s = 0.6 + 0.4 * case.severity
    if lobe == 0:    # upper lobe, bounded below by the horizontal fissure (sharp)
        region = (lung.v < 0.42 * s + 0.05) & (lung.across + 0.08 * fuzz > 0.05)
    elif lobe == 1:  # lower lobe, fuzzy upper margin
        region = lung.v > 1.0 - 0.5 * s + 0.06 * fuzz
    else:            # middle lobe / lingula, against the heart border
        region = (lung.v > 0.45) & (lung.v < 0.8) & (lung.across > 1.0 - 0.7 * s + 0.1 * fuzz)
    region = region & lung.field
    # Soft, lobulated edges except at the fissure; thinner (less dense) at the lung's margins.
    edge = smoothstep(-0.3, 0.6, fuzz + 0.5) * np.clip(4.0 * lung.across * (1.0 - lung.across) + 0.3, 0, 1)
    density = region * (0.45 + 0.15 * case.severity) * (0.6 + 0.4 * edge) * (1.0 - 0.7 * chest.heart_depth)
    return Lesion(density.astype(np.float32), region & chest.lung_mask, bronchograms=region)


def effusion(case: Case, chest: Chest, lrng: np.random.Generator, rng: np.random.Generator) -> Lesion:
    """Pleural fluid at the base: a meniscus climbing the chest wall, the costophrenic angle blunted,
    the dome's outline lost."""
    density = np.zeros((chest.size, chest.size), np.float32)
    mask = np.zeros((chest.size, chest.size), bool)
    for side in ((-1, 1) if case.side == 0 else (case.side,)):
        lung = chest.lungs[side]
        height = (0.1 + 0.22 * case.severity + rng.normal(0, 0.01)) * (lung.base - lung.top)
        level = lung.base - height - 0.06 * (1.0 - lung.across) ** 2
        fluid = lung.field & (chest.y > level)
        # Fluid behind the heart adds little: the heart already stops the beam there.
        density += fluid * 0.6 * smoothstep(0.0, 0.03, chest.y - level) * (1.0 - 0.8 * chest.heart_depth)
        mask |= fluid & chest.lung_mask & (chest.y > level + 0.005)
    return Lesion(density, mask)


def nodule(case: Case, chest: Chest, lrng: np.random.Generator, rng: np.random.Generator) -> Lesion:
    """One or two round, well-defined nodules (masses when large)."""
    density = np.zeros((chest.size, chest.size), np.float32)
    mask = np.zeros((chest.size, chest.size), bool)
    for _ in range(1 if lrng.random() < 0.7 else 2):
        lung = chest.lungs[int(lrng.choice([-1, 1]))]
        cx, cy = _at(lung, float(lrng.uniform(0.2, 0.8)), float(lrng.uniform(0.15, 0.7)))
        r = 0.014 + 0.03 * case.severity
        d2 = ((chest.x - cx) ** 2 + (chest.y - cy) ** 2) / r ** 2
        density += 0.38 * np.sqrt(np.clip(1.0 - d2, 0, 1))
        mask |= d2 < 0.9
    return Lesion(density, mask & chest.lung_mask)


def atelectasis(case: Case, chest: Chest, lrng: np.random.Generator, rng: np.random.Generator) -> Lesion:
    """Plate-like (discoid) atelectasis, or a collapsed basal segment as a wedge pointing up to the
    hilum; the hemidiaphragm on that side is raised (volume loss; see render.py)."""
    lung = chest.lungs[case.side]
    if lrng.random() < 0.55:
        cx, cy = _at(lung, float(lrng.uniform(0.6, 0.82)), float(lrng.uniform(0.3, 0.6)))
        angle = lrng.uniform(-0.25, 0.25)
        length, thick = 0.12 + 0.12 * case.severity, 0.014 + 0.01 * case.severity
        along = (chest.x - cx) * np.cos(angle) + (chest.y - cy) * np.sin(angle)
        perp = -(chest.x - cx) * np.sin(angle) + (chest.y - cy) * np.cos(angle)
        taper = np.sqrt(np.clip(1.0 - (2 * along / length) ** 2, 0, 1))
        region = np.abs(perp) < 0.5 * thick * taper
        density = region * 0.4
    else:
        centre = float(lrng.uniform(0.3, 0.6))
        v0 = 0.75 - 0.2 * case.severity
        spread = np.clip(lung.v - v0, 0, None) * 1.4
        region = lung.field & (np.abs(lung.across - centre) < spread)
        density = region * 0.45 * smoothstep(0.0, 0.08, spread - np.abs(lung.across - centre))
    return Lesion(density.astype(np.float32), region & chest.lung_mask)


def pneumothorax(case: Case, chest: Chest, lrng: np.random.Generator, rng: np.random.Generator) -> Lesion:
    """Air in the pleural space: the lung edge (a thin white visceral line) pulled away from the
    chest wall and apex, no lung markings beyond it, the space darker than lung."""
    lung = chest.lungs[case.side]
    gap = 0.025 + 0.07 * case.severity
    h = lung.base - lung.top
    v_top = 0.8 * gap / h
    x_edge = lung.x_lat - case.side * gap * (1.0 - 0.6 * np.clip(lung.v, 0, 1))
    beyond = case.side * (chest.x - x_edge) > 0  # between the lung edge and the chest wall
    space = lung.field & (beyond | (lung.v < v_top))
    inner = lung.field & ~space
    line = inner & ((case.side * (chest.x - x_edge) < 0.006) | (lung.v < v_top + 0.006 / h))
    return Lesion((0.12 * line).astype(np.float32), space & chest.lung_mask, extra_air=0.25 * space, no_vessels=space)


def cardiomegaly(case: Case, chest: Chest, lrng: np.random.Generator, rng: np.random.Generator) -> Lesion:
    """An enlarged heart (drawn by anatomy.py from a larger cardiothoracic ratio); no lung-field
    lesion, so no disease mask (unknown, not known-empty: see the package docstring)."""
    return Lesion(np.zeros((chest.size, chest.size), np.float32), None)


def healthy(case: Case, chest: Chest, lrng: np.random.Generator, rng: np.random.Generator) -> Lesion:
    return Lesion(np.zeros((chest.size, chest.size), np.float32), np.zeros((chest.size, chest.size), bool))


LESIONS = {
    "healthy": healthy, "covid": covid, "consolidation": consolidation, "effusion": effusion,
    "nodule": nodule, "atelectasis": atelectasis, "pneumothorax": pneumothorax, "cardiomegaly": cardiomegaly,
}
