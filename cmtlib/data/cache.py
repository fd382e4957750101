"""The image cache: every manifest image resized once to S x S uint8, with its masks, as .npy
arrays that readers memory-map (folder format in docs/CONTRACTS.md).

Building reads images in parallel processes that end with the build, however it ends; one build
at a time holds the folder, and removes the temporary files an interrupted one left. A rebuild into a folder that already holds a cache
of the same size copies every row whose content hash (image bytes, mask file bytes and box cells)
is unchanged instead of decoding it again. Unreadable images go to quarantine.csv with a reason
and the build goes on. Everything is written under temporary names and renamed at the end, so a
killed build leaves the previous cache (or nothing) in place, never a half-written one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from PIL import Image

import cmtlib
from cmtlib.errors import CmtError, ConfigError, MissingInputError
from cmtlib.data.io import MIN_SIDE, ImageReadError, decode_image, read_bytes
from cmtlib.data.manifest import (
    ManifestError, manifest_hash, read_manifest, read_quarantine, resolve_path, write_manifest, write_quarantine,
)
from cmtlib.data.regions import box_mask, mask_or_boxes
from cmtlib.data.workers import exclusive_build, pool
from cmtlib.fileio import atomic_path, write_json

__all__ = ["CacheError", "CacheReport", "build_cache", "open_cache", "box_mask", "mask_or_boxes", "resize_image"]

# Bump when reading or resizing changes what a row holds: older caches are then rebuilt whole.
READER_VERSION = 1
ARRAYS = ("images", "lung", "disease")
CACHE_COLUMNS = ("cache_row", "content_hash", "orig_height", "orig_width", "has_lung", "has_disease", "read_info")
MASK_COLUMNS = ("lung_mask", "disease_mask", "lung_boxes", "disease_boxes")
# Every file a build writes (each under a temporary name first, removed if a killed build left it).
BUILD_FILES = ("meta.json", "quarantine.csv", "index.csv", *(f"{a}.npy" for a in ARRAYS))


class CacheError(CmtError, ValueError):
    """A cache folder that cannot be used as it is; the message says how to rebuild it."""


@dataclass
class CacheReport:
    """What a cache build did. `summary()` is what `cmt data cache` prints."""

    out: Path
    size: int
    n_manifest: int = 0
    n_cached: int = 0
    n_read: int = 0
    n_reused: int = 0
    n_quarantined: int = 0
    n_masks_ignored: int = 0
    seconds: float = 0.0
    workers: int = 1
    quarantine: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Images handled (read, reused or refused) per second of the whole build."""
        return self.n_manifest / self.seconds if self.seconds > 0 else float("nan")

    def reasons(self) -> dict[str, int]:
        """Quarantine entries counted by reason, the file name left out of the reason."""
        return dict(Counter(_reason_kind(e["reason"], e["path"]) for e in self.quarantine).most_common())

    def summary(self) -> str:
        lines = [
            f"cached {self.n_cached} of {self.n_manifest} images at {self.size} x {self.size} px into {self.out} "
            f"in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s, {self.workers} worker(s)); "
            f"{self.n_read} read, {self.n_reused} reused from the previous cache",
            f"quarantined: {self.n_quarantined} image(s) left out, {self.n_masks_ignored} mask(s) ignored with the image kept"
            + (f" (see {self.out / 'quarantine.csv'})" if self.quarantine else ""),
        ]
        lines += [f"  {n} x {reason}" for reason, n in self.reasons().items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def build_cache(manifest: Path, size: int, out: Path, workers: int = 0) -> CacheReport:
    """Resize every manifest image (and its masks) to size x size into the folder `out`.

    Args:
        manifest: the manifest CSV; its paths are absolute or relative to its folder.
        size: side S of the cached square images (aspect ratio is not kept, as in the paper).
        out: the cache folder; a cache of the same size already there is reused row by row.
        workers: reading processes; 0 = os.cpu_count(), 1 = read in this process.

    Returns:
        A CacheReport with counts, timing and the quarantine entries.

    Raises:
        FileNotFoundError: no manifest at that path.
        ManifestError: the manifest lacks image_id or path, or repeats an image_id.
        ValueError: size below the smallest readable image side.
    """
    if not isinstance(size, int) or size < MIN_SIDE:
        raise ConfigError(f"cache size must be an integer of at least {MIN_SIDE} px, got {size!r}")
    manifest, out = Path(manifest), Path(out)
    df = _checked_manifest(manifest)
    with exclusive_build(out, BUILD_FILES) as removed:
        report = _build(manifest, df, size, out, workers)
    if removed:
        report.notes.append(f"removed {removed} temporary file(s) left by an interrupted build")
    return report


def _build(manifest: Path, df: pd.DataFrame, size: int, out: Path, workers: int) -> CacheReport:
    """build_cache's work, under the folder's build lock."""
    start = time.perf_counter()
    workers = max(1, workers or os.cpu_count() or 1)
    report = CacheReport(out=out, size=size, n_manifest=len(df), workers=workers)
    previous = _previous_cache(out, size, report)
    tasks = [_task(manifest, row, size, previous) for row in df.to_dict("records")]

    kept: list[int] = []
    extra: dict[str, list] = {c: [] for c in CACHE_COLUMNS}
    with contextlib.ExitStack() as stack:
        # Entered in reverse: the stack renames last-entered first, so meta.json lands last.
        tmp_meta = stack.enter_context(atomic_path(out / "meta.json"))
        tmp_quarantine = stack.enter_context(atomic_path(out / "quarantine.csv"))
        tmp_index = stack.enter_context(atomic_path(out / "index.csv"))
        tmp_arrays = {name: stack.enter_context(atomic_path(out / f"{name}.npy")) for name in ARRAYS}
        arrays = {name: np.lib.format.open_memmap(tmp_arrays[name], mode="w+", dtype=np.uint8, shape=(len(df), size, size)) for name in ARRAYS}
        for i, result in enumerate(_run(tasks, workers, size)):
            report.quarantine += result["notes"]
            if result["status"] == "refused":
                report.n_quarantined += 1
                continue
            if result["status"] == "reused":
                report.n_reused += 1
                old_row = previous["rows"][result["hash"]]
                rows = {name: previous["arrays"][name][old_row] for name in ARRAYS}
                columns = previous["index"].iloc[old_row]
                report.quarantine += previous["notes"].get(tasks[i]["image_id"], [])
            else:
                report.n_read += 1
                rows, columns = result["arrays"], result["columns"]
            for name in ARRAYS:
                arrays[name][len(kept)] = rows[name]
            for col in CACHE_COLUMNS[2:]:
                extra[col].append(columns[col])
            extra["cache_row"].append(str(len(kept)))
            extra["content_hash"].append(result["hash"])
            kept.append(i)
        for name in ARRAYS:
            arrays[name].flush()
        del arrays
        previous.pop("arrays", None)  # release the old memmaps before their files are replaced
        for name in ARRAYS:
            _shrink_npy(tmp_arrays[name], len(kept))
        index = df.iloc[kept].reset_index(drop=True)
        for col in CACHE_COLUMNS:
            index[col] = extra[col]
        write_manifest(index, tmp_index)
        report.n_cached = len(kept)
        report.n_masks_ignored = len(report.quarantine) - report.n_quarantined
        write_quarantine(report.quarantine, tmp_quarantine)
        write_json(tmp_meta, {
            "size": size, "n": len(kept), "manifest": str(manifest.resolve()), "manifest_hash": manifest_hash(manifest),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cmtlib_version": cmtlib.__version__,
            "quarantined": report.n_quarantined, "masks_ignored": report.n_masks_ignored, "reader_version": READER_VERSION,
        })
    report.seconds = time.perf_counter() - start
    return report


def open_cache(directory: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Open a cache folder for reading.

    Returns:
        (index, images, lung, disease, meta): index is the DataFrame of index.csv (strings, ''
        = unknown); images, lung and disease are read-only uint8 memmaps of shape (N, S, S);
        meta is meta.json as a dict.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        CacheError: the files disagree with each other (an interrupted or foreign folder).
    """
    directory = Path(directory)
    for name in ("meta.json", "index.csv", *(f"{a}.npy" for a in ARRAYS)):
        if not (directory / name).is_file():
            raise MissingInputError(
                f"{directory} is not a complete cache: {name} is missing; "
                f"build it with `cmt data cache MANIFEST --size S --out {directory}`"
            )
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    index = read_manifest(directory / "index.csv")
    n, size = meta.get("n"), meta.get("size")
    arrays = []
    for name in ARRAYS:
        arr = np.load(directory / f"{name}.npy", mmap_mode="r")
        if arr.shape != (n, size, size) or arr.dtype != np.uint8:
            raise CacheError(
                f"{directory / name}.npy is {arr.dtype} {arr.shape} but meta.json says uint8 ({n}, {size}, {size}); "
                "rebuild the cache with `cmt data cache`"
            )
        arrays.append(arr)
    if len(index) != n:
        raise CacheError(f"{directory}/index.csv has {len(index)} rows but meta.json says {n}; rebuild the cache with `cmt data cache`")
    return index, arrays[0], arrays[1], arrays[2], meta


# ---- building blocks -------------------------------------------------------------------------

def _checked_manifest(manifest: Path) -> pd.DataFrame:
    df = read_manifest(manifest)
    missing = [c for c in ("image_id", "path") if c not in df.columns]
    if missing:
        raise ManifestError(f"{manifest} lacks column(s) {', '.join(missing)}; see DESIGN.md (Manifest)")
    dup = df["image_id"][df["image_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{manifest} repeats image_id {dup[:5]}; run `cmt data check {manifest}`")
    for col in MASK_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    return df


def _previous_cache(out: Path, size: int, report: CacheReport) -> dict[str, Any]:
    """The old cache in `out` as {rows: hash -> row, arrays, index, notes}, or empty ones."""
    empty: dict[str, Any] = {"rows": {}, "by_id": {}, "arrays": {}, "index": None, "notes": {}}
    if not (out / "meta.json").is_file():
        return empty
    try:
        index, images, lung, disease, meta = open_cache(out)
    except (FileNotFoundError, CacheError, ValueError) as err:
        report.notes.append(f"the folder's previous cache could not be reused ({err}); every image was read")
        return empty
    if meta.get("size") != size or meta.get("reader_version") != READER_VERSION:
        report.notes.append(f"previous cache in {out} is {meta.get('size')} px (reader {meta.get('reader_version')}); every image was read")
        return empty
    notes: dict[str, list[dict]] = {}
    for entry in read_quarantine(out / "quarantine.csv").to_dict("records"):
        notes.setdefault(entry["image_id"], []).append(entry)
    return {
        "rows": {h: i for i, h in enumerate(index["content_hash"])},
        "by_id": dict(zip(index["image_id"], index["content_hash"])),
        "arrays": {"images": images, "lung": lung, "disease": disease}, "index": index, "notes": notes,
    }


def _task(manifest: Path, row: dict, size: int, previous: dict) -> dict:
    """What one worker needs for one row: resolved paths and cells, and the hash to reuse."""
    def path(cell: str) -> str:
        return str(resolve_path(manifest, cell)) if cell else ""

    return {
        "image_id": row["image_id"], "path": path(row["path"]), "size": size,
        "lung_mask": path(row["lung_mask"]), "disease_mask": path(row["disease_mask"]),
        "lung_boxes": row["lung_boxes"], "disease_boxes": row["disease_boxes"],
        "reuse_hash": previous["by_id"].get(row["image_id"]),
    }


def _run(tasks: list[dict], workers: int, size: int) -> Iterator[dict]:
    """Results in manifest order, with a progress bar; in-process when one worker will do."""
    from tqdm.auto import tqdm

    if workers == 1 or len(tasks) < 2:
        yield from tqdm(map(_process_row, tasks), total=len(tasks), unit="img", desc=f"cache {size}px", disable=None)
        return
    chunksize = max(1, min(16, len(tasks) // (workers * 8)))
    # Workers die with this process (workers.py): a killed build leaves no reader behind.
    with pool(min(workers, len(tasks))) as executor:
        # All tasks are submitted (and the workers started) before tqdm starts its monitor thread.
        results = executor.map(_process_row, tasks, chunksize=chunksize)
        yield from tqdm(results, total=len(tasks), unit="img", desc=f"cache {size}px", disable=None)


def _process_row(task: dict) -> dict:
    """Hash one row's inputs; read and resize it unless the previous cache holds that hash."""
    iid, size = task["image_id"], task["size"]
    if not task["path"]:
        return _refused(task, "the manifest's path cell is empty")
    try:
        data = read_bytes(task["path"])
    except ImageReadError as err:
        return _refused(task, str(err))
    digest = _content_hash(data, task)
    if digest == task["reuse_hash"]:
        return {"status": "reused", "hash": digest, "notes": []}
    try:
        image, info = decode_image(data, target_size=size, name=task["path"])
    except ImageReadError as err:
        return _refused(task, str(err))
    del data
    orig_h, orig_w = info["orig_size"]
    arrays = {"images": resize_image(image, size)}
    columns = {
        "orig_height": str(orig_h), "orig_width": str(orig_w),
        "read_info": json.dumps({k: v for k, v in info.items() if v not in (None, False)}, separators=(",", ":")),
    }
    notes = []
    for kind in ("lung", "disease"):
        mask, note = mask_or_boxes(kind, task[f"{kind}_mask"], task[f"{kind}_boxes"], (orig_h, orig_w), size)
        # Unknown masks are zero-filled; has_* = 0 switches their loss off.
        arrays[kind] = mask if mask is not None else np.zeros((size, size), np.uint8)
        columns[f"has_{kind}"] = str(int(mask is not None))
        if note:
            notes.append({"image_id": iid, "path": task[f"{kind}_mask"] or f"{kind}_boxes", "reason": note})
    return {"status": "read", "hash": digest, "arrays": arrays, "columns": columns, "notes": notes}


def _refused(task: dict, reason: str) -> dict:
    return {"status": "refused", "hash": "", "notes": [{"image_id": task["image_id"], "path": task["path"], "reason": reason}]}


def _content_hash(image_bytes: bytes, task: dict) -> str:
    """sha256 of the image bytes, mask file bytes and box cells, truncated to 16 hex digits."""
    h = hashlib.sha256(image_bytes)
    for key in ("lung_mask", "disease_mask"):
        path = task[key]
        h.update(f"\0{key}\0".encode())
        if path and Path(path).is_file():
            h.update(Path(path).read_bytes())
        else:
            h.update(f"absent:{path}".encode())
    for key in ("lung_boxes", "disease_boxes"):
        h.update(f"\0{key}\0{task[key]}".encode())
    return h.hexdigest()[:16]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """float (H, W) in [0, 1] -> uint8 (size, size). Lanczos after a box pre-reduction: as sharp as
    Lanczos, and the pre-reduction averages areas, so large films do not alias. `cmt predict` resizes
    with this same function, so a model sees at prediction what it saw in training."""
    out = Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.clip(np.rint(np.asarray(out) * 255.0), 0, 255).astype(np.uint8)


def _shrink_npy(path: Path, n: int) -> None:
    """Cut an (N, S, S) .npy file down to its first n rows, in place.

    Refused images leave unused rows at the end. Rewriting the header (padded with spaces to its
    old length, which the .npy format allows) and truncating avoids copying a file that can be
    gigabytes.
    """
    fmt = np.lib.format
    with open(path, "r+b") as f:
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        data_start = f.tell()
        if shape[0] == n:
            return
        prefix = 10 if version == (1, 0) else 12  # magic (6), version (2), header length (2 or 4)
        header = repr({"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (n, *shape[1:])})
        f.seek(prefix)
        f.write(header.encode("latin1").ljust(data_start - prefix - 1) + b"\n")
        f.truncate(data_start + n * int(np.prod(shape[1:])) * dtype.itemsize)


def _reason_kind(reason: str, path: str) -> str:
    """A reason with its file name and numbers taken out, for counting reasons alike."""
    text = reason.replace(path, "FILE") if path else reason
    return re.sub(r"\d[\d,.]*", "N", text.split(";")[0]).strip()
