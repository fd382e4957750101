"""Near-duplicate chest X-rays: the same picture under two patient ids or in two collections.

Public COVID collections re-publish each other's films (ieee8023's `figure1-*` files are Figure1
cases; ieee8023 patients 137 and 202 are one film), re-encoded, re-windowed, letterboxed or cut.
Copies on both sides of a train / test split leak the test set.

1. Features (process pool): perceptual hashes of five centred windows and a 128 px thumbnail per
   image (cmtlib.data.dupfeatures).
2. Candidates: pairs within hash distance HASH_MAX (real copies in cxr-public: 0-8), found through
   a multi-index hash table instead of comparing all pairs (cmtlib.data.hashindex), each image
   keeping its MAX_CANDIDATES nearest (exact and near-exact copies first). Films that share their
   anatomy pass this step in bulk (one phantom is within 10 bits of about a tenth of the others);
   the bound keeps the costly step linear in the number of images. Where it bit, the result says
   how many images had more candidates than were compared.
3. Confirmation (process pool): aligned band-pass correlation of the two thumbnails
   (cmtlib.data.dupmatch). Thresholds (MIN_CORRELATION): 0.80 at 128 px, 0.90 below.
4. Grouping, complete linkage: confirmed pairs merge strongest first; two groups merge only if
   every pair across them is confirmed (pairs that were not candidates are matched on demand).
   Transitive closure would let A~B and B~C join unrelated A and C through a middling B (a blend,
   a collage, a film with an inset); complete linkage never groups two images that do not match
   each other. The price: a copy failing against one member stays out ("kept apart" in evidence).

Each stage logs one line (counts and seconds) to the `cmtlib.data.duplicates` logger; where no
handler shows it (the `cmt` command), the line goes to stderr, so a log of a batch job shows it.
A long stage adds a line every PROGRESS_EVERY seconds when stderr is not a terminal.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from cmtlib.data.dupfeatures import HASH_WINDOWS, Candidates, Features, candidate_pairs, features_task, hash_distance, image_features
from cmtlib.data.dupmatch import Thumbs, match_score, score_task, worker_init
from cmtlib.data.workers import die_with_parent
from cmtlib.fileio import atomic_path

__all__ = ["DuplicateResult", "EVIDENCE_COLUMNS", "find_duplicates", "image_features", "match_score", "hash_distance", "read_features"]

HASH_MAX = 10              # candidate hash distance; real copies measured 0-8
MAX_CANDIDATES = 6         # candidates an image keeps, nearest first (module docstring, step 2)
# Hashes read per bucket lookup: a safety valve for collections of many identical films (10^5
# phantoms at 64 px fill buckets of at most 5,600); where it bites, the candidates line says so.
BUCKET_CAP = 1 << 14
# Confirmation threshold by comparison size: (at least this many px on the long side, threshold).
MIN_CORRELATION = ((128, 0.80), (0, 0.90))
EVIDENCE_COLUMNS = ("image_id_a", "image_id_b", "hash_distance", "correlation", "decision", "compared_px", "scale")
PROGRESS_EVERY = 30.0      # seconds between the lines of a long stage
_PARALLEL_MIN = 24         # below this many tasks a pool costs more than it saves
_PARTNERS_PER_TASK = 64    # an image's candidates are confirmed in tasks of at most this many

log = logging.getLogger(__name__)


@dataclass
class DuplicateResult:
    """Groups of image ids that are one picture, and the pairs that decided it."""

    groups: list[tuple[str, ...]]
    evidence: pd.DataFrame
    unreadable: dict[str, str] = field(default_factory=dict)
    n_images: int = 0
    seconds: float = 0.0
    n_compared: int = 0           # candidate pairs confirmed or rejected (merge checks not counted)
    per_image: int | None = None  # the bound on each image's candidates
    at_bound: int = 0             # images that had at least per_image candidates (maybe more)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def write_evidence(self, path: str | os.PathLike) -> Path:
        with atomic_path(path) as tmp:
            self.evidence.to_csv(tmp, index=False)
        return Path(path)


def find_duplicates(images: Mapping[str, str | os.PathLike], *, hash_max: int = HASH_MAX, max_candidates: int | None = MAX_CANDIDATES,
                    min_correlation: float | None = None, workers: int | None = None, progress: bool = True) -> DuplicateResult:
    """Find groups of near-duplicate images.

    Args:
        images: image_id -> image file.
        hash_max: largest hash distance that makes a pair a candidate.
        max_candidates: candidates each image keeps, nearest first; None = all within hash_max
            (time then grows with the square of the images where many share their anatomy).
        min_correlation: one confirmation threshold for every comparison size; None uses
            `MIN_CORRELATION` (0.80 at 128 px, 0.90 for smaller thumbnails).
        workers: processes for reading and matching; None = all CPUs.
        progress: progress bars on a terminal, and the stage lines on stderr where no logging
            handler shows them (module docstring).

    Returns:
        DuplicateResult: groups (sorted tuples of ids, at least two each) and evidence rows
        (`EVIDENCE_COLUMNS`) for every candidate pair, every pair checked for a merge, and every
        unreadable image (decision "unreadable: <reason>").
    """
    start = time.perf_counter()
    ids = list(images)
    workers = workers or os.cpu_count() or 1
    stages: dict[str, float] = {}
    feats, unreadable, stages["features"] = read_features(images, workers=workers, progress=progress)
    ok = [i for i in ids if i in feats]
    hashes = np.stack([feats[i].hashes for i in ok]) if ok else np.zeros((0, len(HASH_WINDOWS)), np.uint64)

    stage = _Stage("candidates", len(ok), "images", progress)
    cand = candidate_pairs(hashes, hash_max, max_candidates, cap=BUCKET_CAP)
    bound = f"at most {max_candidates} per image, nearest first; {cand.at_bound} image(s) reached it" if max_candidates else "no bound per image"
    if cand.capped:
        bound += f"; {cand.capped} image(s) met a bucket of more than {BUCKET_CAP} hashes and saw only its first"
    stages["candidates"] = stage.done(f"{len(cand)} pairs of {len(ok)} images within hash distance {hash_max} ({bound})")

    thumbs = Thumbs([feats[i].thumb for i in ok])
    matches, stages["confirmations"] = _confirm(cand, thumbs, workers, progress, min_correlation)
    scores = {(ok[i], ok[j]): (d, *m) for i, j, d, m in zip(cand.i.tolist(), cand.j.tolist(), cand.distance.tolist(), matches)}

    stage = _Stage("groups", len(scores), "pairs", progress)
    index = {iid: k for k, iid in enumerate(ok)}
    order = {iid: k for k, iid in enumerate(ids)}

    def score(a: str, b: str) -> tuple[int, float, int, float]:
        key = (a, b) if order[a] < order[b] else (b, a)
        if key not in scores:  # a merge check on a pair that was not a candidate
            d = hash_distance(feats[a].hashes, feats[b].hashes)
            scores[key] = (d, *thumbs.score(index[key[0]], index[key[1]]))
        return scores[key]

    def confirmed(a: str, b: str) -> bool:
        _, r, px, _ = score(a, b)
        return r >= _threshold(px, min_correlation)

    groups, apart = _complete_linkage(sorted(scores, key=lambda k: (-scores[k][1], k)), confirmed, score)
    out_groups = sorted(tuple(sorted(g)) for g in groups if len(g) > 1)
    evidence = _evidence(scores, groups, apart, unreadable, order, min_correlation)
    merge_checks = len(scores) - len(cand)
    stages["groups"] = stage.done(f"{len(out_groups)} group(s) of {sum(map(len, out_groups))} images "
                                  f"({len(apart)} confirmed pair(s) kept apart, {merge_checks} merge check(s) beyond the candidates)")
    return DuplicateResult(out_groups, evidence, unreadable, len(ids), time.perf_counter() - start, len(cand),
                           max_candidates, cand.at_bound, stages)


def read_features(images: Mapping[str, str | os.PathLike], *, workers: int | None = None,
                  progress: bool = True) -> tuple[dict[str, Features], dict[str, str], float]:
    """Step 1 (module docstring): (features by image id, unreadable ids with the reason, seconds)."""
    ids = list(images)
    stage = _Stage("features", len(ids), "images", progress)
    feats, unreadable = {}, {}
    paths = [str(images[i]) for i in ids]
    for iid, out in zip(ids, list(stage.track(_pmap(features_task, paths, workers or os.cpu_count() or 1, chunksize=16)))):
        if isinstance(out, str):
            unreadable[iid] = out
        else:
            feats[iid] = out
    return feats, unreadable, stage.done(f"{len(feats)} images hashed, {len(unreadable)} unreadable")


def _confirm(cand: Candidates, thumbs: Thumbs, workers: int, progress: bool,
             min_correlation: float | None) -> tuple[list[tuple[float, int, float]], float]:
    """(match_score of every candidate pair in order, seconds); a task is one image and its next
    partners, so that the image is prepared once (cmtlib.data.dupmatch)."""
    tasks, sizes = [], []
    i, j = cand.i.tolist(), cand.j.tolist()
    runs = np.r_[0, np.flatnonzero(np.diff(cand.i)) + 1, len(i)] if len(i) else np.zeros(1, int)
    for a, b in zip(runs[:-1], runs[1:]):
        for s in range(a, b, _PARTNERS_PER_TASK):
            tasks.append((i[a], j[s:min(b, s + _PARTNERS_PER_TASK)]))
            sizes.append(len(tasks[-1][1]))
    stage = _Stage("confirmations", len(i), "pairs", progress)
    processes = min(workers, len(tasks)) if len(tasks) >= _PARALLEL_MIN else 1
    matches = []
    with tempfile.TemporaryDirectory(prefix="cmt-duplicates-") as tmp:
        if processes > 1:  # workers map the thumbnails from one file instead of each receiving a copy
            packed = Thumbs.pack(thumbs.thumbs, Path(tmp) / "thumbs.npy")
            results = _pmap(score_task, tasks, processes, chunksize=4, init=worker_init, initargs=(packed,))
        else:
            results = ([thumbs.score(a, b) for b in partners] for a, partners in tasks)
        for part in stage.track(results, sizes):
            matches += part
    confirmed = sum(r >= _threshold(px, min_correlation) for r, px, _ in matches)
    return matches, stage.done(f"{len(matches)} pairs compared in {processes} process(es), {confirmed} above the threshold")


def _pmap(fn: Callable, tasks: list, workers: int, chunksize: int, init: Callable | None = None, initargs: tuple = ()) -> Iterator:
    """fn over tasks in order: in a spawned process pool whose workers die with this process
    (cmtlib.data.workers), or in this process when one worker or few tasks will do."""
    if workers <= 1 or len(tasks) < _PARALLEL_MIN:
        if init is not None:
            init(*initargs)
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context, initializer=die_with_parent,
                             initargs=(os.getpid(), init, initargs)) as executor:
        yield from executor.map(fn, tasks, chunksize=max(1, min(chunksize, len(tasks) // (4 * workers))))


class _Stage:
    """One stage's progress: a tqdm bar on a terminal, else a line every PROGRESS_EVERY seconds;
    `done` logs what it did and returns its seconds."""

    def __init__(self, name: str, total: int, unit: str, progress: bool):
        self.name, self.total, self.unit, self.progress = name, total, unit, progress
        self.start = self.last = time.perf_counter()

    def track(self, items: Iterable, sizes: list[int] | None = None) -> Iterator:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total, desc=self.name, unit=self.unit, disable=not self.progress or None)
        done = 0
        try:
            for k, item in enumerate(items):
                step = sizes[k] if sizes is not None else 1
                done += step
                bar.update(step)
                now = time.perf_counter()
                if bar.disable and now - self.last >= PROGRESS_EVERY:
                    self.last = now
                    _say(self.progress, "%s: %d of %d %s, %.0f s", self.name, done, self.total, self.unit, now - self.start)
                yield item
        finally:
            bar.close()

    def done(self, what: str) -> float:
        seconds = time.perf_counter() - self.start
        _say(self.progress, "%s: %s, %.1f s", self.name, what, seconds)
        return seconds


def _say(progress: bool, message: str, *args) -> None:
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(message, *args)
    elif progress:  # nothing shows the log (the `cmt` command): stderr, as a line a batch log keeps
        print("duplicates: " + message % args, file=sys.stderr, flush=True)


def _threshold(px: int, override: float | None) -> float:
    if override is not None:
        return override
    return next(t for size, t in MIN_CORRELATION if px >= size)


def _complete_linkage(pairs: Iterable[tuple[str, str]], confirmed, score) -> tuple[list[set[str]], dict]:
    """Merge along confirmed pairs (strongest first) only where every cross pair is confirmed."""
    group: dict[str, set[str]] = {}
    apart: dict[tuple[str, str], str] = {}
    for a, b in pairs:
        if not confirmed(a, b):
            continue
        ga, gb = group.get(a, {a}), group.get(b, {b})
        if ga is gb:
            continue
        failing = next(((x, y) for x in sorted(ga) for y in sorted(gb) if not confirmed(x, y)), None)
        if failing:
            x, y = failing
            apart[(a, b)] = f"{x} and {y} in the two groups do not match (correlation {score(x, y)[1]:.3f})"
            continue
        merged = ga | gb
        for iid in merged:
            group[iid] = merged
    unique = {id(g): g for g in group.values()}
    return list(unique.values()), apart


def _evidence(scores: dict, groups: list[set[str]], apart: dict, unreadable: dict[str, str], order: dict[str, int],
              min_correlation: float | None) -> pd.DataFrame:
    """One row per pair scored and per unreadable image, in the images' order (EVIDENCE_COLUMNS)."""
    member = {iid: k for k, g in enumerate(groups) for iid in g}
    rows = []
    for (a, b), (d, r, px, s) in scores.items():
        if a in member and member.get(a) == member.get(b):
            decision = "duplicate"
        elif r >= _threshold(px, min_correlation):
            decision = f"kept apart: {apart.get((a, b), 'complete linkage')}"
        else:
            decision = f"not confirmed (correlation < {_threshold(px, min_correlation):.2f})"
        rows.append((a, b, d, round(r, 4), decision, px, round(s, 3)))
    rows += [(iid, "", None, None, f"unreadable: {why}", None, None) for iid, why in unreadable.items()]
    rows.sort(key=lambda r: (order[r[0]], order.get(r[1], -1)))
    return pd.DataFrame(rows, columns=list(EVIDENCE_COLUMNS)).astype(
        {"hash_distance": "Int64", "correlation": float, "compared_px": "Int64", "scale": float})
