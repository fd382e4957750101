"""Images per second building the cache (`cmt data cache`), cold and incremental.

    python benchmarks/data_cache.py                           # synthetic set (cmtlib.data.synth)
    python benchmarks/data_cache.py --manifest real.csv      # any manifest, e.g. over cxr-public
    python benchmarks/data_cache.py --smoke                   # a few tiny images, for the tests

Each dataset is cached twice into a fresh temporary folder: a cold build (every image read) and an
incremental rebuild (every row reused by its content hash). The table gives both rates, and the
machine is printed with it: rates on other machines are not comparable.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cmtlib.data.cache import build_cache


def tiny_set(out: Path, n: int, size: int, seed: int = 0) -> Path:
    """n small grayscale PNGs with lung boxes and a manifest; for --smoke without cmtlib.data.synth."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = rng.integers(120, 220, (size, size), dtype=np.uint8)
        img[size // 5:4 * size // 5, size // 8:size // 2 - 2] //= 3  # right lung, dark
        img[size // 5:4 * size // 5, size // 2 + 2:7 * size // 8] //= 3  # left lung
        Image.fromarray(img).save(out / f"{i}.png")
        boxes = [[size / 8, size / 5, size / 2 - 2, 4 * size / 5], [size / 2 + 2, size / 5, 7 * size / 8, 4 * size / 5]]
        rows.append({"image_id": f"tiny:{i}", "path": f"{i}.png", "lung_boxes": str(boxes), "disease_boxes": "[]"})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def synthetic_set(out: Path, n: int, size: int) -> Path | None:
    """The project's synthetic phantoms, or None while cmtlib.data.synth is not available."""
    try:
        from cmtlib.data.synth import make_synthetic
    except ImportError as err:
        print(f"synthetic set skipped: {err}", file=sys.stderr)
        return None
    return make_synthetic(out, n=n, size=size, seed=0)


def measure(name: str, manifest: Path, size: int, workers: int, scratch: Path) -> dict:
    """Build the cache cold, then rebuild it incrementally; both timings in one table row."""
    out = scratch / f"cache-{name}"
    cold = build_cache(manifest, size=size, out=out, workers=workers)
    warm = build_cache(manifest, size=size, out=out, workers=workers)
    if warm.n_reused != cold.n_cached:
        raise RuntimeError(f"{name}: the rebuild reused {warm.n_reused} of {cold.n_cached} rows; incremental caching is broken")
    return {
        "dataset": name, "images": cold.n_manifest, "cached": cold.n_cached, "quarantined": cold.n_quarantined,
        "size": size, "workers": cold.workers, "cold_s": round(cold.seconds, 2), "cold_img_per_s": round(cold.images_per_second, 1),
        "rebuild_s": round(warm.seconds, 2), "rebuild_img_per_s": round(warm.images_per_second, 1),
    }


def machine() -> str:
    return f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s) ({platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", action="append", default=[], help="a manifest to cache (repeat)")
    parser.add_argument("--size", type=int, default=224, help="cache side in pixels")
    parser.add_argument("--workers", type=int, default=0, help="reading processes (0 = CPU count)")
    parser.add_argument("--n", type=int, default=200, help="synthetic images")
    parser.add_argument("--synth-size", type=int, default=512, help="side of the synthetic images before caching")
    parser.add_argument("--smoke", action="store_true", help="a few tiny images, one worker: checks the script runs")
    a = parser.parse_args(argv)
    if a.smoke:
        a.n, a.size, a.synth_size, a.workers = 6, 32, 64, 1

    rows = []
    with tempfile.TemporaryDirectory(prefix="cmt-bench-cache-") as tmp:
        scratch = Path(tmp)
        datasets = [(Path(m).stem, Path(m)) for m in a.manifest]
        synthetic = synthetic_set(scratch / "synth", a.n, a.synth_size)
        if synthetic is not None:
            datasets.insert(0, ("synthetic", synthetic))
        elif a.smoke:
            datasets.insert(0, ("tiny", tiny_set(scratch / "tiny", a.n, a.synth_size)))
        if not datasets:
            parser.error("no synthetic set (cmtlib.data.synth is not importable) and no --manifest given")
        for name, manifest in datasets:
            rows.append(measure(name, manifest, a.size, a.workers, scratch))
    print(f"machine: {machine()}")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
