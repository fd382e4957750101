"""Near-duplicate chest X-rays: the same picture under two patient ids or in two collections.

Public COVID collections re-publish each other's films (ieee8023's `figure1-*` files are Figure1
cases; ieee8023 patients 137 and 202 are one film), re-encoded, re-windowed, letterboxed or cut.
Copies on both sides of a train / test split leak the test set.

1. Features (process pool): `read_image`, shrink to long side <= 256 keeping the aspect ratio,
   trim uniform edge bars (std < 0.02, <= 25 % a side). Five 64-bit DCT perceptual hashes (an
   equalised 32 x 32 thumbnail's 63 lowest DCT coefficients but DC, against their median) of
   centred windows (HASH_WINDOWS: full frame, 92 % and 84 % all round, 80 % of the height, 80 %
   of the width), and an equalised thumbnail of long side <= 128.
2. Candidates: hash distance (smallest Hamming distance from one image's full frame to any of the
   other's windows, both ways) <= HASH_MAX. Real copies in cxr-public: 0-8; by full frames alone
   a letterboxed copy is 16 untrimmed, a re-cropped one 16 and a portrait film cut square 14.
3. Confirmation: normalised cross-correlation of band-pass (difference of Gaussians) thumbnails,
   the central 80 % of one slid over the other, maximised over shift, scale 0.75-1.33 and aspect
   +-6 %, both ways. Band-pass drops what every frontal film shares (lung fields, mediastinum) and
   keeps what one picture has (rib edges, wires, lettering); the alignment tolerates cropping.
   On cxr-public: copies 0.87-1.00. Other films at 128 px (all 47k pairs of its 307 non-NIH
   images): <= 0.48 across patients, <= 0.72 for two films of one patient. At 64 px (all 130k
   pairs of the 510 NIH images): <= 0.50 across patients, <= 0.80 for one patient's follow-up
   films in the same pose. Thresholds (MIN_CORRELATION): 0.80 at 128 px,
   0.90 below. Plain correlation of equalised 32 x 32 thumbnails cannot separate these: copies
   0.98-1.00, one NIH patient's follow-ups up to 0.98.
4. Grouping, complete linkage: confirmed pairs merge strongest first; two groups merge only if
   every pair across them is confirmed (pairs that were not candidates are matched on demand).
   Transitive closure would let A~B and B~C join unrelated A and C through a middling B (a blend,
   a collage, a film with an inset); complete linkage never groups two images that do not match
   each other. The price: a copy failing against one member stays out ("kept apart" in evidence).

Hash comparison is all pairs in blocks (O(N^2) popcounts, seconds at 10^4 images); 10^5 images
would need multi-index hashing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from PIL import Image

from cmtlib.data.workers import pool
from cmtlib.fileio import atomic_path

__all__ = ["DuplicateResult", "EVIDENCE_COLUMNS", "find_duplicates", "image_features", "match_score", "hash_distance"]

READ_SIZE = 256            # long side features are computed from
THUMB_SIZE = 128           # long side of the confirmation thumbnail
# Centred windows hashed per image, (height, width) fractions: the full frame first, then crops
# that re-published copies show (all round, or top and bottom only as when a portrait film is
# cut square, or the sides only).
HASH_WINDOWS = ((1.0, 1.0), (0.92, 0.92), (0.84, 0.84), (0.8, 1.0), (1.0, 0.8))
HASH_MAX = 10              # candidate hash distance; real copies measured 0-8
TRIM_STD, TRIM_MAX = 0.02, 0.25
TEMPLATE_FRACTION = 0.8    # central part of one thumbnail slid over the other
SCALES = np.exp(np.linspace(np.log(0.75), -np.log(0.75), 13))  # 5 % steps; odd count: includes 1.0
CLIMB_STEPS = (0.02, 0.01, 0.005)  # scale / aspect refinement steps at full size
ASPECT_MAX = 0.06          # largest h/w stretch tried (re-cropped copies: up to 5 %)
CLIMB_GATE = 0.5           # coarse correlation below which a pair is not refined (copies: >= 0.77)
DOG_SIGMA = 1 / 64         # of the long side: 2 px at 128, 1 px at 64 (the same anatomy)
# Confirmation threshold by comparison size: (at least this many px on the long side, threshold).
MIN_CORRELATION = ((THUMB_SIZE, 0.80), (0, 0.90))
EVIDENCE_COLUMNS = ("image_id_a", "image_id_b", "hash_distance", "correlation", "decision", "compared_px", "scale")
_PARALLEL_MIN = 24         # below this many tasks a pool costs more than it saves


@dataclass
class Features:
    """One image's hashes (uint64, one per HASH_WINDOWS) and thumb (uint8 (h, w), long side <= 128)."""

    hashes: np.ndarray
    thumb: np.ndarray


@dataclass
class DuplicateResult:
    """Groups of image ids that are one picture, and the pairs that decided it."""

    groups: list[tuple[str, ...]]
    evidence: pd.DataFrame
    unreadable: dict[str, str] = field(default_factory=dict)
    n_images: int = 0
    seconds: float = 0.0

    def write_evidence(self, path: str | os.PathLike) -> Path:
        with atomic_path(path) as tmp:
            self.evidence.to_csv(tmp, index=False)
        return Path(path)


def find_duplicates(images: Mapping[str, str | os.PathLike], *, hash_max: int = HASH_MAX,
                    min_correlation: float | None = None, workers: int | None = None, progress: bool = True) -> DuplicateResult:
    """Find groups of near-duplicate images.

    Args:
        images: image_id -> image file.
        hash_max: largest hash distance that makes a pair a candidate.
        min_correlation: one confirmation threshold for every comparison size; None uses
            `MIN_CORRELATION` (0.80 at 128 px, 0.90 for smaller thumbnails).
        workers: processes for reading and matching; None = all CPUs.
        progress: show tqdm bars.

    Returns:
        DuplicateResult: groups (sorted tuples of ids, at least two each) and evidence rows
        (`EVIDENCE_COLUMNS`) for every candidate pair, every pair checked for a merge, and every
        unreadable image (decision "unreadable: <reason>").
    """
    start = time.perf_counter()
    ids = list(images)
    workers = workers or os.cpu_count() or 1
    feats, unreadable = {}, {}
    paths = [str(images[i]) for i in ids]
    for iid, out in zip(ids, _pmap(_features_task, paths, workers, progress, "hash images")):
        if isinstance(out, str):
            unreadable[iid] = out
        else:
            feats[iid] = out
    ok = [i for i in ids if i in feats]
    hashes = np.stack([feats[i].hashes for i in ok]) if ok else np.zeros((0, len(HASH_WINDOWS)), np.uint64)
    pairs = _candidate_pairs(hashes, hash_max)
    # Thumbnails go to each worker once; a task is a pair of indices.
    init = (_set_thumbs, ([feats[i].thumb for i in ok],))
    matches = _pmap(_match_task, [(i, j) for i, j, _ in pairs], workers, progress, "match candidates", init)
    scores = {}
    for (i, j, d), (r, px, s) in zip(pairs, matches):
        scores[(ok[i], ok[j])] = (d, r, px, s)
    _set_thumbs([])  # the serial path set them in this process

    order = {iid: k for k, iid in enumerate(ids)}

    def score(a: str, b: str) -> tuple[int, float, int, float]:
        key = (a, b) if order[a] < order[b] else (b, a)
        if key not in scores:  # a merge check on a pair that was not a hash candidate
            d = hash_distance(feats[a].hashes, feats[b].hashes)
            scores[key] = (d, *match_score(feats[a].thumb, feats[b].thumb))
        return scores[key]

    def confirmed(a: str, b: str) -> bool:
        _, r, px, _ = score(a, b)
        return r >= _threshold(px, min_correlation)

    groups, apart = _complete_linkage(sorted(scores, key=lambda k: (-scores[k][1], k)), confirmed, score)
    member = {iid: k for k, g in enumerate(groups) for iid in g}
    rows = []
    for (a, b), (d, r, px, s) in scores.items():
        same = a in member and member.get(a) == member.get(b)
        if same:
            decision = "duplicate"
        elif r >= _threshold(px, min_correlation):
            decision = f"kept apart: {apart.get((a, b), 'complete linkage')}"
        else:
            decision = f"not confirmed (correlation < {_threshold(px, min_correlation):.2f})"
        rows.append((a, b, d, round(r, 4), decision, px, round(s, 3)))
    rows += [(iid, "", None, None, f"unreadable: {why}", None, None) for iid, why in unreadable.items()]
    rows.sort(key=lambda r: (order[r[0]], order.get(r[1], -1)))
    evidence = pd.DataFrame(rows, columns=list(EVIDENCE_COLUMNS)).astype(
        {"hash_distance": "Int64", "correlation": float, "compared_px": "Int64", "scale": float})
    out_groups = sorted(tuple(sorted(g)) for g in groups if len(g) > 1)
    return DuplicateResult(out_groups, evidence, unreadable, len(ids), time.perf_counter() - start)


def _threshold(px: int, override: float | None) -> float:
    if override is not None:
        return override
    return next(t for size, t in MIN_CORRELATION if px >= size)


def _complete_linkage(pairs: Iterable[tuple[str, str]], confirmed, score) -> tuple[list[set[str]], dict]:
    """Merge along confirmed pairs (strongest first) only where every cross pair is confirmed."""
    group: dict[str, set[str]] = {}
    apart: dict[tuple[str, str], str] = {}
    for a, b in pairs:
        if not confirmed(a, b):
            continue
        ga, gb = group.get(a, {a}), group.get(b, {b})
        if ga is gb:
            continue
        failing = next(((x, y) for x in sorted(ga) for y in sorted(gb) if not confirmed(x, y)), None)
        if failing:
            x, y = failing
            apart[(a, b)] = f"{x} and {y} in the two groups do not match (correlation {score(x, y)[1]:.3f})"
            continue
        merged = ga | gb
        for iid in merged:
            group[iid] = merged
    unique = {id(g): g for g in group.values()}
    return list(unique.values()), apart


def image_features(path: str | os.PathLike) -> Features:
    """Hashes and confirmation thumbnail of one image (raises ImageReadError if unreadable)."""
    from cmtlib.data.io import read_image

    arr, _ = read_image(path, target_size=READ_SIZE)
    arr = _trim(_resize_long(arr, READ_SIZE))
    hashes = np.array([_phash(_centre_crop(arr, fh, fw)) for fh, fw in HASH_WINDOWS], dtype=np.uint64)
    thumb = _equalise(_resize_long(arr, THUMB_SIZE))
    return Features(hashes, np.round(thumb * 255).astype(np.uint8))


def _features_task(path: str) -> Features | str:
    from cmtlib.data.io import ImageReadError

    try:
        return image_features(path)
    except (ImageReadError, OSError) as err:  # reported in the evidence; the cache quarantines it
        return f"{type(err).__name__}: {err}"


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    if a.shape == (h, w):
        return a.astype(np.float32, copy=False)
    method = Image.Resampling.BOX if h <= a.shape[0] and w <= a.shape[1] else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(a.astype(np.float32, copy=False), mode="F").resize((w, h), method))


def _resize_long(a: np.ndarray, long_side: int) -> np.ndarray:
    """Shrink (never enlarge) so the long side is at most `long_side`, keeping the aspect ratio."""
    h, w = a.shape
    s = long_side / max(h, w)
    if s >= 1:
        return a.astype(np.float32, copy=False)
    return _resize(a, max(8, round(h * s)), max(8, round(w * s)))


def _trim(a: np.ndarray) -> np.ndarray:
    """Cut uniform bars (letterboxing, scanner borders) off each edge, at most TRIM_MAX a side."""
    def run(std: np.ndarray) -> int:  # leading lines with std < TRIM_STD
        busy = np.flatnonzero(std[:int(len(std) * TRIM_MAX)] >= TRIM_STD)
        return int(busy[0]) if busy.size else int(len(std) * TRIM_MAX)

    rows, cols = a.std(axis=1), a.std(axis=0)
    return a[run(rows):a.shape[0] - run(rows[::-1]), run(cols):a.shape[1] - run(cols[::-1])]


def _centre_crop(a: np.ndarray, fh: float, fw: float | None = None) -> np.ndarray:
    h, w = a.shape
    ch, cw = max(8, round(h * fh)), max(8, round(w * (fh if fw is None else fw)))
    y, x = (h - ch) // 2, (w - cw) // 2
    return a[y:y + ch, x:x + cw]


def _equalise(a: np.ndarray, levels: int = 1024) -> np.ndarray:
    """Histogram equalisation to mid-rank values in [0, 1]; equal pixels stay equal."""
    q = np.clip(np.round(a * (levels - 1)), 0, levels - 1).astype(np.int64)
    counts = np.bincount(q.ravel(), minlength=levels)
    mid_rank = np.cumsum(counts) - 0.5 * counts
    return (mid_rank[q] / q.size).astype(np.float32)


_K, _I = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
_DCT32 = np.sqrt(2 / 32) * np.cos(np.pi * (2 * _I + 1) * _K / 64) * np.where(_K == 0, np.sqrt(0.5), 1.0)  # orthonormal DCT-II


def _phash(a: np.ndarray) -> np.uint64:
    """64-bit DCT hash: 63 low-frequency coefficients (DC left out) above their median; top bit 0."""
    t = _equalise(_resize(a, 32, 32)).astype(np.float64)
    coeffs = (_DCT32 @ t @ _DCT32.T)[:8, :8].ravel()[1:]  # (63,)
    return np.packbits(np.r_[False, coeffs > np.median(coeffs)]).view(">u8")[0].astype(np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).astype(np.int16)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1, dtype=np.int16)


def hash_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Smallest Hamming distance of one image's full-frame hash to the other's hashes, both ways."""
    return int(min(_popcount(a[0] ^ b).min(), _popcount(b[0] ^ a).min()))


def _candidate_pairs(hashes: np.ndarray, hash_max: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j and hash_distance <= hash_max, all pairs in row blocks."""
    out = []
    full = hashes[:, 0]
    block = max(1, min(256, 8_000_000 // max(1, hashes.size)))  # (block, K, N) stays <= 64 MB
    for s in range(0, len(hashes), block):
        rows = hashes[s:s + block]                                        # (b, K)
        d1 = _popcount(rows[:, :1, None] ^ hashes.T[None, :, :]).min(1)   # full i vs crops j: (b, N)
        d2 = _popcount(rows[:, :, None] ^ full[None, None, :]).min(1)     # crops i vs full j: (b, N)
        d = np.minimum(d1, d2)
        i, j = np.nonzero(d <= hash_max)
        keep = j > i + s
        out += [(int(a + s), int(b), int(d[a, b])) for a, b in zip(i[keep], j[keep])]
    return out


def match_score(a: np.ndarray, b: np.ndarray) -> tuple[float, int, float]:
    """Aligned band-pass correlation of two (h, w) thumbnails (module docstring, step 3).

    Scales are searched at half size, both ways (a's centre in b, b's in a); where that reaches
    CLIMB_GATE, scale and aspect are refined at full size. Returns (correlation, the long side
    both were compared at, the scale of the best match: 1 = same framing).
    """
    px = min(THUMB_SIZE, max(a.shape), max(b.shape))
    a, b = (_resize_long(np.asarray(x, np.float32), px) for x in (a, b))
    coarse_px = px // 2 if px >= 96 else px
    ca, cb = (_resize_long(x, coarse_px) for x in (a, b))
    coarse = []
    for (x, y), (cx, cy) in (((a, b), (ca, cb)), ((b, a), (cb, ca))):
        ctx, cxb = _search(cy), _bandpass(cx).astype(np.float32)
        coarse.append((*max(zip(_ncc_batch(cxb, [(s, 1.0) for s in SCALES], ctx), SCALES)), x, y))
    climb = [c for c in coarse if c[0] >= CLIMB_GATE]
    if not climb:  # clearly no copy: score the best coarse alignment at full size, unrefined
        _, scale, x, y = max(coarse, key=lambda c: c[0])
        return _ncc_batch(_bandpass(x).astype(np.float32), [(scale, 1.0)], _search(y))[0], int(px), float(scale)
    r, scale = max(_climb(_bandpass(x).astype(np.float32), _search(y), s) for _, s, x, y in climb)
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
    resized by scale * aspect vertically and scale / aspect horizontally (-1 if it does not fit).
    Templates are resampled at the exact scale, not a rounded size: the 128 px peak is about a
    pixel wide, and rounding made the correlation jump between neighbouring scales."""
    yb, fy, shape, i1, i2 = ctx
    H, W = yb.shape
    stack = np.zeros((len(params), *shape))
    sizes = []
    for k, (scale, aspect) in enumerate(params):
        sy, sx = scale * aspect, scale / aspect
        th, tw = round(xb.shape[0] * sy * TEMPLATE_FRACTION), round(xb.shape[1] * sx * TEMPLATE_FRACTION)
        if min(th, tw) < 12 or th > H or tw > W:
            sizes.append(None)
            continue
        # Template pixels mapped onto x's centre; whole-pixel offsets, so that at scale 1 the
        # template is x's own pixels rather than a half-pixel interpolation of them.
        affine = (1 / sx, 0.0, round((xb.shape[1] - tw / sx) / 2), 0.0, 1 / sy, round((xb.shape[0] - th / sy) / 2))
        t = np.asarray(Image.fromarray(xb, mode="F").transform((tw, th), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR), np.float64)
        t = t - t.mean()
        stack[k, :th, :tw] = t / (np.sqrt((t * t).sum()) + 1e-12)
        sizes.append((th, tw))
    corr = np.fft.irfft2(fy * np.conj(np.fft.rfft2(stack, axes=(-2, -1))), shape, axes=(-2, -1))  # (K, *shape)
    out = []
    for k, size in enumerate(sizes):
        if size is None:
            out.append(-1.0)
            continue
        th, tw = size
        num = corr[k, :H - th + 1, :W - tw + 1]                       # (H - th + 1, W - tw + 1)
        s1, s2 = (ii[th:, tw:] - ii[:-th, tw:] - ii[th:, :-tw] + ii[:-th, :-tw] for ii in (i1, i2))
        var = np.maximum(s2 - s1 * s1 / (th * tw), 1e-12)
        out.append(float((num / np.sqrt(var)).max()))
    return out


_THUMBS: list[np.ndarray] = []  # a matching worker's thumbnails, set by _set_thumbs


def _set_thumbs(thumbs: list[np.ndarray]) -> None:
    global _THUMBS
    _THUMBS = thumbs


def _match_task(pair: tuple[int, int]) -> tuple[float, int, float]:
    return match_score(_THUMBS[pair[0]], _THUMBS[pair[1]])


def _pmap(fn, tasks: list, workers: int, progress: bool, desc: str, init: tuple | None = None) -> Iterable:
    """fn over tasks in order, in a process pool (in this process when small); init = (fn, args)
    runs once per worker first."""
    from tqdm.auto import tqdm

    bar = dict(total=len(tasks), desc=desc, disable=not progress or None)
    if workers <= 1 or len(tasks) < _PARALLEL_MIN:
        if init:
            init[0](*init[1])
        yield from tqdm(map(fn, tasks), **bar)
        return
    with pool(min(workers, len(tasks)), init[0] if init else None, init[1] if init else ()) as executor:
        yield from tqdm(executor.map(fn, tasks, chunksize=max(1, min(32, len(tasks) // (4 * workers)))), **bar)
