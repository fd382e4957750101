"""Chest geometry of one film: pose, body outline, lung fields, diaphragm domes and heart.

Coordinates are fractions of the image side (x right, y down; patient's right on the image left,
as radiographs are read). Outlines are written as functions of y for each lung (lateral and medial
walls) and of x for the diaphragm, so most work is on (H, 1) and (1, W) vectors broadcast to (H, W);
that keeps a 256 px film at a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmtlib.data.synth.cohort import Anatomy

SIDES = (-1, 1)  # -1: image left = patient's right lung; +1: image right = patient's left lung


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class Lung:
    side: int
    top: float
    base: float
    v: np.ndarray        # (H, 1) 0 at the apex, 1 at the costophrenic angle
    x_lat: np.ndarray    # (H, 1) lateral (chest-wall) edge
    x_med: np.ndarray    # (H, 1) medial (mediastinal) edge, behind the heart included
    y_dia: np.ndarray    # (1, W) diaphragm dome under this lung
    field: np.ndarray    # (H, W) bool: the lung field, the part behind the heart included
    across: np.ndarray   # (H, W) 0 at the chest wall, 1 at the mediastinum (inside the field)


@dataclass
class Chest:
    size: int
    x: np.ndarray        # (1, W) posed x of each column
    y: np.ndarray        # (H, 1) posed y of each row
    mid: float
    thorax_hw: float
    lungs: dict[int, Lung]
    heart: np.ndarray    # (H, W) bool
    heart_depth: np.ndarray  # (H, W) heart thickness, 0 at its border to 1 in the middle
    heart_width: float   # in fractions of the side (before pose scaling)
    body: np.ndarray     # (H, W) soft-tissue thickness, 0 outside the body

    @property
    def fields(self) -> np.ndarray:
        """Both lung fields, behind the heart included (where air attenuates the beam)."""
        return self.lungs[-1].field | self.lungs[1].field

    @property
    def lung_mask(self) -> np.ndarray:
        """The ground-truth lung mask: the lung fields minus the heart shadow (as JSRT-style masks)."""
        return self.fields & ~self.heart


def _lung(side: int, a: Anatomy, x: np.ndarray, y: np.ndarray, top: float, base: float, knob: float) -> Lung:
    v = (y - top) / (base - top)
    vc = np.clip(v, 0.0, 1.0)
    x_apex = a.mid + side * (a.mediast_hw + 0.3 * (a.thorax_hw - a.mediast_hw))
    reach = a.thorax_hw - abs(x_apex - a.mid)
    # Rounded apex (a quarter circle in v), a slight bulge and the chest wall drawing in at the base.
    g = np.sqrt(1.0 - (1.0 - np.clip(vc / 0.55, 0, 1)) ** 2)
    g_lat = g * (1.0 - 0.05 * smoothstep(0.8, 1.0, vc)) + 0.03 * np.sin(np.pi * vc)
    x_lat = x_apex + side * reach * g_lat
    # Mediastinal edge: narrow above, the aortic knob bulging into the left lung, and the lower lobes
    # reaching behind the heart towards the spine.
    m = a.mediast_hw * (1.0 - 0.45 * smoothstep(0.45, 0.85, vc))
    if side > 0:
        m = m + (0.01 + 0.02 * knob) * np.exp(-(((vc - 0.17) / 0.07) ** 2))
    g_med = np.sqrt(1.0 - (1.0 - np.clip(vc / 0.2, 0, 1)) ** 2)
    x_med = x_apex - side * (abs(x_apex - a.mid) - m) * g_med
    # Diaphragm dome: highest a little lateral of mid-lung, meeting the chest wall exactly at `base`
    # (a deep, acute costophrenic angle: steep like a circle's edge there, flatter medially).
    wall = x_apex + side * reach * 0.95  # x_lat at v = 1
    peak = a.mid + side * 0.5 * abs(wall - a.mid)
    lateral = side * (x - peak) > 0
    half = np.where(lateral, abs(wall - peak), abs(peak - a.mid))
    bump = np.clip(1.0 - ((x - peak) / half) ** 2, 0.0, 1.0)
    y_dia = base - a.dome * bump ** np.where(lateral, 0.45, 0.8)
    field = (v >= 0) & (v <= 1) & (side * (x - x_med) > 0) & (side * (x_lat - x) > 0) & (y < y_dia)
    across = np.clip((x - x_lat) / (x_med - x_lat + 1e-6), 0.0, 1.0)
    return Lung(side, top, base, v.astype(np.float32), x_lat, x_med, y_dia, field, across.astype(np.float32))


def _body(a: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Soft-tissue thickness: neck, sloping shoulders, chest and abdomen (an elliptic cross-section)."""
    shoulder_hw = a.thorax_hw + 0.15
    chest_hw = a.thorax_hw + 0.05 + 0.02 * a.habitus
    # The trapezius slopes from the neck to the shoulder: a smooth ramp, not a step.
    hw = a.neck_hw + (shoulder_hw - a.neck_hw) * smoothstep(a.shoulder_y - 0.1, a.shoulder_y + 0.08, y) ** 0.7
    hw = hw - (shoulder_hw - chest_hw) * smoothstep(a.shoulder_y + 0.1, a.shoulder_y + 0.3, y)
    t = np.sqrt(np.clip(1.0 - ((x - a.mid) / hw) ** 2, 0.0, 1.0))
    if a.arms:
        # Arms hang beside the chest with a strip of air between (PA: arms turned away).
        d = np.abs(x - a.mid) - (chest_hw + 0.05)
        arm = np.sqrt(np.clip(1.0 - ((d - 0.07) / 0.06) ** 2, 0.0, 1.0)) * smoothstep(a.shoulder_y + 0.05, a.shoulder_y + 0.15, y)
        t = np.maximum(t, 0.75 * arm)
    return (t * a.habitus).astype(np.float32)


def build_chest(a: Anatomy, view: str, rng: np.random.Generator, size: int, raise_side: int = 0, raise_by: float = 0.0,
                drawn_view: str | None = None) -> Chest:
    """Pose and outline one film of patient anatomy `a`.

    Args:
        a: the patient's anatomy.
        view: "PA" or "AP"; AP films sit the patient up in bed: shallower inspiration, and the heart
            (far from the film) is magnified by about 15 %.
        rng: this image's generator (pose and inspiration jitter).
        size: image side in pixels.
        raise_side, raise_by: lift one hemidiaphragm (volume loss in atelectasis).
        drawn_view: the view whose random draws are made (default: `view`): a film re-drawn in the
            other view (its twin) makes the same draws as the film itself, so only the view changes.
    """
    pix = (np.arange(size, dtype=np.float32) + 0.5) / size
    # Positioning and collimation vary from film to film (and more between patients in practice).
    scale = rng.uniform(0.88, 1.08)
    dx, dy = rng.normal(0, 0.03), rng.normal(0, 0.025)
    x = ((pix - 0.5 - dx) / scale + 0.5)[None, :]
    y = ((pix - 0.5 - dy) / scale + 0.5)[:, None]
    ap = view == "AP"
    inspiration = rng.normal(0, 0.012) - (0.025 if ap else 0.0)
    knob = a.knob
    lungs = {}
    for side in SIDES:
        base = a.lung_base + inspiration + (a.left_drop if side > 0 else 0.0) - (raise_by if side == raise_side else 0.0)
        top = a.lung_top + (0.006 if side > 0 else 0.0) + rng.normal(0, 0.004)
        lungs[side] = _lung(side, a, x, y, top, base, knob)
    # Heart: between a right border (image left) bulging a third of its width right of the
    # midline and a left border sweeping out to the apex on the left dome; it hangs from the
    # mediastinum at about the level of the hila.
    # The magnification is drawn for AP films only; a PA film re-drawn as AP takes the middle value.
    drawn = rng.uniform(1.1, 1.2) if (drawn_view or view) == "AP" else 1.15
    mag = drawn if ap else 1.0
    width = a.ctr * mag * 2.0 * a.thorax_hw * rng.uniform(0.97, 1.03)
    left = lungs[1]
    h_top = left.top + rng.uniform(0.4, 0.47) * (left.base - left.top)
    h_bot = left.base - 0.6 * a.dome
    t = np.clip((y - h_top) / (h_bot - h_top), 0.0, 1.0)
    neck = 0.8 * a.mediast_hw
    x_right = a.mid - neck - (0.36 * width - neck) * np.sin(np.pi * (0.05 + 0.85 * t)) ** 0.6
    x_left = a.mid + neck + (0.64 * width - neck) * np.sin(0.5 * np.pi * np.clip(t / 0.78, 0, 1)) ** 0.7
    heart = (y >= h_top) & (y < h_bot + 0.1) & (x > x_right) & (x < x_left)
    # Thickness of the heart along the beam: thin at its borders, full in the middle.
    hu = np.clip((x - x_right) / (x_left - x_right + 1e-6), 0.0, 1.0)
    heart_depth = (heart * np.sqrt(4.0 * hu * (1.0 - hu)) * (0.5 + 0.5 * smoothstep(0.0, 0.25, t))).astype(np.float32)
    return Chest(size, x, y, a.mid, a.thorax_hw, lungs, heart, heart_depth, float(width), _body(a, x, y))


def box_of(mask: np.ndarray) -> list[float] | None:
    """[x0, y0, x1, y1] of a mask in pixels (end exclusive, as COCO's x + w), None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
