"""The duplicate-aware split at scale (issue 21): `cmt data split` end to end on phantoms, and the
candidate step (multi-index hashing, at most MAX_CANDIDATES per image) from 10^3 to 10^5 films.

    python benchmarks/split_scale.py phantoms                 # cmt data split of 1,329 of 2,400 phantoms (128 px)
    python benchmarks/split_scale.py candidates               # NIH-bits hashes at 10^3, 10^4, 10^5 films
    python benchmarks/split_scale.py hashes MANIFEST --out H.npy   # the hashes of a manifest's images
    python benchmarks/split_scale.py candidates --hashes H.npy     # ... or of real images (e.g. phantoms at 64 px)
    python benchmarks/split_scale.py --smoke                  # both, tiny, for the tests

`phantoms` makes the films with `cmt data synth`, takes the first --take rows of its manifest as a
manifest beside it, and times `cmt data split` as a user runs it (a new process; wall and CPU time
of it and its workers; its stage lines parsed). `candidates` plants near-copies (every window
hash of a film with 1-4 bits flipped) into each set and counts those found among the candidate
pairs. NIH-bits hashes: independent bits with the frequencies measured on the 510 ChestX-ray14
thumbnails of cxr-public, the windows a film's full-frame hash with bits flipped at the measured
rates. Real films crowd far more (correlated bits: 2 % of the NIH thumbnails' pairs are within
10 bits, of these random ones almost none), so the crowded case is measured on real renders:
phantoms at 64 px (`cmt data synth --size 64`, then `hashes`; at 128 px 18 % of the phantoms'
pairs are within 10 bits). The load average is printed beside every figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.data.dupfeatures import candidate_pairs
from cmtlib.data.duplicates import HASH_MAX, MAX_CANDIDATES

REPO = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^duplicates: (\w+): .*, ([\d.]+) s$", re.M)
# P(bit b = 1) of the full-frame hash (bit 0 = least significant), 510 NIH 64-px thumbnails.
NIH_BIT_P = np.array([
    0.60, 0.46, 0.52, 0.76, 0.54, 0.50, 0.56, 0.28, 0.58, 0.47, 0.53, 0.87, 0.65, 0.57, 0.45, 0.25,
    0.59, 0.51, 0.53, 0.84, 0.39, 0.27, 0.63, 0.14, 0.55, 0.49, 0.53, 0.80, 0.67, 0.13, 0.38, 0.20,
    0.44, 0.90, 0.42, 0.64, 0.64, 0.01, 0.43, 0.16, 0.40, 0.90, 0.63, 0.10, 0.32, 0.08, 0.65, 0.65,
    0.63, 0.27, 0.55, 0.97, 0.57, 0.99, 0.38, 0.01, 0.66, 0.03, 0.41, 0.70, 0.66, 0.01, 0.55, 0.00])
# Median bits between a film's full-frame hash and each other window's (same films), of 63.
NIH_WINDOW_FLIPS = (8, 16, 14, 14)


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def nih_bits(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 5) uint64 window hashes (module docstring)."""
    full = rng.random((n, 64)) < NIH_BIT_P
    windows = [full] + [full ^ (rng.random((n, 64)) < flips / 63) for flips in NIH_WINDOW_FLIPS]
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    out = np.stack([(w.astype(np.uint64) * weights).sum(1, dtype=np.uint64) for w in windows], axis=1)
    return out & np.uint64(2**63 - 1)  # a perceptual hash's top bit is always 0


def plant(hashes: np.ndarray, n_copies: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append near-copies of random films: each window hash with 1-4 of its 63 bits flipped.
    Returns (all hashes, the originals' rows, the copies' rows)."""
    base = rng.choice(len(hashes), n_copies, replace=False)
    copies = hashes[base].copy()
    for k in range(n_copies):
        flips = int(rng.integers(1, 5))
        for w in range(hashes.shape[1]):
            bits = rng.choice(63, flips, replace=False).astype(np.uint64)
            copies[k, w] ^= np.bitwise_or.reduce(np.uint64(1) << bits)
    return np.concatenate([hashes, copies]), base, np.arange(len(hashes), len(hashes) + n_copies)


def measure_candidates(name: str, hashes: np.ndarray, seed: int = 0) -> dict:
    """Time candidate_pairs on the hashes plus 1 % planted copies (at least 10); count those found."""
    rng = np.random.default_rng(seed)
    allh, base, copies = plant(hashes, max(10, len(hashes) // 100), rng)
    before, start = time.process_time(), time.perf_counter()
    cand = candidate_pairs(allh, HASH_MAX, MAX_CANDIDATES)
    wall, cpu = time.perf_counter() - start, time.process_time() - before
    found = set(zip(cand.i.tolist(), cand.j.tolist()))
    hits = sum((int(b), int(c)) in found for b, c in zip(base, copies))
    return {"set": name, "films": len(allh), "planted": len(copies), "planted_found": hits, "pairs": len(cand),
            "at_bound": cand.at_bound, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": load()}


def run_split(manifest: Path, out: Path) -> dict:
    """`cmt data split` in a new process: wall and CPU time (it and its workers), its stage lines."""
    before, start, load_before = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter(), load()
    done = subprocess.run([sys.executable, "-m", "cmtlib.cli", "data", "split", str(manifest), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"cmt data split failed:\n{done.stderr}")
    stages = {m[1]: float(m[2]) for m in STAGE_LINE.finditer(done.stderr)}  # a stage's last line is its total
    pairs = re.search(r"confirmations: (\d+) pairs compared", done.stderr)
    groups = re.search(r"^duplicate groups: (\d+)", done.stdout, re.M)
    return {"wall_s": round(wall, 1), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "stages_s": stages, "pairs_compared": int(pairs[1]) if pairs else 0, "groups": int(groups[1]) if groups else None,
            "load_before": load_before, "load_after": load(), "stage_lines": [x for x in done.stderr.splitlines() if x.startswith("duplicates:")]}


def phantoms(out: Path, n: int, take: int, size: int) -> dict:
    from cmtlib.data.synth import make_synthetic

    manifest = out / "manifest.csv"
    if not manifest.is_file() or len(pd.read_csv(manifest)) != n:
        make_synthetic(out, n=n, size=size, seed=0, progress=False)
    subset = out / f"first{take}.csv"
    pd.read_csv(manifest, dtype=str, keep_default_na=False).head(take).to_csv(subset, index=False)
    return {"films": take, "of": n, "size": size, **run_split(subset, out / f"first{take}_split.csv")}


def hashes_of(manifest: Path, out: Path) -> Path:
    """The window hashes of a manifest's images, in its row order (unreadable ones left out)."""
    from cmtlib.data.duplicates import read_features
    from cmtlib.data.manifest import read_manifest, resolve_path

    df = read_manifest(manifest)
    feats, _, _ = read_features({i: resolve_path(manifest, p) for i, p in zip(df["image_id"], df["path"])})
    np.save(out, np.stack([feats[i].hashes for i in df["image_id"] if i in feats]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", choices=["phantoms", "candidates", "hashes"], default=None)
    p.add_argument("manifest", nargs="?", help="for `hashes`: the manifest whose images to hash")
    p.add_argument("--out", default="", help="phantoms: their folder (default /tmp/cmt-split-scale); hashes: the .npy")
    p.add_argument("--n", type=int, default=2400, help="phantoms made")
    p.add_argument("--take", type=int, default=1329, help="phantoms split (the first rows of their manifest)")
    p.add_argument("--size", type=int, default=128, help="phantom side in px")
    p.add_argument("--sizes", default="1000,10000,100000", help="films per candidate set")
    p.add_argument("--hashes", default="", help="an (N, 5) uint64 .npy (the `hashes` command) instead of NIH-bits hashes")
    p.add_argument("--json", default="", help="write the figures to this file too")
    p.add_argument("--smoke", action="store_true", help="tiny sets: checks the script runs")
    a = p.parse_args(argv)
    if a.what == "hashes":
        if not a.manifest or not a.out:
            p.error("hashes needs a MANIFEST and --out FILE.npy")
        print(hashes_of(Path(a.manifest), Path(a.out)))
        return 0
    if a.smoke:
        a.n, a.take, a.size, a.sizes = 40, 30, 64, "200,400"
    result = {"machine": machine()}
    if a.what in ("phantoms", None):
        result["split"] = phantoms(Path(a.out or "/tmp/cmt-split-scale"), a.n, a.take, a.size)
        print(json.dumps(result["split"], indent=1))
    if a.what in ("candidates", None):
        sizes = [int(x) for x in a.sizes.split(",")]
        pool = np.load(a.hashes) if a.hashes else None
        rows = [measure_candidates(Path(a.hashes).stem if a.hashes else "nih-bits",
                                   pool[:n] if pool is not None else nih_bits(n, np.random.default_rng(n))) for n in sizes]
        result["candidates"] = rows
        result["growth"] = round(rows[-1]["cpu_s"] / max(rows[0]["cpu_s"], 1e-3), 1) if len(rows) > 1 else None
        print(pd.DataFrame(rows).to_string(index=False))
        if len(rows) > 1:
            print(f"growth {rows[0]['films']} -> {rows[-1]['films']} films: CPU time x{result['growth']} "
                  f"(linear: x{rows[-1]['films'] / rows[0]['films']:.0f})")
    print(f"machine: {result['machine']}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
