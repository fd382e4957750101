"""What the duplicate search knows of each image, and which pairs it compares (cmtlib.data.duplicates).

Features: `read_image`, shrink to long side <= 256 keeping the aspect ratio, trim uniform edge bars
(std < 0.02, <= 25 % a side). Five 64-bit DCT perceptual hashes (an equalised 32 x 32 thumbnail's
63 lowest DCT coefficients but DC, against their median) of centred windows (HASH_WINDOWS: full
frame, 92 % and 84 % all round, 80 % of the height, 80 % of the width), and an equalised
thumbnail of long side <= 128 for the confirmation (cmtlib.data.dupmatch).

Hash distance: the smallest Hamming distance from one image's full frame to any of the other's
windows, both ways. Real copies in cxr-public: 0-8; by full frames alone a letterboxed copy is 16
untrimmed, a re-cropped one 16 and a portrait film cut square 14.

Candidates (`candidate_pairs`): every image's full-frame hash is looked up in a multi-index hash
table of every image's windows (cmtlib.data.hashindex), so no pair of hashes is compared unless
some chunk of them nearly agrees. With `per_image`, an image keeps only its nearest candidates:
films that share their anatomy (phantoms of one patient, one
ICU's portable films, one patient's follow-ups) are all within a few bits of each other, and
comparing them all would cost the square of their number. An exact or near-exact copy is nearest;
among candidates at one distance, those whose five windows agree best window by window come
first (a copy with the same framing agrees in all five; a film that only shares the anatomy is a
few bits off in each), then the image listed first. A pair is compared if either image keeps it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cmtlib.data.hashindex import HashIndex, popcount

__all__ = ["Candidates", "Features", "HASH_WINDOWS", "THUMB_SIZE", "candidate_pairs", "hash_distance", "hash_distances",
           "image_features", "resize_long"]

READ_SIZE = 256            # long side features are computed from
THUMB_SIZE = 128           # long side of the confirmation thumbnail
# Centred windows hashed per image, (height, width) fractions: the full frame first, then crops
# that re-published copies show (all round, or top and bottom only as when a portrait film is
# cut square, or the sides only).
HASH_WINDOWS = ((1.0, 1.0), (0.92, 0.92), (0.84, 0.84), (0.8, 1.0), (1.0, 0.8))
TRIM_STD, TRIM_MAX = 0.02, 0.25


@dataclass
class Features:
    """One image's hashes (uint64, one per HASH_WINDOWS) and thumb (uint8 (h, w), long side <= 128)."""

    hashes: np.ndarray
    thumb: np.ndarray


@dataclass
class Candidates:
    """Pairs to compare: i < j (positions in the hashes searched), sorted, with their hash distance."""

    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray
    at_bound: int = 0      # images whose own list reached `per_image` (more may lie within the radius)
    capped: int = 0        # images that met an oversized bucket (cmtlib.data.hashindex)

    def __len__(self) -> int:
        return len(self.i)


def image_features(path: str | os.PathLike) -> Features:
    """Hashes and confirmation thumbnail of one image (raises ImageReadError if unreadable)."""
    from cmtlib.data.io import read_image

    arr, _ = read_image(path, target_size=READ_SIZE)
    arr = _trim(resize_long(arr, READ_SIZE))
    hashes = np.array([_phash(_centre_crop(arr, fh, fw)) for fh, fw in HASH_WINDOWS], dtype=np.uint64)
    thumb = _equalise(resize_long(arr, THUMB_SIZE))
    return Features(hashes, np.round(thumb * 255).astype(np.uint8))


def features_task(path: str) -> Features | str:
    """image_features, or the reason the image cannot be read (a process pool's task)."""
    from cmtlib.data.io import ImageReadError

    try:
        return image_features(path)
    except (ImageReadError, OSError) as err:  # reported in the evidence; the cache quarantines it
        return f"{type(err).__name__}: {err}"


def hash_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Smallest Hamming distance of one image's full-frame hash to the other's hashes, both ways."""
    return int(min(popcount(a[0] ^ b).min(), popcount(b[0] ^ a).min()))


def hash_distances(hashes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """hash_distance of each pair (i[k], j[k]) of rows of hashes (N, len(HASH_WINDOWS)), as int16."""
    out = np.empty(len(i), np.int16)
    for s in range(0, len(i), 1 << 20):
        a, b = hashes[i[s:s + (1 << 20)]], hashes[j[s:s + (1 << 20)]]            # (n, W) each
        out[s:s + len(a)] = np.minimum(popcount(a[:, :1] ^ b).min(1), popcount(b[:, :1] ^ a).min(1))
    return out


def candidate_pairs(hashes: np.ndarray, hash_max: int, per_image: int | None = None, cap: int | None = None) -> Candidates:
    """Pairs with hash_distance <= hash_max (module docstring); with per_image, each image's
    nearest per_image of them (by its full frame against the others' windows) and no more."""
    n, w = hashes.shape
    index = HashIndex(hashes.ravel(), np.repeat(np.arange(n), w))
    def agreement(q: np.ndarray, o: np.ndarray) -> np.ndarray:  # bits apart over all windows, window by window
        return popcount(hashes[q] ^ hashes[o]).sum(1)

    found = index.search(hashes[:, 0], hash_max, k=per_image, exclude=np.arange(n), cap=cap, tiebreak=agreement)
    pair = np.unique(np.minimum(found.query, found.owner) * n + np.maximum(found.query, found.owner))
    i, j = pair // n, pair % n
    return Candidates(i, j, hash_distances(hashes, i, j), found.full, found.capped)


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    if a.shape == (h, w):
        return a.astype(np.float32, copy=False)
    method = Image.Resampling.BOX if h <= a.shape[0] and w <= a.shape[1] else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(a.astype(np.float32, copy=False), mode="F").resize((w, h), method))


def resize_long(a: np.ndarray, long_side: int) -> np.ndarray:
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
