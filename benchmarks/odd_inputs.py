"""Odd inputs for the in-distribution check (issue 22): images a screening tool must refuse to judge.

Every maker returns a uint8 grayscale (H, W) or RGB (H, W, 3) array; those built from a film take the
film as float (H, W) in [0, 1] (a synthetic phantom or a real X-ray, any size). What `odd_inputs`
builds, by kind:

    mask        a binary lung mask: white lungs on black (the issue's first report)
    noise       uniform noise, Gaussian noise and a smooth random field
    photo       a natural-looking colour scene drawn here (sky, sun, hills, trees; 1/f texture)
    inverted    the film as a negative
    rotated     the film turned 90, 180 and 270 degrees
    lateral     a lateral-like crop: one side of the film, stretched to the frame
    black       an all-black image and a nearly black one;  white: the same in white
    tiny        the film at 16 x 16 pixels
and beyond the issue's list (the kinds a checker may bring):
    document    a scanned page: dark lines of text on white
    ct          a CT-like axial slice: round body, two dark lung fields, spine and table
    pattern     a checkerboard and stripes
    zoom        the middle third of the film enlarged (a detail, not a chest)
    shuffled    the film's own pixels in random order: its brightness histogram, no anatomy
    limb        another body part: two long bones and soft tissue on a dark field
    framed      the film shrunk to 60 % in the middle of a black frame (a photo of a film on a lightbox)
    tilted      the film turned 45 degrees
    blurred     the film blurred by a Gaussian of 2 % of its side
Used by tests/test_indist.py (on the smoke run) and benchmarks/ood_rates.py (on the default and the
real run), so both judge the same kinds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("mask", "noise", "photo", "inverted", "rotated", "lateral", "black", "white", "tiny", "document", "ct", "pattern", "zoom",
         "shuffled", "limb", "framed", "tilted", "blurred")
ISSUE_KINDS = KINDS[:9]  # the issue's list; the rest are further kinds of the same class of problem


def to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(a, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def resized(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float [0, 1] image resized (bilinear) to height x width."""
    return np.asarray(Image.fromarray(to_uint8(a)).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0


def lung_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Two white lung-shaped blobs on black, jittered (a binary PNG as the collections ship them)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size), bool)
    cy, ry = 0.5 + rng.uniform(-0.05, 0.05), rng.uniform(0.28, 0.36)
    for cx in (0.3, 0.7):
        cx += rng.uniform(-0.04, 0.04)
        out |= ((xx - cx) / rng.uniform(0.13, 0.18)) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    return out.astype(np.uint8) * 255


def noise_images(size: int, rng: np.random.Generator) -> list[np.ndarray]:
    smooth = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8), to_uint8(np.clip(rng.normal(0.5, 0.2, (size, size)), 0, 1)),
            np.asarray(smooth)]


def photo(size: int, rng: np.random.Generator) -> np.ndarray:
    """A natural-looking RGB scene: a sky gradient, a sun, hills with 1/f texture, a few trees."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    sky = np.stack([0.35 + 0.3 * yy, 0.55 + 0.25 * yy, 0.9 - 0.1 * yy], -1)
    spectrum = np.fft.fft2(rng.normal(size=(size, size)))
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2)
    texture = np.real(np.fft.ifft2(spectrum / np.maximum(f, 1.0 / size)))
    texture = (texture - texture.mean()) / (texture.std() + 1e-9)
    ridge = 0.55 + 0.08 * np.sin(2 * np.pi * (xx[0] * rng.uniform(1, 3) + rng.uniform()))
    ground = yy > ridge[None, :]
    green = np.stack([0.2 + 0.05 * texture, 0.45 + 0.1 * texture, 0.15 + 0.04 * texture], -1)
    img = np.where(ground[..., None], green, sky)
    sx, sy = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.3)
    img[(xx - sx) ** 2 + (yy - sy) ** 2 < 0.004] = (1.0, 0.9, 0.5)
    pil = Image.fromarray(to_uint8(img))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.uniform(0.05, 0.95) * size, rng.uniform(0.6, 0.9) * size
        h = rng.uniform(0.1, 0.25) * size
        draw.rectangle([x - size * 0.01, y - h * 0.4, x + size * 0.01, y], fill=(90, 60, 30))
        draw.ellipse([x - h * 0.3, y - h, x + h * 0.3, y - h * 0.35], fill=(30, int(rng.integers(80, 130)), 30))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(0.6)))


def document(size: int, rng: np.random.Generator) -> np.ndarray:
    """A scanned page: off-white paper, dark text lines (blocks of 'words') and a header bar."""
    page = Image.fromarray(to_uint8(np.clip(rng.normal(0.93, 0.02, (size, size)), 0, 1)))
    draw = ImageDraw.Draw(page)
    draw.rectangle([0.08 * size, 0.06 * size, 0.92 * size, 0.1 * size], fill=40)
    y = 0.15 * size
    while y < 0.9 * size:
        x = 0.08 * size
        while x < 0.85 * size:
            w = rng.uniform(0.03, 0.1) * size
            draw.text((x, y), "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 1 + int(w // 6))), fill=int(rng.integers(0, 60)))
            x += w + 0.02 * size
        y += 0.04 * size
    return np.asarray(page)


def ct_slice(size: int, rng: np.random.Generator) -> np.ndarray:
    """A CT-like axial chest slice: a round body on black, two dark lung fields, a bright spine, a table."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size))
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1
    img[body] = 0.45
    for cx in (0.33, 0.67):
        img[((xx - cx) / rng.uniform(0.12, 0.15)) ** 2 + ((yy - 0.48) / rng.uniform(0.2, 0.24)) ** 2 <= 1] = 0.08
    img[((xx - 0.5) / 0.05) ** 2 + ((yy - 0.72) / 0.05) ** 2 <= 1] = 0.95
    img[(np.abs(yy - 0.86) < 0.01) & (np.abs(xx - 0.5) < 0.45)] = 0.7
    return to_uint8(np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1))


def limb(size: int, rng: np.random.Generator) -> np.ndarray:
    """An X-ray of another body part: soft tissue and two long bright bones on a dark field."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    tilt = rng.uniform(-0.15, 0.15)
    u = xx - 0.5 - tilt * (yy - 0.5)
    img = 0.08 + 0.3 * (np.abs(u) < 0.22)
    for cx, half in ((-0.07, 0.035), (0.07, 0.028)):
        img = np.where(np.abs(u - cx) < half, 0.85, img)
    return to_uint8(np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1))


def pattern(size: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    step = max(2, size // 8)
    return [(((yy // step) + (xx // step)) % 2 * 255).astype(np.uint8), ((xx // step) % 2 * 255).astype(np.uint8)]


def from_film(film: np.ndarray, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    """The odd inputs made from one film (float (H, W) in [0, 1]): (kind, uint8 image)."""
    h, w = film.shape
    yield "inverted", to_uint8(1.0 - film)
    for k in (1, 2, 3):
        yield "rotated", to_uint8(np.rot90(film, k))
    side = int(rng.integers(0, 2))
    half = film[:, : int(0.45 * w)] if side == 0 else film[:, int(0.55 * w):]
    yield "lateral", to_uint8(resized(half, h, w))
    yield "tiny", to_uint8(resized(film, 16, 16))
    yield "zoom", to_uint8(resized(film[h // 3: 2 * h // 3, w // 3: 2 * w // 3], h, w))
    yield "shuffled", to_uint8(rng.permutation(film.ravel()).reshape(h, w))
    frame = np.zeros((h, w))
    fh, fw = int(0.6 * h), int(0.6 * w)
    frame[(h - fh) // 2: (h - fh) // 2 + fh, (w - fw) // 2: (w - fw) // 2 + fw] = resized(film, fh, fw)
    yield "framed", to_uint8(frame)
    pil = Image.fromarray(to_uint8(film))
    yield "tilted", np.asarray(pil.rotate(45, resample=Image.Resampling.BILINEAR))
    yield "blurred", np.asarray(pil.filter(ImageFilter.GaussianBlur(0.02 * max(h, w))))


def standalone(size: int, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    """The odd inputs made without a film: (kind, uint8 image, grayscale or RGB)."""
    yield "mask", lung_mask(size, rng)
    for image in noise_images(size, rng):
        yield "noise", image
    yield "photo", photo(size, rng)
    yield "black", np.zeros((size, size), np.uint8)
    yield "white", np.full((size, size), 255, np.uint8)
    # Nearly blank: what a black or white export looks like after JPEG or a scanner (read_image refuses
    # only images of one value, so these reach the network).
    yield "black", rng.integers(0, 4, (size, size)).astype(np.uint8)
    yield "white", rng.integers(252, 256, (size, size)).astype(np.uint8)
    yield "document", document(size, rng)
    yield "ct", ct_slice(size, rng)
    yield "limb", limb(size, rng)
    for image in pattern(size):
        yield "pattern", image


def odd_inputs(films: list[np.ndarray], masks: list[np.ndarray] = (), size: int = 256, seed: int = 0,
               n_standalone: int = 1) -> list[tuple[str, np.ndarray]]:
    """(kind, uint8 image) for every film's odd versions, each given binary mask (uint8 0/255, the
    run's own kind of mask files), and `n_standalone` sets of the kinds made without a film."""
    rng = np.random.default_rng(seed)
    out = [pair for film in films for pair in from_film(np.asarray(film, dtype=np.float64), rng)]
    out += [("mask", (np.asarray(m) > 0).astype(np.uint8) * 255) for m in masks]
    for _ in range(n_standalone):
        out += list(standalone(size, rng))
    return out
