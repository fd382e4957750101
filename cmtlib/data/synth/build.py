"""`make_synthetic`: render the cohort's films in parallel and write images, masks and manifest."""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from cmtlib.errors import ConfigError
from cmtlib.data.manifest import format_boxes, write_manifest
from cmtlib.data.synth.anatomy import box_of
from cmtlib.data.synth.cohort import LICENSE, Case, make_cohort
from cmtlib.data.synth.render import Film, render
from cmtlib.fileio import atomic_path

MIN_SIZE = 32
CHUNK = 40
# Below this many images a process pool costs more (start-up, vessel trees per worker) than it saves.
POOL_MIN_N = 300


def make_synthetic(out_dir: Path, n: int = 2000, size: int = 256, seed: int = 0, *, workers: int | None = None, progress: bool | None = None) -> Path:
    """Write n synthetic chest films with labels and masks to out_dir; return out_dir/manifest.csv.

    Byte-identical for the same (n, size, seed), whatever `workers` is: the cohort comes from one
    generator and each film from its own generator seeded by (seed, image index).

    Args:
        out_dir: folder for manifest.csv, images/ and masks/ (created; paths in the manifest are
            relative to it).
        n: number of images (patients have 1-5 each).
        size: image side in pixels.
        seed: the data set's seed.
        workers: processes to render with; default: up to 4 CPU cores for n >= 300, else 1.
        progress: show a tqdm bar; default: when stderr is a terminal.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be a positive number of images, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigError(f"size must be an integer of at least {MIN_SIZE} px, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    # A run stopped half-way must not leave an old manifest pointing at a mix of old and new files.
    manifest.unlink(missing_ok=True)

    cases = make_cohort(int(n), int(seed))
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if n >= POOL_MIN_N else 1
    if progress is None:
        progress = os.isatty(2)
    chunks = [cases[i:i + CHUNK] for i in range(0, len(cases), CHUNK)]
    rows: dict[int, list[dict]] = {}
    from tqdm.auto import tqdm

    with tqdm(total=len(cases), desc="synthetic films", unit="img", disable=not progress) as bar:
        if workers <= 1:
            for i, chunk in enumerate(chunks):
                rows[i] = _write_chunk(chunk, int(size), int(seed), str(out_dir))
                bar.update(len(chunk))
        else:
            # spawn, not fork: forking a process that runs other threads (numpy's BLAS pool, torch's,
            # a notebook kernel's) can deadlock the child, and Python 3.12+ warns about it.
            context = get_context("spawn")
            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
                    futures = {pool.submit(_write_chunk, chunk, int(size), int(seed), str(out_dir)): i for i, chunk in enumerate(chunks)}
                    for fut in as_completed(futures):
                        rows[futures[fut]] = fut.result()
                        bar.update(len(chunks[futures[fut]]))
            except BrokenProcessPool as err:
                raise RuntimeError(
                    "a make_synthetic worker process died. Spawned workers re-import the calling script: "
                    "put the call under `if __name__ == \"__main__\":`, or pass workers=1"
                ) from err
    df = pd.DataFrame([row for i in range(len(chunks)) for row in rows[i]])
    return write_manifest(df, manifest)


def _worker_init() -> None:
    """Keep freed film-sized buffers (256 KB at 256 px) in the heap instead of returning them to the
    system: glibc maps each one fresh otherwise, and the page faults cost ~20 % of the run. Only in
    our own worker processes; elsewhere (not glibc) the defaults stay."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _write_chunk(cases: list[Case], size: int, seed: int, out_dir: str) -> list[dict]:
    root = Path(out_dir)
    return [_write_case(case, render(case, size, seed), root) for case in cases]


def _write_case(case: Case, film: Film, root: Path) -> dict:
    name = case.image_name
    image_rel = f"images/{name}.png"
    _save_png(film.image, root / image_rel)
    lung_rel = lung_boxes = ""
    if case.has_lung_mask:
        lung_rel = f"masks/{name}_lung.png"
        _save_png(film.lung.astype(np.uint8) * 255, root / lung_rel)
        lung_boxes = format_boxes([b for b in (box_of(film.lungs[0]), box_of(film.lungs[1])) if b is not None])
    disease_rel = disease_boxes = ""
    if case.label == "healthy":
        disease_boxes = "[]"  # known to have no lesion; no file needed
    elif case.has_disease_mask and film.disease is not None and film.disease.any():
        # A lesion hidden entirely behind the heart leaves an empty mask: kept unknown, since
        # known-empty would contradict the image's disease label.
        disease_rel = f"masks/{name}_disease.png"
        _save_png(film.disease.astype(np.uint8) * 255, root / disease_rel)
        disease_boxes = format_boxes(disease_boxes_of(film.disease, film.lungs))
    return {
        "image_id": f"synth:{name}", "path": image_rel, "patient_id": f"synth:{case.patient}",
        "source": case.source, "view": case.view, "sex": case.sex, "age": str(case.age),
        "offset_days": "" if case.day is None else str(case.day), "finding": case.finding,
        "license": LICENSE,
        "label_healthy": str(int(case.label == "healthy")), "label_covid": str(int(case.label == "covid")),
        "label_other": str(int(case.label == "other")),
        "lung_mask": lung_rel, "disease_mask": disease_rel, "lung_boxes": lung_boxes,
        "disease_boxes": disease_boxes, "split": "",
    }


def disease_boxes_of(mask: np.ndarray, lungs: tuple[np.ndarray, np.ndarray], max_boxes: int = 4) -> list[list[float]]:
    """Boxes around a lesion mask, as an annotator would draw them: one per lesion (pieces a few
    pixels apart merged), or one per lung where patchy opacities would need more than max_boxes."""
    gap = max(1, mask.shape[0] // 64)
    labels, count = ndimage.label(ndimage.binary_dilation(mask, iterations=gap))
    if 0 < count <= max_boxes:
        parts = [mask & (labels == k) for k in range(1, count + 1)]
    else:
        parts = [mask & lung for lung in lungs]
    boxes = [box_of(p) for p in parts]
    return sorted(b for b in boxes if b is not None)
