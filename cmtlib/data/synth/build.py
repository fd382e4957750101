"""`make_synthetic`: render the cohort's films in parallel and write images, masks and manifest, and
beside them the generator's truth: every film's full masks (truth/, truth.csv) and its twins
(twins/, twins.csv). The truth's format: docs/CONTRACTS.md, "Synthetic truth, twins and cues"."""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from cmtlib.errors import ConfigError
from cmtlib.data.manifest import format_boxes, write_manifest
from cmtlib.data.synth.anatomy import box_of
from cmtlib.data.synth.cohort import LICENSE, Case, make_cohort, make_external_cohort
from cmtlib.data.synth.render import Film, Twin, render_with_twins
from cmtlib.data.synth.ties import Strengths
from cmtlib.data.synth.truth import TRUTH_COLUMNS, TWIN_COLUMNS, TRUTH_FILE, TWINS_FILE
from cmtlib.fileio import atomic_path

MIN_SIZE = 32
CHUNK = 40
# Below this many images a process pool costs more (start-up, vessel trees per worker) than it saves.
POOL_MIN_N = 300


def make_synthetic(out_dir: Path, n: int = 2000, size: int = 256, seed: int = 0, *, strengths: Strengths | None = None,
                   external_n: int = 0, covid_opacity: float = 1.0, workers: int | None = None,
                   progress: bool | None = None) -> Path:
    """Write n synthetic chest films with labels and masks to out_dir; return out_dir/manifest.csv.

    Byte-identical for the same arguments, whatever `workers` is: the cohort comes from one
    generator and each film from its own generator seeded by (seed, image index). The default
    strengths are today's phantoms: the same files, byte for byte, as before strengths existed.

    Args:
        out_dir: folder for manifest.csv, images/ and masks/, truth.csv, truth/, twins.csv and
            twins/ (created; paths in the CSV files are relative to it).
        n: number of images (patients have 1-5 each).
        size: image side in pixels.
        seed: the data set's seed.
        strengths: how strongly each cue is tied to the label (ties.Strengths; default: today's).
        external_n: films of a third site (source synth-c, its own scanner look), appended after
            the n films from their own random streams, so the n films stay what they were.
        covid_opacity: scale of every COVID-19 opacity's density (1.0: as drawn; 0.4: faint, so that a
            cue tied to the label competes with the disease). Masks, truth and every draw stay the same.
        workers: processes to render with; default: up to 4 CPU cores for n >= 300, else 1.
        progress: show a tqdm bar; default: when stderr is a terminal.
    """
    for name, value, low in (("n", n, 1), ("external_n", external_n, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be {'a positive' if low else 'a non-negative'} number of images, got {value!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigError(f"size must be an integer of at least {MIN_SIZE} px, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(covid_opacity, bool) or not isinstance(covid_opacity, (int, float)) or not 0 < covid_opacity <= 2:
        raise ConfigError(f"covid_opacity must be a number in (0, 2] (1.0: the opacities as drawn), got {covid_opacity!r}")
    strengths = strengths or Strengths()
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    for folder in ("images", "masks", "truth", "twins"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    # A run stopped half-way must not leave an old manifest pointing at a mix of old and new files.
    for name in ("manifest.csv", TRUTH_FILE, TWINS_FILE):
        (out_dir / name).unlink(missing_ok=True)

    cases = make_cohort(int(n), int(seed), strengths) + make_external_cohort(int(external_n), int(seed), strengths)
    if covid_opacity != 1.0:
        cases = [replace(c, opacity=float(covid_opacity)) if c.kind == "covid" else c for c in cases]
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if len(cases) >= POOL_MIN_N else 1
    if progress is None:
        progress = os.isatty(2)
    chunks = [cases[i:i + CHUNK] for i in range(0, len(cases), CHUNK)]
    rows = _render_chunks(chunks, int(size), int(seed), out_dir, workers, progress)
    films = [row for i in range(len(chunks)) for row in rows[i]]
    _write_table([f["truth"] for f in films], TRUTH_COLUMNS, out_dir / TRUTH_FILE)
    _write_table([t for f in films for t in f["twins"]], TWIN_COLUMNS, out_dir / TWINS_FILE)
    # The manifest last: its presence says the data set (truth and twins included) is complete.
    return write_manifest(pd.DataFrame([f["manifest"] for f in films]), manifest)


def _render_chunks(chunks: list[list[Case]], size: int, seed: int, out_dir: Path, workers: int, progress: bool) -> dict[int, list[dict]]:
    """Render and write every chunk of films, in a process pool when workers > 1; chunk index -> rows."""
    rows: dict[int, list[dict]] = {}
    from tqdm.auto import tqdm

    with tqdm(total=sum(map(len, chunks)), desc="synthetic films", unit="img", disable=not progress) as bar:
        if workers <= 1:
            for i, chunk in enumerate(chunks):
                rows[i] = _write_chunk(chunk, size, seed, str(out_dir))
                bar.update(len(chunk))
            return rows
        # spawn, not fork: forking a process that runs other threads (numpy's BLAS pool, torch's,
        # a notebook kernel's) can deadlock the child, and Python 3.12+ warns about it.
        context = get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
                futures = {pool.submit(_write_chunk, chunk, size, seed, str(out_dir)): i for i, chunk in enumerate(chunks)}
                for fut in as_completed(futures):
                    rows[futures[fut]] = fut.result()
                    bar.update(len(chunks[futures[fut]]))
        except BrokenProcessPool as err:
            raise RuntimeError(
                "a make_synthetic worker process died. Spawned workers re-import the calling script: "
                "put the call under `if __name__ == \"__main__\":`, or pass workers=1"
            ) from err
    return rows


def _write_table(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=list(columns)).fillna("").astype(str).to_csv(tmp, index=False)


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


def _save_truth_png(array: np.ndarray, path: Path) -> None:
    """Truth and twin files are written in place, without atomic_path's temporary file and rename
    (a millisecond a file, seconds over a data set's thousands): the manifest, deleted first and
    written last, is what says the data set is complete, and an interrupted one is made again.
    zlib level 1: a third faster than the default 6, files a tenth larger."""
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_chunk(cases: list[Case], size: int, seed: int, out_dir: str) -> list[dict]:
    root = Path(out_dir)
    out = []
    for case in cases:
        film, twins = render_with_twins(case, size, seed)
        out.append({"manifest": _write_case(case, film, root), "truth": _write_truth(case, film, root),
                    "twins": [_write_twin(case, film, twin, root) for twin in twins]})
    return out


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


def _write_masks(film: Film, name: str, root: Path) -> tuple[str, str]:
    """Write a film's full truth masks into truth/; (lung, lesion) paths relative to root, the
    lesion '' when the film has no lung-field lesion (healthy, cardiomegaly, one hidden behind the heart)."""
    lung = f"truth/{name}_lung.png"
    _save_truth_png(film.lung.astype(np.uint8) * 255, root / lung)
    lesion = ""
    if film.disease is not None and film.disease.any():
        lesion = f"truth/{name}_lesion.png"
        _save_truth_png(film.disease.astype(np.uint8) * 255, root / lesion)
    return lung, lesion


def _write_truth(case: Case, film: Film, root: Path) -> dict:
    lung, lesion = _write_masks(film, case.image_name, root)
    area = float(film.disease.mean()) if lesion else 0.0
    return {
        "image_id": f"synth:{case.image_name}", "lung": lung, "lesion": lesion, "lesion_area": f"{area:.6f}",
        "kind": case.kind, "severity": "" if case.kind == "healthy" else f"{case.severity:.4f}",
        "cues": ";".join(film.cues), "view": case.view, "source": case.source,
    }


def _write_twin(case: Case, film: Film, twin: Twin, root: Path) -> dict:
    """Write a twin's image (and its own masks where they differ from the film's); its twins.csv row."""
    name = f"{case.image_name}~{twin.name}"
    path = f"twins/{name}.png"
    _save_truth_png(twin.film.image, root / path)
    if twin.name in ("view", "size"):  # other geometry or size: masks of its own
        lung, lesion = _write_masks(twin.film, name, root)
    else:  # the film's own masks; the lesion twin has none
        lung = f"truth/{case.image_name}_lung.png"
        lesion = "" if twin.name == "lesion" or film.disease is None or not film.disease.any() else f"truth/{case.image_name}_lesion.png"
    return {"image_id": f"synth:{name}", "twin_of": f"synth:{case.image_name}", "removed": twin.removed, "path": path,
            "lung": lung, "lesion": lesion}


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
