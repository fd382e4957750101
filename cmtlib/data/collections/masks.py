"""Pixel masks built at import: GeneralBlockchain instance masks composed into one disease mask per
image, and V7 Darwin lung polygons rasterised. Masks are written as 8-bit PNGs holding 0 / 255
(readers that threshold at > 0 or > 127 both see the same foreground)."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from cmtlib.data.collections.common import read_table, require_columns
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


def structure_table(folder: Path) -> pd.DataFrame:
    df = read_table(folder / "structure.csv")
    require_columns(df, ["Filename", "Template Name", "Mask", "Resolution", "Top", "Left"], folder / "structure.csv")
    return df


def compose_disease_masks(folder: Path, sizes: dict[str, tuple[int, int]], info: ComposedMasks) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (image file name, bool (H, W) mask) for images of `sizes` with disease instances.

    Each instance PNG (RGBA) covers only its own box; its foreground (`_foreground`) is pasted at
    (Left, Top) into a canvas of the image's size. The table's Resolution (W x H) must match the image file,
    otherwise the instance would land in the wrong place and the image gets no mask.
    """
    df = structure_table(folder)
    df = df[df["Filename"].isin(sizes)]
    for name, group in df.groupby("Filename", sort=True):
        info.annotated.add(name)
        disease = group[group["Template Name"].str.strip().str.lower().isin(DISEASE_CLASSES)]
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
            if r["Mask"] == "" or not (folder / r["Mask"]).is_file():
                info.problems[name] = f"instance mask {r['Mask'] or '(none)'} of {r['Template Name']} is missing"
                break
            _paste(canvas, _foreground(folder / r["Mask"]), int(r["Left"]), int(r["Top"]))
        else:
            yield name, canvas


def _foreground(path: Path) -> np.ndarray:
    """An instance mask's pixels. The published GeneralBlockchain PNGs are RGBA with alpha 255
    everywhere and the shape in colour on black, so "alpha > 0" alone would fill the whole box;
    alpha decides only when it is not uniformly opaque."""
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"))  # (h, w, 4)
    alpha = rgba[..., 3]
    if (alpha < 255).any():
        return alpha > 0
    return rgba[..., :3].max(axis=-1) > 0


def _paste(canvas: np.ndarray, piece: np.ndarray, left: int, top: int) -> None:
    """OR `piece` into `canvas` at (left, top), clipped to the canvas."""
    h, w = piece.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, canvas.shape[0]), min(left + w, canvas.shape[1])
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] |= piece[y0 - top:y1 - top, x0 - left:x1 - left]


_ORIGINAL_NAME = re.compile(rb'"original_filename"\s*:\s*"((?:[^"\\]|\\.)*)"')


def v7_lung_polygons(zip_path: Path, sizes: dict[str, tuple[int, int]], problems: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (ieee8023 file name, bool (H, W) lung mask) from V7 Darwin JSON lung polygons.

    The zip holds one JSON per image keyed by `image.original_filename`; only images of `sizes`
    are parsed (the name is read from the raw bytes first: the whole zip is ~50 MB of JSON).
    A polygon drawn on a copy of another aspect ratio cannot be placed and is left out.
    """
    with zipfile.ZipFile(zip_path) as zf:
        for entry in sorted(zf.namelist()):
            if not entry.endswith(".json"):
                continue
            raw = zf.read(entry)
            match = _ORIGINAL_NAME.search(raw)
            if not match or json.loads(b'"' + match.group(1) + b'"') not in sizes:
                continue
            doc = json.loads(raw)
            name = doc["image"]["original_filename"]
            width, height = sizes[name]
            frame = (int(doc["image"]["width"]), int(doc["image"]["height"]))
            polygons = [a["polygon"]["path"] for a in doc["annotations"] if a.get("name") == "Lung" and "polygon" in a]
            if not polygons:
                problems[name] = "no Lung polygon in the V7 annotation"
                continue
            if abs(frame[0] / frame[1] - width / height) > 0.01:
                problems[name] = f"V7 drew on a {frame[0]}x{frame[1]} copy, the file is {width}x{height} (other aspect ratio)"
                continue
            sx, sy = width / frame[0], height / frame[1]
            canvas = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(canvas)
            for path in polygons:
                draw.polygon([(p["x"] * sx, p["y"] * sy) for p in path], fill=255)
            yield name, np.asarray(canvas) > 0
