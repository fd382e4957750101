"""The planted cues' pixels: burned-in text, a collimation frame, lines and tubes, a smaller film.

Which films carry a cue is decided in cohort.py (ties.py gives the probabilities); how each looks is
drawn here from the film's own generator per cue, seeded by (seed, CUE_TAG, cue, stream, film), so a
cue never consumes a draw of the film's other streams: the same film without the cue (its twin)
differs only where the cue is.

- text: "ICU" burned in at a bottom corner, as bright as the side marker (drawn after the noise).
- border: a bright collimation frame, 1.5-3.5 % of the side on each edge (after the noise; never
  over the side marker).
- tubes: radio-opaque lines added to the density before the imaging chain (so blurred and exposed
  like anatomy): 2-3 ECG electrodes with their leads, and some of a central venous line, a
  nasogastric tube and a chest drain. Leads run off the film, over the air beside the body.
- size: the film (image and masks) stored at half its side, as a site with a smaller matrix.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from cmtlib.data.synth.anatomy import Chest
from cmtlib.data.synth.cohort import CUE_TAG, Case
from cmtlib.data.synth.texture import glyph
from cmtlib.data.synth.ties import CUES

BRIGHT = 0.97  # burned-in text and markers: near white, as the side marker
TEXT = "ICU"


def cue_rng(case: Case, seed: int, cue: str) -> np.random.Generator:
    """The film's own generator for one cue's geometry."""
    return np.random.default_rng([seed, CUE_TAG, CUES.index(cue), case.stream, case.index])


def margin(size: int) -> int:
    """Distance of burned-in marks from the film's edge (the side marker's, render.py)."""
    return max(2, size // 24)


def text_mask(case: Case, seed: int, size: int) -> np.ndarray:
    """(S, S) bool: the pixels of the burned-in text, at a bottom corner picked per film."""
    rng = cue_rng(case, seed, "text")
    letters = [glyph(c, size) for c in TEXT]
    gap = max(1, letters[0].shape[1] // 5)
    h = letters[0].shape[0]
    w = sum(g.shape[1] for g in letters) + gap * (len(letters) - 1)
    m = margin(size)
    col = m if rng.random() < 0.5 else size - m - w
    out = np.zeros((size, size), bool)
    row = size - m - h
    for g in letters:
        out[row:row + h, col:col + g.shape[1]] = g
        col += g.shape[1] + gap
    return out


def border(case: Case, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame (S, S) bool, its brightness (S, S) float32): a collimation frame narrower than the
    marker's margin on every edge, unexposed (bright) with a little grain."""
    rng = cue_rng(case, seed, "border")
    top, bottom, left, right = (max(1, int(u * size)) for u in rng.uniform(0.015, 0.035, 4))
    frame = np.zeros((size, size), bool)
    frame[:top] = frame[size - bottom:] = True
    frame[:, :left] = frame[:, size - right:] = True
    level = rng.uniform(0.85, 0.95)
    values = (level + 0.01 * rng.standard_normal((size, size))).astype(np.float32)
    return frame, values


def tubes(case: Case, seed: int, chest: Chest) -> np.ndarray:
    """(S, S) float32 added density of the lines and tubes on this film (module docstring)."""
    rng = cue_rng(case, seed, "tubes")
    size, a = chest.size, case.anatomy
    canvas = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(canvas)
    to_px = _pixels(chest)
    thin = max(1, round(size * 0.005))
    top = min(lung.top for lung in chest.lungs.values())
    base = max(lung.base for lung in chest.lungs.values())
    for side in rng.permutation([-1, 1, int(rng.choice([-1, 1]))])[: int(rng.integers(2, 4))]:
        cx, cy = a.mid + side * rng.uniform(0.18, 0.34), rng.uniform(top - 0.04, top + 0.2)
        r = 0.014
        x0, y0 = to_px(cx - r, cy - r)
        x1, y1 = to_px(cx + r, cy + r)
        draw.ellipse([x0, y0, x1, y1], fill=0.55)
        end = (cx + side * rng.uniform(0.3, 0.5), cy - rng.uniform(0.2, 0.4))  # off the film, up and out
        bend = (cx + side * rng.uniform(0.05, 0.2), cy + rng.uniform(-0.05, 0.08))
        draw.line([to_px(*p) for p in _curve((cx, cy), bend, end)], fill=0.35, width=thin)
    if rng.random() < 0.6:  # central venous line: subclavian vein to the superior vena cava
        side = int(rng.choice([-1, 1]))
        start = (a.mid + side * rng.uniform(0.2, 0.3), top - rng.uniform(0.0, 0.04))
        tip = (a.mid - a.mediast_hw * 0.6, top + rng.uniform(0.16, 0.24))
        draw.line([to_px(*p) for p in _curve(start, (a.mid + side * 0.05, top + 0.02), tip)], fill=0.45, width=thin)
    if rng.random() < 0.6:  # nasogastric tube: down the midline into the stomach under the left dome
        wiggle = rng.uniform(-0.01, 0.01)
        path = _curve((a.mid + wiggle, -0.05), (a.mid + 0.01, base - 0.1), (a.mid + 0.5 * a.thorax_hw, base + 0.06))
        draw.line([to_px(*p) for p in path], fill=0.5, width=max(1, round(size * 0.009)))
    if rng.random() < 0.35:  # chest drain: through the lateral chest wall towards the apex
        side = int(rng.choice([-1, 1]))
        lung = chest.lungs[side]
        start = (a.mid + side * (a.thorax_hw + 0.1), lung.base - 0.05)
        tip = (a.mid + side * 0.5 * a.thorax_hw, lung.top + rng.uniform(0.1, 0.25) * (lung.base - lung.top))
        draw.line([to_px(*p) for p in _curve(start, (a.mid + side * 0.85 * a.thorax_hw, lung.base - 0.15), tip)],
                  fill=0.6, width=max(1, round(size * 0.008)))
    return np.asarray(canvas, dtype=np.float32).copy()


def _pixels(chest: Chest):
    """Map posed anatomical (x, y) to pixel coordinates (x right, y down) through the film's pose."""
    centres = np.arange(chest.size, dtype=np.float64) + 0.5
    xs, ys = chest.x[0].astype(np.float64), chest.y[:, 0].astype(np.float64)
    # The pose is a shift and a scale: x and y are linear in the pixel index (anatomy.build_chest).
    sx = (centres[-1] - centres[0]) / (xs[-1] - xs[0])
    sy = (centres[-1] - centres[0]) / (ys[-1] - ys[0])
    return lambda x, y: (float(centres[0] + (x - xs[0]) * sx), float(centres[0] + (y - ys[0]) * sy))


def _curve(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 24) -> list[tuple[float, float]]:
    """Points of the quadratic Bezier curve from p0 to p2 bending towards p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t ** 2 * np.array(p2)
    return [(float(x), float(y)) for x, y in pts]


def shrink(array: np.ndarray) -> np.ndarray:
    """An image (uint8) or mask (bool) at half the side: area average, masks kept where >= half covered."""
    size = array.shape[0] // 2
    if array.dtype == bool:
        small = Image.fromarray(array.astype(np.float32)).resize((size, size), Image.Resampling.BOX)
        return np.asarray(small) >= 0.5
    return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BOX))


def shrink_any(mask: np.ndarray) -> np.ndarray:
    """A mask at half the side where any pixel of the full-size mask contributes (BOX weights)."""
    size = mask.shape[0] // 2
    return np.asarray(Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.Resampling.BOX)) > 0
