"""One film: anatomy, bones, lesion and imaging chain, to an 8-bit image and its masks.

The film is built as a density map (0 outside the body, about 1 through the mediastinum and
abdomen, about 0.4 over aerated lung), blurred, turned into brightness with an exponential
(denser = brighter, saturating like a detector), then the source's look: contrast, gamma,
edge enhancement, noise and its side marker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from cmtlib.data.synth.anatomy import Chest, build_chest, smoothstep
from cmtlib.data.synth.bones import bones
from cmtlib.data.synth.cohort import Case
from cmtlib.data.synth.disease import LESIONS
from cmtlib.data.synth.texture import glyph, vessel_map

IMAGE_TAG, LESION_TAG, JITTER_TAG = 0x1A6E, 0x1E51, 0x717E

# How the two sites' films differ: site b is a noisier, flatter, softer unit with a foggy background.
SOURCE_LOOK = {
    "synth-a": {"gain": 1.3, "gamma": 0.9, "noise": 0.012, "blur": 1.0, "sharpen": 0.6, "fog": 0.0, "marker": ("R", "left")},
    "synth-b": {"gain": 1.15, "gamma": 1.25, "noise": 0.03, "blur": 1.4, "sharpen": 0.0, "fog": 0.05, "marker": ("L", "right")},
}
P_MARKER = 0.85  # some films lack the marker, independently of the label
AIR = 0.8       # density a fully aerated lung removes


@dataclass
class Film:
    image: np.ndarray            # (S, S) uint8
    lung: np.ndarray             # (S, S) bool ground-truth lung mask
    disease: np.ndarray | None   # (S, S) bool, None where the lesion has no lung-field mask
    lungs: tuple[np.ndarray, np.ndarray]  # the image-left and image-right lung masks (for boxes)
    body: np.ndarray             # (S, S) bool: inside the body outline
    heart_width: float           # fraction of the image side (ground truth, for tests)


def _soft_tissue(chest: Chest, case: Case) -> np.ndarray:
    """Extra soft-tissue density: breast shadows over the lower lateral lungs, hilar vessels."""
    a, x, y = case.anatomy, chest.x, chest.y
    out = np.zeros((chest.size, chest.size), np.float32)
    if a.breast > 0:
        for side, lung in chest.lungs.items():
            cx, cy = chest.mid + side * 0.6 * a.thorax_hw, lung.base - 0.06
            d2 = ((x - cx) / 0.2) ** 2 + ((y - cy) / 0.13) ** 2
            out += a.breast * np.sqrt(np.sqrt(np.clip(1.0 - d2, 0, 1)))
    return out


def render(case: Case, size: int, seed: int) -> Film:
    """Draw the film of `case` at size x size pixels; deterministic for (case, size, seed)."""
    rng = np.random.default_rng([seed, IMAGE_TAG, case.index])
    # The lesion draws from its own streams (its shape per patient, its jitter per film), so the
    # same film with and without the lesion differs only by the lesion.
    lrng = np.random.default_rng([LESION_TAG, case.disease_seed])
    jrng = np.random.default_rng([seed, JITTER_TAG, case.index])
    a = case.anatomy
    raise_by = 0.02 + 0.03 * case.severity if case.kind == "atelectasis" else 0.0
    chest = build_chest(a, case.view, rng, size, raise_side=case.side, raise_by=raise_by)
    x, y = chest.x, chest.y
    heart = chest.heart
    fields = chest.fields

    # Air: thickest mid-lung, thin at the chest wall, apex and behind the heart.
    air = np.zeros((size, size), np.float32)
    for lung in chest.lungs.values():
        depth = np.sqrt(np.clip(4.0 * lung.across * (1.0 - lung.across), 0, 1))
        air += lung.field * depth * (0.65 + 0.35 * smoothstep(0.0, 0.3, lung.v))
    air *= 1.0 - 0.85 * chest.heart_depth - 0.1 * heart

    hila = {}
    for side, lung in chest.lungs.items():
        hila[side] = (a.mid + side * (a.mediast_hw + 0.035), lung.top + 0.4 * (lung.base - lung.top))
    height = 0.5 * sum(lung.base - lung.top for lung in chest.lungs.values())
    vessels = vessel_map(x, y, hila, a.mid, height, a.vessel_template) * fields
    hilum = sum(np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / 0.03 ** 2) for hx, hy in hila.values())

    lesion = LESIONS[case.kind](case, chest, lrng, jrng)
    if lesion.no_vessels is not None:
        vessels = vessels * ~lesion.no_vessels
    markings = 0.1 * vessels
    if lesion.bronchograms is not None:
        markings = np.where(lesion.bronchograms, -0.12 * vessels, markings)
    if lesion.extra_air is not None:
        air = air + lesion.extra_air

    carina = min(lung.top for lung in chest.lungs.values()) + 0.16
    trachea = smoothstep(0.02, 0.012, np.abs(x - a.mid - 0.004)) * smoothstep(carina, carina - 0.05, y)
    bubble = np.zeros_like(air)
    if a.gastric_bubble:
        left = chest.lungs[1]
        bx, by = a.mid + 0.5 * a.thorax_hw, left.base - 0.5 * a.dome + 0.05
        bubble = np.sqrt(np.clip(1.0 - ((x - bx) / 0.06) ** 2 - ((y - by) / 0.032) ** 2, 0, 1)) * (y > by - 0.01)

    density = (
        chest.body - AIR * air + 0.06 * chest.heart_depth + bones(chest, a, case.view, case.age, rng)
        + markings + 0.12 * hilum * fields + _soft_tissue(chest, case) + lesion.density
        - 0.12 * trachea - 0.22 * bubble
    )
    image = _expose(np.clip(density, 0, None) * (chest.body > 0), case, rng, size)
    lung_r, lung_l = chest.lungs[-1].field & ~heart, chest.lungs[1].field & ~heart
    return Film(image, lung_r | lung_l, lesion.mask, (lung_r, lung_l), chest.body > 0, chest.heart_width)


def _expose(density: np.ndarray, case: Case, rng: np.random.Generator, size: int) -> np.ndarray:
    """Density -> 8-bit film through the source's imaging chain."""
    look = SOURCE_LOOK[case.source]
    px = size / 256.0  # blur widths are set at 256 px and scale with the film
    d = gaussian_filter(density, sigma=0.9 * px * look["blur"], mode="nearest")
    gain = look["gain"] * rng.uniform(0.8, 1.2)  # exposure varies film to film
    img = (1.0 - np.exp(-gain * d)) / (1.0 - np.exp(-gain * 1.45))
    if look["sharpen"]:
        img = img + look["sharpen"] * (img - gaussian_filter(img, sigma=3.0 * px, mode="nearest"))
    img = np.clip(img, 0, 1) ** (look["gamma"] * rng.uniform(0.95, 1.05))
    img = look["fog"] + (1.0 - look["fog"]) * img
    img = img + look["noise"] * rng.standard_normal(img.shape, dtype=np.float32)
    if rng.random() < P_MARKER:
        letter, corner = look["marker"]
        g = glyph(letter, size)
        m = max(2, size // 24)
        col = m if corner == "left" else size - m - g.shape[1]
        img[m:m + g.shape[0], col:col + g.shape[1]][g] = 0.97
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
