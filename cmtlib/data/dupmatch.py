"""The confirmation of a candidate pair (cmtlib.data.duplicates): are two thumbnails one picture?

Normalised cross-correlation of band-pass (difference of Gaussians) thumbnails, the central 80 %
of one slid over the other, maximised over shift, scale 0.75-1.33 and aspect +-6 %, both ways.
Band-pass drops what every frontal film shares (lung fields, mediastinum) and keeps what one
picture has (rib edges, wires, lettering); the alignment tolerates cropping. On cxr-public: copies
0.87-1.00. Other films at 128 px (all 47k pairs of its 307 non-NIH images): <= 0.48 across
patients, <= 0.72 for two films of one patient. At 64 px (all 130k pairs of the 510 NIH images):
<= 0.50 across patients, <= 0.80 for one patient's follow-up films in the same pose. Plain
correlation of equalised 32 x 32 thumbnails cannot separate these: copies 0.98-1.00, one NIH
patient's follow-ups up to 0.98.

What a comparison needs of one thumbnail at one size (its band-pass, FFT and integral images,
coarse and full, and the spectra of its coarse templates) depends on that thumbnail alone: `Thumbs` prepares it once and keeps the most
recent PREPARED_KEPT, so an image compared with its k candidates in a row is prepared once, not
k times. The scores are the same as preparing both sides afresh (`match_score`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from cmtlib.data.dupfeatures import THUMB_SIZE, resize_long

__all__ = ["Thumbs", "match_score", "score_task", "worker_init"]

TEMPLATE_FRACTION = 0.8    # central part of one thumbnail slid over the other
SCALES = np.exp(np.linspace(np.log(0.75), -np.log(0.75), 13))  # 5 % steps; odd count: includes 1.0
CLIMB_STEPS = (0.02, 0.01, 0.005)  # scale / aspect refinement steps at full size
ASPECT_MAX = 0.06          # largest h/w stretch tried (re-cropped copies: up to 5 %)
CLIMB_GATE = 0.5           # coarse correlation below which a pair is not refined (copies: >= 0.77)
DOG_SIGMA = 1 / 64         # of the long side: 2 px at 128, 1 px at 64 (the same anatomy)
PREPARED_KEPT = 64         # prepared thumbnails a process keeps (about 1.2 MB each at 128 px)


class _Prepared:
    """One thumbnail at one comparison size: what sliding it over another, or another over it, needs."""

    def __init__(self, thumb: np.ndarray, px: int):
        self.full = resize_long(np.asarray(thumb, np.float32), px)
        coarse = resize_long(self.full, px // 2 if px >= 96 else px)
        self.coarse_template = _bandpass(coarse).astype(np.float32)
        self.coarse_search = _search(coarse)
        self._template: np.ndarray | None = None
        self._search: tuple | None = None
        self._coarse_templates: dict[tuple[int, int], tuple] = {}

    def coarse_templates(self, shape: tuple[int, int]) -> tuple[np.ndarray, list]:
        """_templates of the coarse thumbnail at every scale in SCALES, for FFTs of `shape`."""
        if shape not in self._coarse_templates:
            self._coarse_templates[shape] = _templates(self.coarse_template, [(s, 1.0) for s in SCALES], shape)
        return self._coarse_templates[shape]

    @property
    def template(self) -> np.ndarray:
        if self._template is None:
            self._template = _bandpass(self.full).astype(np.float32)
        return self._template

    @property
    def search(self) -> tuple:
        if self._search is None:
            self._search = _search(self.full)
        return self._search


def match_score(a: np.ndarray, b: np.ndarray) -> tuple[float, int, float]:
    """Aligned band-pass correlation of two (h, w) thumbnails (module docstring).

    Scales are searched at half size, both ways (a's centre in b, b's in a); where that reaches
    CLIMB_GATE, scale and aspect are refined at full size. Returns (correlation, the long side
    both were compared at, the scale of the best match: 1 = same framing).
    """
    px = _compared_px(a.shape, b.shape)
    return _score(_Prepared(a, px), _Prepared(b, px), px)


class Thumbs:
    """Thumbnails by position, compared with `score(i, j)`; prepared ones are kept (module docstring).

    `pack` writes thumbnails into one .npy file that worker processes map read-only (`load`), so
    that each worker does not receive its own copy of them all.
    """

    def __init__(self, thumbs: Sequence[np.ndarray]):
        self.thumbs = thumbs
        self._prepared: OrderedDict[tuple[int, int], _Prepared] = OrderedDict()

    def score(self, i: int, j: int) -> tuple[float, int, float]:
        """match_score of thumbnails i and j."""
        px = _compared_px(self.thumbs[i].shape, self.thumbs[j].shape)
        return _score(self._get(i, px), self._get(j, px), px)

    def _get(self, i: int, px: int) -> _Prepared:
        key = (i, px)
        if key in self._prepared:
            self._prepared.move_to_end(key)
            return self._prepared[key]
        prepared = self._prepared[key] = _Prepared(self.thumbs[i], px)
        if len(self._prepared) > PREPARED_KEPT:
            self._prepared.popitem(last=False)
        return prepared

    @staticmethod
    def pack(thumbs: Sequence[np.ndarray], path: Path) -> Path:
        """Write thumbnails (uint8) to one .npy, (N, S, S) zero-padded, and their (h, w) to
        `<path stem>.shapes.npy`."""
        side = max([THUMB_SIZE, *(max(t.shape) for t in thumbs)])
        stack = np.zeros((len(thumbs), side, side), np.uint8)
        for k, t in enumerate(thumbs):
            stack[k, :t.shape[0], :t.shape[1]] = t
        np.save(path, stack)
        np.save(_shapes_path(path), np.array([t.shape for t in thumbs], np.int32).reshape(-1, 2))
        return path

    @classmethod
    def load(cls, path: Path) -> Thumbs:
        """The thumbnails `pack` wrote, memory-mapped."""
        stack, shapes = np.load(path, mmap_mode="r"), np.load(_shapes_path(path))
        return cls(_Packed(stack, shapes))


_WORKER: Thumbs | None = None  # a matching process's thumbnails (worker_init)


def worker_init(path: Path) -> None:
    """Process pool initializer: map the packed thumbnails."""
    global _WORKER
    _WORKER = Thumbs.load(path)


def score_task(task: tuple[int, list[int]]) -> list[tuple[float, int, float]]:
    """match_score of thumbnail i with each of its partners, in a worker (i prepared once)."""
    i, partners = task
    return [_WORKER.score(i, j) for j in partners]


class _Packed:
    """A read-only sequence view of packed thumbnails."""

    def __init__(self, stack: np.ndarray, shapes: np.ndarray):
        self.stack, self.shapes = stack, shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, k: int) -> np.ndarray:
        h, w = self.shapes[k]
        return self.stack[k, :h, :w]


def _shapes_path(path: Path) -> Path:
    return Path(path).with_suffix(".shapes.npy")


def _compared_px(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return int(min(THUMB_SIZE, max(a), max(b)))


def _score(a: _Prepared, b: _Prepared, px: int) -> tuple[float, int, float]:
    """match_score of two prepared thumbnails (the same size px)."""
    coarse = []
    for x, y in ((a, b), (b, a)):
        coarse.append((*max(zip(_ncc(*x.coarse_templates(y.coarse_search[2]), y.coarse_search), SCALES)), x, y))
    climb = [c for c in coarse if c[0] >= CLIMB_GATE]
    if not climb:  # clearly no copy: score the best coarse alignment at full size, unrefined
        _, scale, x, y = max(coarse, key=lambda c: c[0])
        return _ncc_batch(x.template, [(scale, 1.0)], y.search)[0], int(px), float(scale)
    r, scale = max(_climb(x.template, y.search, s) for _, s, x, y in climb)
    return float(r), int(px), float(scale)


def _climb(xb: np.ndarray, ctx: tuple, scale: float) -> tuple[float, float]:
    """Hill-climb (scale, aspect) from a coarse scale, halving the step -> (best NCC, scale).
    At 128 px the peak is sharp: a 1 % grid missed a re-cropped copy's peak by 0.06."""
    seen: dict[tuple[float, float], float] = {}

    def f(s: float, asp: float) -> float:
        key = (round(s, 5), round(asp, 5))
        if key not in seen:
            seen[key] = _ncc_batch(xb, [(s, asp)], ctx)[0] if SCALES[0] * 0.95 <= s <= SCALES[-1] * 1.05 and abs(asp - 1) <= ASPECT_MAX else -1.0
        return seen[key]

    s, asp = scale, 1.0
    for step in CLIMB_STEPS:
        moved = True
        while moved:
            moved = False
            for ds, da in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                cs, ca = s * (1 + ds * step), asp * (1 + da * step)
                if f(cs, ca) > f(s, asp):
                    s, asp, moved = cs, ca, True
    return f(s, asp), s


def _search(y: np.ndarray) -> tuple:
    """What every template slid over y needs: band-pass y, its FFT and integral images."""
    yb = _bandpass(y)
    # Circular correlation at an FFT size >= y's is exact at every shift that keeps the
    # template inside y, which are the only ones read. Powers of two transform fastest.
    shape = tuple(1 << (n - 1).bit_length() for n in y.shape)
    return yb, np.fft.rfft2(yb, shape), shape, _integral(yb), _integral(yb * yb)


def _gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected edges, as shifted sums (no BLAS: matrix products
    spawn threads that thrash when a process pool already uses every core)."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(a, r, mode="reflect")
    h, w = a.shape
    rows = sum(wt * p[i:i + h] for i, wt in enumerate(k))            # (h, w + 2r)
    return sum(wt * rows[:, i:i + w] for i, wt in enumerate(k))      # (h, w)


def _bandpass(a: np.ndarray) -> np.ndarray:
    return (a - _gauss(a, DOG_SIGMA * max(a.shape))).astype(np.float64)


def _integral(a: np.ndarray) -> np.ndarray:
    return np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def _ncc_batch(xb: np.ndarray, params: list[tuple[float, float]], ctx: tuple) -> list[float]:
    """Per (scale, aspect): the best NCC over y of band-pass xb's central TEMPLATE_FRACTION,
    resized by scale * aspect vertically and scale / aspect horizontally (-1 if it does not fit)."""
    return _ncc(*_templates(xb, params, ctx[2]), ctx)


def _templates(xb: np.ndarray, params: list[tuple[float, float]], shape: tuple[int, int]) -> tuple[np.ndarray, list]:
    """The spectra (K, *rfft2 shape) of xb's templates (see _ncc_batch) zero-padded to `shape`, and
    their sizes (None for one under 12 px or larger than `shape`). A template's spectrum does not
    depend on the others in the stack, so one stack serves every y of that FFT shape.
    Templates are resampled at the exact scale, not a rounded size: the 128 px peak is about a
    pixel wide, and rounding made the correlation jump between neighbouring scales."""
    stack = np.zeros((len(params), *shape))
    sizes = []
    for k, (scale, aspect) in enumerate(params):
        sy, sx = scale * aspect, scale / aspect
        th, tw = round(xb.shape[0] * sy * TEMPLATE_FRACTION), round(xb.shape[1] * sx * TEMPLATE_FRACTION)
        if min(th, tw) < 12 or th > shape[0] or tw > shape[1]:
            sizes.append(None)
            continue
        # Template pixels mapped onto x's centre; whole-pixel offsets, so that at scale 1 the
        # template is x's own pixels rather than a half-pixel interpolation of them.
        affine = (1 / sx, 0.0, round((xb.shape[1] - tw / sx) / 2), 0.0, 1 / sy, round((xb.shape[0] - th / sy) / 2))
        t = np.asarray(Image.fromarray(xb, mode="F").transform((tw, th), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR), np.float64)
        t = t - t.mean()
        stack[k, :th, :tw] = t / (np.sqrt((t * t).sum()) + 1e-12)
        sizes.append((th, tw))
    return np.conj(np.fft.rfft2(stack, axes=(-2, -1))), sizes


def _ncc(spectra: np.ndarray, sizes: list, ctx: tuple) -> list[float]:
    """The best NCC over y (ctx = _search(y)) of each template of `_templates`; -1 where it does not fit."""
    yb, fy, shape, i1, i2 = ctx
    H, W = yb.shape
    corr = np.fft.irfft2(fy * spectra, shape, axes=(-2, -1))           # (K, *shape)
    out = []
    for k, size in enumerate(sizes):
        if size is None or size[0] > H or size[1] > W:
            out.append(-1.0)
            continue
        th, tw = size
        num = corr[k, :H - th + 1, :W - tw + 1]                       # (H - th + 1, W - tw + 1)
        s1, s2 = (ii[th:, tw:] - ii[:-th, tw:] - ii[th:, :-tw] + ii[:-th, :-tw] for ii in (i1, i2))
        var = np.maximum(s2 - s1 * s1 / (th * tw), 1e-12)
        out.append(float((num / np.sqrt(var)).max()))
    return out
