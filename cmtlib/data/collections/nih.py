"""NIH ChestX-ray14 (Wang et al. 2017), `source = nih`.

The label table `Data_Entry_2017*.csv[.gz]` lists all 112,120 images; only rows whose image is
found (by Image Index, anywhere below the table's folder) are imported, and the absent ones are
counted, not quarantined: most copies hold a part of the collection. "No Finding" is healthy,
any other label (several are joined by '|') is other disease, and label_covid is 0 (pre-2020).

Disease boxes (`BBox_List_2017.csv`) are drawn on the 1024 x 1024 PNGs of the release. They are
written in the pixels of the file the row points at (common.py: one frame for every collection),
so a 64-px thumbnail's boxes are the 1024-px boxes x 64/1024. The extra column
`disease_box_labels` holds each box's finding, in the same order.

One Image Index found at two sizes (a 64-px thumbnail and a larger copy) becomes two images,
`nih:<stem>_<W>px`, sharing the duplicate_group `nih:<stem>`, so a split keeps them together.
"""

from __future__ import annotations

import json
from pathlib import Path

from cmtlib.data.collections.common import (
    LATERAL,     CollectionResult, ImportContext, SourceStats, base_row, clean_number, clean_sex, labels_for_finding,
    normalise_view, prefixed, probe_image, quarantine_entry, read_table, require_columns, scale_boxes, walk_dirs,
    xywh_to_xyxy,
)
from cmtlib.data.manifest import DUPLICATE_GROUP, ManifestError, format_boxes

SOURCE = "nih"
TABLE_GLOB = "Data_Entry_2017*.csv*"
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
BOX_FRAME = (1024, 1024)  # (width, height) of the released PNGs the boxes were drawn on
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def table_of(folder: Path) -> Path | None:
    tables = sorted(folder.glob(TABLE_GLOB))
    return tables[0] if tables else None


def find(root: Path) -> list[Path]:
    found = [d for d in walk_dirs(root, max_depth=2) if table_of(d)]
    if not found:
        raise ManifestError(f"no ChestX-ray14 label table ({TABLE_GLOB}) under {root}")
    return found


def _boxes(folder: Path) -> dict[str, list[tuple[str, list[float]]]]:
    """Image Index -> [(finding, [x0, y0, x1, y1] in the 1024-px frame)]."""
    path = folder / "BBox_List_2017.csv"
    if not path.is_file():
        return {}
    # The header splits "Bbox [x,y,w,h]" over four columns; read the values by position.
    table = read_table(path)
    out: dict[str, list[tuple[str, list[float]]]] = {}
    for row in table.itertuples(index=False):
        name, label, x, y, w, h = row[:6]
        out.setdefault(name.strip(), []).append((label.strip(), xywh_to_xyxy([x, y, w, h])))
    return out


def read(folder: Path, ctx: ImportContext) -> CollectionResult:
    table_path = table_of(folder)
    entries = read_table(table_path)
    require_columns(entries, COLUMNS, table_path, "; is this ChestX-ray14's Data_Entry table?")
    stats = SourceStats(SOURCE, folder)
    result = CollectionResult(stats=[stats])
    # One walk of the folder, then lookups by name: the collection can hold 112,120 files.
    files: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            files.setdefault(p.name, []).append(p)
    present = entries[entries["Image Index"].isin(files)]
    stats.skip("Data_Entry rows whose image is not in this copy (counted, not quarantined)", len(entries) - len(present))
    stats.skip("image files not listed in Data_Entry", len(set(files) - set(entries["Image Index"])))
    boxes = _boxes(folder)
    disagree = 0
    for _, r in present.iterrows():
        name = r["Image Index"]
        stem = Path(name).stem
        kind, view = normalise_view(r["View Position"])
        if kind in ("lateral", "other"):
            stats.skip(LATERAL if kind == "lateral" else f"view {r['View Position']!r} (not PA/AP)")
            continue
        by_size: dict[tuple[int, int], Path] = {}
        for path in files[name]:
            size, problem = probe_image(path)
            if size is None:
                result.quarantine.append(quarantine_entry(prefixed(SOURCE, stem), path, problem))
            elif size in by_size:
                stats.skip("second copy of an image at the same size (first kept)")
            else:
                by_size[size] = path
        labels = labels_for_finding(r["Finding Labels"], pre2020=True)
        for size, path in sorted(by_size.items()):
            several = len(by_size) > 1
            local = f"{stem}_{_size_tag(size)}" if several else stem
            row = base_row(SOURCE, prefixed(SOURCE, local), path, prefixed(SOURCE, r["Patient ID"].strip().zfill(8)), r["Finding Labels"], labels)
            row.update(view=view, sex=clean_sex(r.get("Patient Gender", "")), age=clean_number(r.get("Patient Age", "")))
            if several:
                row[DUPLICATE_GROUP] = prefixed(SOURCE, stem)
            if name in boxes and labels[0] != "1":
                row["disease_boxes"] = format_boxes(scale_boxes([b for _, b in boxes[name]], BOX_FRAME, size))
                row["disease_box_labels"] = json.dumps([lab for lab, _ in boxes[name]])
            disagree += _folder_disagrees(path, labels)
            result.rows.append(row)
    stats.notes.append(f"disease boxes: from {BOX_FRAME[0]}-px coordinates scaled to each file's own pixels")
    if disagree:
        stats.notes.append(f"{disagree} images sit in a 0_normal / 1_abnormal folder that disagrees with Data_Entry (labels from Data_Entry)")
    return result


def _size_tag(size: tuple[int, int]) -> str:
    return f"{size[0]}px" if size[0] == size[1] else f"{size[0]}x{size[1]}px"


def _folder_disagrees(path: Path, labels: tuple[str, str, str]) -> int:
    """The 64-px copy sorts images into 0_normal / 1_abnormal folders; count contradictions."""
    parts = set(path.parts)
    if "0_normal" in parts:
        return int(labels[0] != "1")
    if "1_abnormal" in parts:
        return int(labels[0] == "1")
    return 0

