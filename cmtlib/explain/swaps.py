"""Twin-free interventions of the shortcut audit: does the score move when part of a film is swapped?

A cue the network follows sits somewhere: in a region of the film (a frame, a corner mark, lines
outside the lungs) or in its look (noise, sharpness, grey levels). Each check here replaces that
part of every test film with the same part of another film, once from a film of the SAME class (a
placebo: the seam, the off-distribution pixels, everything but the class) and once from a film of
the OTHER class, and compares the two scores:

    effect(film) = p(same-class donor) - p(other-class donor)    for a COVID-19 film
                 = p(other-class donor) - p(same-class donor)    for any other film

Averaged over the two classes (each class weighing half), the effect is how far the score follows
what the swapped part says about the class: near 0 when the network ignores that part (or the part
says nothing about the class), up to the cue's tie to the label (its strength) when the network
follows a cue there completely. Real films get these checks too: they need no twin, no mask but the
network's own lung outline, and no metadata.

Regions (`geometry`; fractions of the film's side, both films' lungs dilated by `LUNG_MARGIN` left
out so that no lung pixel, and no lesion, moves): the frame (a band of `FRAME_BAND` on every edge
between the corners, where collimation edges and rulers sit), the corners (squares of `CORNER` side,
where markers and burned-in text sit) and everything outside the lungs (the two others, lines and
tubes, the body).
Looks (`LOOKS`): the grey levels (contrast, brightness, gamma: `match_histograms`, set away from the
lungs) and the
fine detail (noise, sharpness, resolution: the Fourier amplitude above `FINE` of the Nyquist
frequency, the phase kept, so anatomy and lesions stay where they are); both leave the frame and
the corners as they were, so that a mark there is judged by the regions' checks alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from cmtlib.metrics import bootstrap_ci

FRAME_BAND = 0.05
CORNER = 0.2
LUNG_MARGIN = 0.04  # the lungs dilated by this share of the side: no lung edge, no peripheral opacity moves
FINE = 0.5  # the fine-detail swap replaces the Fourier amplitude above this share of the Nyquist frequency
REGIONS = ("frame", "corners", "outside the lungs")
LOOKS = ("grey levels", "fine detail")


def dilate(masks, share: float = LUNG_MARGIN) -> np.ndarray:
    """Masks grown by `share` of the side (a square structuring element).

    Shape:
        (N, S, S) bool -> (N, S, S) bool.
    """
    m = np.asarray(masks, dtype=bool)
    r = max(1, round(share * m.shape[-1]))
    x = torch.from_numpy(m.astype(np.float32))[:, None]
    return torch.nn.functional.max_pool2d(x, 2 * r + 1, stride=1, padding=r)[:, 0].numpy() > 0.5


def geometry(name: str, size: int) -> np.ndarray:
    """The fixed part of a region: (S, S) bool. The frame and the corners do not overlap; 'outside the
    lungs' is the whole film (both films' lungs are taken out where the region is used), so it holds
    the other two and everything else away from the lungs."""
    out = np.zeros((size, size), bool)
    c = max(1, round(CORNER * size))
    corners = np.zeros((size, size), bool)
    for rows in (slice(0, c), slice(size - c, size)):
        for cols in (slice(0, c), slice(size - c, size)):
            corners[rows, cols] = True
    if name == "frame":  # the edge band between the corners: the two regions do not overlap
        b = max(1, round(FRAME_BAND * size))
        out[:b], out[-b:], out[:, :b], out[:, -b:] = True, True, True, True
        out &= ~corners
    elif name == "corners":
        out = corners
    elif name == "outside the lungs":
        out[:] = True
    else:
        raise KeyError(f"unknown region {name!r}; known: {', '.join(REGIONS)}")
    return out


def donors(labels, patients, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each film a donor of its own class and one of the other class, both of other patients
    (seeded). -1 where there is none (a class with a single patient).

    Shape:
        labels: (N,) 0/1; patients: (N,) -> (same (N,) int, other (N,) int).
    """
    y = np.asarray(labels).astype(int)
    pat = np.asarray(patients).astype(str)
    rng = np.random.default_rng(seed)
    same, other = np.full(len(y), -1), np.full(len(y), -1)
    for i in range(len(y)):
        for out, pool in ((same, y == y[i]), (other, y != y[i])):
            candidates = np.flatnonzero(pool & (pat != pat[i]))
            if len(candidates):
                out[i] = rng.choice(candidates)
    return same, other


def swap_region(images, donor_images, region) -> np.ndarray:
    """The images with `region`'s pixels taken from the donors.

    Shape:
        images, donor_images: (N, S, S); region: (N, S, S) or (S, S) bool -> images' shape and dtype.
    """
    return np.where(np.broadcast_to(region, np.shape(images)), donor_images, images).astype(np.asarray(images).dtype)


def match_histograms(images, donor_images, outside) -> np.ndarray:
    """Each image's grey levels mapped monotonically so that its pixels in `outside` take the
    distribution of its donor's pixels there (quantile for quantile, interpolated): contrast,
    brightness and gamma come from the donor, every structure stays in place. Only `outside` (the
    films away from both lungs) sets the mapping, so an opacity in the lungs carries nothing of the
    class into it.

    Shape:
        images, donor_images: (N, S, S) uint8; outside: (N, S, S) bool -> (N, S, S) uint8.
    """
    x, d = np.asarray(images), np.asarray(donor_images)
    out = np.empty_like(x)
    q = np.linspace(0, 1, 101)
    for i in range(len(x)):
        where = outside[i] if outside[i].sum() >= 16 else np.ones(x.shape[1:], bool)
        src, dst = np.quantile(x[i][where], q), np.quantile(d[i][where], q)
        src = src + np.arange(len(q)) * 1e-6  # strictly increasing for np.interp
        out[i] = np.clip(np.rint(np.interp(x[i], src, dst)), 0, 255).astype(x.dtype)
    return out


def swap_fine_detail(images, donor_images, cutoff: float = FINE) -> np.ndarray:
    """Each image with its Fourier amplitude above `cutoff` of the Nyquist frequency taken from its
    donor, its phase kept (noise, grain, sharpness and resolution from the donor).

    Shape:
        (N, S, S) uint8, (N, S, S) uint8 -> (N, S, S) uint8.
    """
    x = np.asarray(images, dtype=np.float64)
    d = np.asarray(donor_images, dtype=np.float64)
    fx, fd = np.fft.rfft2(x), np.fft.rfft2(d)
    h, w = x.shape[-2:]
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]) / 0.5  # 1 = Nyquist
    fine = radius > cutoff
    mixed = np.where(fine, np.abs(fd) * np.exp(1j * np.angle(fx)), fx)
    return np.clip(np.rint(np.fft.irfft2(mixed, s=(h, w))), 0, 255).astype(np.asarray(images).dtype)


def swapped(kind: str, images, donor_images, keep_out) -> np.ndarray:
    """`images` with one part (a region of REGIONS, or a look of LOOKS) from the donors; `keep_out`
    (N, S, S) bool: both films' lungs, dilated (nothing there moves)."""
    if kind in LOOKS:  # the frame and the corners stay as they were: their own checks judge what lies there
        edges = geometry("frame", np.shape(images)[-1]) | geometry("corners", np.shape(images)[-1])
        looked = (match_histograms(images, donor_images, ~keep_out & ~edges) if kind == "grey levels"
                  else swap_fine_detail(images, donor_images))
        return swap_region(looked, images, edges[None])
    return swap_region(images, donor_images, geometry(kind, np.shape(images)[-1])[None] & ~keep_out)


def swap_effects(score: Callable[[np.ndarray], np.ndarray], images, lungs, labels, patients, kinds=REGIONS + LOOKS,
                 seed: int = 0) -> pd.DataFrame:
    """Per film and swapped part: the effect of the module docstring.

    Args:
        score: images (N, S, S) uint8 -> p(COVID-19) (N,).
        lungs: (N, S, S) bool, the network's own lung outline of each film.
        labels: (N,) 0/1 (films with an unknown label are left out); patients: (N,).

    Returns:
        DataFrame: kind, film (its position in `images`), patient_id, label, p_same, p_other, effect.
    """
    y = np.asarray(labels, dtype=float)
    keep = np.flatnonzero(~np.isnan(y))
    x, lung, y, pat = np.asarray(images)[keep], np.asarray(lungs, bool)[keep], y[keep].astype(int), np.asarray(patients)[keep]
    same, other = donors(y, pat, seed)  # positions in the kept films
    ok = (same >= 0) & (other >= 0)
    films, y, pat, same, other = keep[ok], y[ok], pat[ok], same[ok], other[ok]
    grown = dilate(lung)  # dilating the union of two masks is the union of their dilations
    rows = []
    for kind in kinds:
        p_same = score(swapped(kind, x[ok], x[same], grown[ok] | grown[same]))
        p_other = score(swapped(kind, x[ok], x[other], grown[ok] | grown[other]))
        effect = np.where(y == 1, p_same - p_other, p_other - p_same)
        rows.append(pd.DataFrame({"kind": kind, "film": films, "patient_id": pat, "label": y, "p_same": p_same,
                                  "p_other": p_other, "effect": effect}))
    return pd.concat(rows, ignore_index=True)


def balanced_mean(values, labels, patients, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """The mean of `values` with each class weighing half, and its patient-bootstrap 95 % interval.

    Shape:
        values, labels, patients: (N,).
    """
    v, y = np.asarray(values, dtype=float), np.asarray(labels).astype(int)
    if not (y == 1).any() or not (y == 0).any():
        return float("nan"), float("nan"), float("nan")

    def balanced(vv, yy) -> float:
        return float((vv[yy == 1].mean() + vv[yy == 0].mean()) / 2) if (yy == 1).any() and (yy == 0).any() else float("nan")

    ci = bootstrap_ci(balanced, (v, y), np.asarray(patients), n_boot=n_boot, seed=seed)
    return ci.estimate, ci.low, ci.high


def summarise_swaps(per_film: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per swapped part: the class-balanced mean effect with its interval, films, and each class's mean."""
    rows = []
    for kind, g in per_film.groupby("kind", sort=False):
        est, low, high = balanced_mean(g["effect"], g["label"], g["patient_id"], n_boot, seed)
        rows.append({"kind": kind, "effect": est, "ci_low": low, "ci_high": high, "n": len(g),
                     "covid_effect": float(g.loc[g["label"] == 1, "effect"].mean()),
                     "other_effect": float(g.loc[g["label"] == 0, "effect"].mean())})
    return pd.DataFrame(rows)
