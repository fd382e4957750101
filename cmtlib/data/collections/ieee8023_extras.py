"""The annotations published for ieee8023, added to its rows: GeneralBlockchain disease masks,
V7 lung polygons and severity scores. A companion that cannot be read at all leaves its field
unknown for every image with one source-wide note; a film whose own annotation is broken gets a
note naming it, and every other film keeps its annotation."""

from __future__ import annotations

from pathlib import Path

from cmtlib.data.collections.common import CollectionResult, ImportContext
from cmtlib.data.collections.masks import ComposedMasks, compose_disease_masks, save_mask
from cmtlib.data.collections.v7 import v7_lung_polygons
from cmtlib.data.collections.rows import cell, read_table_or_note
from cmtlib.data.rules import format_number, parse_number

SOURCE = "ieee8023"
SEVERITY_RANGES = {"geographic_mean": (0.0, 8.0), "opacity_mean": (0.0, 6.0)}


def add_disease_masks(folder: Path | None, sizes: dict, by_name: dict, ctx: ImportContext, result: CollectionResult) -> None:
    stats = result.stats[0]
    if folder is None:
        stats.notes.append("disease masks: no GeneralBlockchain segmentations found (disease_mask left unknown)")
        return
    info = ComposedMasks()
    n = 0
    for name, mask in compose_disease_masks(folder, sizes, info, result):
        row = by_name[name]
        target, rel = ctx.mask_path(SOURCE, row["image_id"], "disease")
        save_mask(mask, target)
        row["disease_mask"] = rel
        n += 1
    # Only a healthy image's disease region is known empty (DESIGN.md); a sick image whose
    # annotator drew anatomy but no opacity may simply not have been outlined.
    sick = sorted(f for f in info.no_disease if by_name[f]["label_healthy"] != "1")
    stats.notes.append(
        f"disease masks: {n} composed from {folder} (ground-glass opacity, consolidation, "
        f"pleural effusion, pneumothorax); {len(sick)} annotated without any disease instance left unknown"
        + (f" ({', '.join(sick)})" if sick else "")
        + (f"; {info.unmatched} instance rows name images not imported (not used)" if info.unmatched else ""))
    for name, why in sorted(info.problems.items()):
        stats.notes.append(f"{name}: no disease mask, {why}")
        result.note(by_name[name]["image_id"], "disease_mask", name, f"{why}; disease_mask left unknown")


def add_v7_polygons(zip_path: Path | None, sizes: dict, by_name: dict, ctx: ImportContext, result: CollectionResult) -> None:
    if zip_path is None:
        return
    problems: dict[str, str] = {}
    n, unmatched = 0, []
    for name, mask in v7_lung_polygons(zip_path, sizes, problems, result, unmatched=unmatched):
        row = by_name[name]
        target, rel = ctx.mask_path(SOURCE, row["image_id"], "lungpoly")
        save_mask(mask, target)
        row["lung_polygon_mask"] = rel
        n += 1
    stats = result.stats[0]
    stats.notes.append(
        f"V7 lung polygons: {n} rasterised into extra column lung_polygon_mask, not lung_mask "
        f"(they cover COVID images only; as lung_mask they would tie mask shape to the label)"
        + (f"; {len(unmatched)} entries name images not imported (not used)" if unmatched else ""))
    for name, why in sorted(problems.items()):
        stats.notes.append(f"{name}: no lung_polygon_mask, {why}")
        result.note(by_name[name]["image_id"], "lung_polygon_mask", name, f"{why}; lung_polygon_mask left unknown")


def add_severity(path: Path | None, by_name: dict, result: CollectionResult) -> None:
    if path is None:
        return
    table = read_table_or_note(path, result, SOURCE, "severity_geographic", comment="#")
    if table is None:
        return
    if not {"filename", *SEVERITY_RANGES} <= set(table.frame.columns):
        result.note(f"{SOURCE}:*", "severity_geographic", path,
                    f"{path.name} lacks filename, geographic_mean or opacity_mean; severity scores left unknown")
        return
    for line, why, _ in table.bad_lines:
        result.note(f"{SOURCE}:*", "severity_geographic", f"{path.name} line {line}", f"line {why}; its scores are not used")
    n = 0
    unmatched = 0
    for _, r in table.frame.iterrows():
        row = by_name.get(cell(r["filename"]))
        if row is None:
            unmatched += 1
            continue
        for column, target in (("geographic_mean", "severity_geographic"), ("opacity_mean", "severity_opacity")):
            row[target] = _score(r[column], column, row["image_id"], target, result)
        n += 1
    result.stats[0].notes.append(f"severity scores: {n} images from {path} (extra columns severity_geographic, severity_opacity)"
                                 + (f"; {unmatched} rows name images not imported (not used)" if unmatched else ""))


def _score(raw: str, column: str, image_id: str, target: str, result: CollectionResult) -> str:
    value, problem = parse_number(raw)
    lo, hi = SEVERITY_RANGES[column]
    if value is not None and not lo <= value <= hi:
        problem = f"{column} {format_number(value)} is outside {format_number(lo)} to {format_number(hi)}"
    if problem:
        result.note(image_id, target, raw, f"{problem}; left unknown")
        return ""
    return "" if value is None else format_number(value)
