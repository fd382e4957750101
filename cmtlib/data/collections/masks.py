"""Pixel masks built at import: GeneralBlockchain instance masks composed into one disease mask per
image (V7 Darwin lung polygons: v7.py). Masks are written as 8-bit PNGs holding 0 / 255
(readers that threshold at > 0 or > 127 both see the same foreground)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image

from cmtlib.data.collections.common import CollectionResult
from cmtlib.data.collections.rows import cell, inside, read_table_or_note
from cmtlib.data.rules import PIL_ERRORS, is_file, parse_number, probe_image
from cmtlib.fileio import atomic_path

# GeneralBlockchain classes that make up the disease-segmentation ground truth (SOURCES.md);
# anatomy (lungs, cardiomediastinum, airways) and devices are not disease.
DISEASE_CLASSES = ("ground glass opacities", "consolidation", "pleural effusion", "pneumothorax")


def save_mask(mask: np.ndarray, path: Path) -> None:
    """Write a bool (H, W) mask atomically as a 0/255 PNG."""
    with atomic_path(path, suffix=".png") as tmp:
        # compress_level 1: masks are mostly flat, so size barely grows and writing is much faster.
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG", compress_level=1)


@dataclass
class ComposedMasks:
    """Per image file name: the union of its disease instances, or why it has none."""

    annotated: set[str] = field(default_factory=set)       # every image with any instance row
    no_disease: set[str] = field(default_factory=set)      # annotated, but no disease instance
    problems: dict[str, str] = field(default_factory=dict)  # file name -> why no mask was made
    unmatched: int = 0  # instance rows naming an image that is not imported (counted in the summary)


STRUCTURE_COLUMNS = ("Filename", "Template Name", "Mask", "Resolution", "Top", "Left")


def structure_table(folder: Path, result: CollectionResult, source: str, sizes: dict, info: ComposedMasks) -> pd.DataFrame | None:
    """structure.csv's rows of the images in `sizes`, or None (noted) when it cannot be used. An
    image named on a line that could not be read gets no mask: it might lack one of its instances."""
    table = read_table_or_note(folder / "structure.csv", result, source, "disease_mask")
    if table is None:
        return None
    missing = [c for c in STRUCTURE_COLUMNS if c not in table.frame.columns]
    if missing:
        result.note(f"{source}:*", "disease_mask", folder / "structure.csv", f"lacks column(s) {', '.join(missing)}; disease_mask left unknown")
        return None
    for line, why, text in table.bad_lines:
        named = [n for n in sizes if n in text]
        for name in named:
            info.problems[name] = f"structure.csv line {line} {why}"
        if not named:
            result.note(f"{source}:*", "disease_mask", f"structure.csv line {line}", f"line {why}; it names no imported image")
    df = table.frame.map(cell)
    info.unmatched = int((~df["Filename"].isin(sizes)).sum())
    return df[df["Filename"].isin(sizes)]


def compose_disease_masks(folder: Path, sizes: dict[str, tuple[int, int]], info: ComposedMasks, result: CollectionResult,
                          source: str = "ieee8023") -> Iterator[tuple[str, np.ndarray]]:
    """Yield (image file name, bool (H, W) mask) for images of `sizes` with disease instances.

    Each instance PNG (RGBA) covers only its own box; its foreground (`_foreground`) is pasted at
    (Left, Top) into a canvas of the image's size. The table's Resolution (W x H) must match the image file,
    otherwise the instance would land in the wrong place and the image gets no mask. An instance
    that cannot be read (bad offset, missing or damaged PNG, a path leaving the folder) leaves its
    image without a mask, with the reason in `info.problems`.
    """
    df = structure_table(folder, result, source, sizes, info)
    if df is None:
        return
    for name, group in df.groupby("Filename", sort=True):
        info.annotated.add(name)
        disease = group[group["Template Name"].str.lower().isin(DISEASE_CLASSES)]
        if name in info.problems:
            continue
        if disease.empty:
            info.no_disease.add(name)
            continue
        width, height = sizes[name]
        resolutions = set(group["Resolution"])
        if resolutions != {f"{width}x{height}"}:
            info.problems[name] = f"segmentation drawn on {sorted(resolutions)}, image file is {width}x{height}"
            continue
        canvas = np.zeros((height, width), dtype=bool)
        for _, r in disease.iterrows():
            why = _paste_instance(canvas, folder, r)
            if why:
                info.problems[name] = why
                break
        else:
            yield name, canvas


def _paste_instance(canvas: np.ndarray, folder: Path, r) -> str:
    """OR one instance into the canvas; '' on success, else why it cannot be placed."""
    left, top = parse_number(r["Left"])[0], parse_number(r["Top"])[0]
    if left is None or top is None or not (left.is_integer() and top.is_integer()):
        return f"instance {r['Mask'] or '(none)'} of {r['Template Name']} has Left {r['Left']!r} / Top {r['Top']!r}, not whole numbers"
    path = folder / r["Mask"]
    if r["Mask"] == "" or not inside(path, folder) or not is_file(path):
        return f"instance mask {r['Mask'] or '(none)'} of {r['Template Name']} is missing"
    piece, why = _foreground(path, canvas.shape)
    if piece is None:
        return f"instance mask {r['Mask']} of {r['Template Name']}: {why}"
    _paste(canvas, piece, int(left), int(top))
    return ""


def _foreground(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """An instance mask's pixels, or (None, why). The published GeneralBlockchain PNGs are RGBA with
    alpha 255 everywhere and the shape in colour on black, so "alpha > 0" alone would fill the
    whole box; alpha decides only when it is not uniformly opaque."""
    size, why = probe_image(path)
    if size is None:
        return None, why
    if size[0] > shape[1] or size[1] > shape[0]:
        return None, f"{size[0]}x{size[1]} px, larger than its image ({shape[1]}x{shape[0]})"
    try:
        with Image.open(path) as im:
            rgba = np.asarray(im.convert("RGBA"))  # (h, w, 4)
    except PIL_ERRORS as err:
        return None, f"cannot be decoded ({err})"
    alpha = rgba[..., 3]
    if (alpha < 255).any():
        return alpha > 0, ""
    return rgba[..., :3].max(axis=-1) > 0, ""


def _paste(canvas: np.ndarray, piece: np.ndarray, left: int, top: int) -> None:
    """OR `piece` into `canvas` at (left, top), clipped to the canvas."""
    h, w = piece.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, canvas.shape[0]), min(left + w, canvas.shape[1])
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] |= piece[y0 - top:y1 - top, x0 - left:x1 - left]
