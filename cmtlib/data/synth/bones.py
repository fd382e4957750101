"""Bones of the chest film: posterior and anterior ribs, clavicles, spine, scapulae, humeral heads.

Each rib set is one warped periodic field rather than a loop over ribs: a rib's centre line is
`y = level + offset(u)` with u the distance from the spine in rib-cage half-widths, so
`(y - offset(u))` is constant along a rib and a periodic profile of it draws all ribs at once.
"""

from __future__ import annotations

import numpy as np

from cmtlib.data.synth.anatomy import Chest, smoothstep
from cmtlib.data.synth.cohort import Anatomy


def _bands(phase: np.ndarray, duty: float) -> np.ndarray:
    """Rib profile along a rib's width: flat bone with rounded cortical edges, 0 between ribs."""
    f = phase - np.floor(phase)
    w = np.minimum(f * (2.0 / duty) - 1.0, 1.0)  # -1..1 across a rib, clipped at 1 between ribs
    w = w * w
    return 1.0 - w * w  # flat-topped: 1 - w^4 (a polynomial; a fractional power costs 3x)


def bones(chest: Chest, a: Anatomy, view: str, age: int, rng: np.random.Generator) -> np.ndarray:
    """Bone density (H, W), added to the soft-tissue density of the film."""
    x, y = chest.x, chest.y
    ap = view == "AP"
    top = min(chest.lungs[-1].top, chest.lungs[1].top)
    base = max(chest.lungs[-1].base, chest.lungs[1].base)
    u = np.abs(x - chest.mid) / chest.thorax_hw  # (1, W)
    strength = 1.0 - 0.3 * float(np.clip((age - 50) / 40, 0, 1))  # thinner bones with age

    # Posterior ribs: rise a little from the spine, then curve down at the chest wall. AP films
    # (lordotic, patient leaning back) flatten them.
    arch = 0.04 if ap else 0.06
    off = -arch * np.sin(np.pi * np.minimum(u, 1.1) * 0.7) + 0.16 * np.clip(u - 0.5, 0, None) ** 2
    r0, r1 = top - 0.06, base + 0.06
    t = np.clip((y - off - r0) / (r1 - r0), 0.0, 1.2)
    post = _bands(10.0 * t ** 0.8 + a.rib_shift, 0.36)
    # Lower ribs show only beside the upper abdomen, not across it.
    below = smoothstep(base + 0.02, base - 0.04, y) + smoothstep(0.7, 0.95, u) * smoothstep(base + 0.1, base, y)
    post = post * smoothstep(0.08, 0.16, u) * smoothstep(1.1, 0.98, u) * np.clip(below, 0, 1) * (y > r0 - 0.02)

    # Anterior ribs: from the chest wall down towards the sternum, fading where cartilage takes over.
    off_a = 0.16 * (1.0 - np.minimum(u, 1.0))
    ta = np.clip((y - off_a - (top - 0.02)) / (base - top), 0.0, 1.2)
    ant = _bands(6.5 * ta ** 0.9 + a.rib_shift * 0.7 + 0.3, 0.38)
    ant = ant * smoothstep(0.3, 0.55, u) * smoothstep(1.08, 0.97, u) * (ta < 0.95)

    # Clavicles: from the sternal notch out and slightly up; AP films project them higher.
    cy = top + (-0.025 if ap else 0.015) + rng.normal(0, 0.006)
    c_line = cy - 0.05 * (u - 0.12) + 0.018 * np.sin(np.pi * np.clip((u - 0.12) / 0.9, 0, 1) * 2.0)
    clav = np.sqrt(np.clip(1.0 - np.abs(y - c_line) / 0.017, 0, 1)) * smoothstep(0.08, 0.14, u) * smoothstep(1.2, 1.08, u)

    # Spine: vertebral bodies with darker disc spaces, seen through the mediastinum and abdomen.
    sx = np.abs(x - chest.mid)
    spine = smoothstep(0.05, 0.035, sx) * (0.8 + 0.2 * np.cos(2 * np.pi * (y - top) / 0.045))

    # Humeral heads at the top corners, partly out of the frame.
    hx, hy = chest.thorax_hw + 0.13, a.shoulder_y + 0.06
    hum = np.sqrt(np.sqrt(np.clip(1.0 - ((sx - hx) ** 2 + (y - hy) ** 2) / 0.065 ** 2, 0, 1)))

    # Scapulae: over the lateral upper lungs on AP films, mostly outside them on PA films.
    scap = np.zeros_like(post)
    for side, lung in chest.lungs.items():
        inset = 0.07 if ap else -0.01
        d = side * (x - lung.x_lat) + inset  # > 0 lateral of the scapula's medial border
        band = smoothstep(0.0, 0.01, d) * smoothstep(0.12, 0.06, d) * smoothstep(0.55, 0.3, lung.v) * (lung.v > -0.08)
        scap = scap + band
    bone = 0.08 * post + 0.045 * ant + 0.3 * clav + 0.1 * spine + 0.15 * hum + 0.05 * scap
    return (strength * bone * (chest.body > 0)).astype(np.float32)
