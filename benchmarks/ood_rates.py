"""Flag rates of the in-distribution check (issue 22): odd inputs against the run's own test films.

Builds odd inputs itself (benchmarks/odd_inputs.py: masks, noise, photos, negatives, rotated and
lateral-like films, blank images, 16-px thumbnails, and further kinds: documents, CT-like slices,
patterns, zoomed details) from the run's own test films (their original files), from real films in
../shared/data/cxr-public and from nothing, writes each as a PNG and predicts it as `cmt predict`
does (cmtlib.predict.Predictor). An image that read_image refuses (one value in every pixel) counts as
flagged: it is never judged. Beside them, the share of the run's own test films flagged, read from
`cmt evaluate`'s predictions.csv and measured again through the predict path on their files.

    cmt train --params params/default.yaml && cmt evaluate runs/default
    python benchmarks/ood_rates.py runs/default [--films 25] [--real 20] [--out results.json]

The bar (issue 22): >= 95 % of the issue's kinds of odd inputs flagged, <= 5 % of the test films.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from odd_inputs import ISSUE_KINDS, KINDS, odd_inputs

CXR_PUBLIC = Path(os.environ.get("CMT_CXR_PUBLIC", REPO.parent / "shared" / "data" / "cxr-public"))
REAL_GLOBS = ("ieee8023_via_GeneralBlockchain_lungboxes/images/*", "agchung_Figure1/**/*.jpg", "agchung_Actualmed_normals_only/**/*.png",
              "nih_chestxray14/**/*.png")


def real_films(n: int, seed: int) -> list[Path]:
    """Up to n real films from cxr-public, spread over its collections (an empty list when it is absent)."""
    rng = np.random.default_rng(seed)
    per = max(1, n // len(REAL_GLOBS))
    out: list[Path] = []
    for pattern in REAL_GLOBS:
        found = sorted(p for p in CXR_PUBLIC.glob(pattern) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        out += [found[i] for i in sorted(rng.choice(len(found), min(per, len(found)), replace=False))] if found else []
    return out[:n]


def test_files(run, n: int, seed: int) -> tuple[list[Path], list[Path], list[str]]:
    """(up to n of the run's test films' original files, their lung-mask files where the manifest has
    them, the films' image_ids)."""
    from cmtlib.data.loader import open_cache_folder

    index = open_cache_folder(run.cache_dir()).index
    test = index[index["split"] == "test"]
    rows = test.sample(min(n, len(test)), random_state=seed)
    base = Path(str(run.cache_dir()))
    films = [Path(p) if Path(p).is_absolute() else base / p for p in rows["path"]]
    masks = [Path(p) for p in rows.get("lung_mask", []) if isinstance(p, str) and p and Path(p).is_file()]
    kept = [(f, i) for f, i in zip(films, rows["image_id"]) if f.is_file()]
    return [f for f, _ in kept], masks, [i for _, i in kept]


def judge_files(predictor, files: list[Path]) -> list[dict]:
    """Each file's verdict through the predict path: flagged (or refused at reading), reasons, COVID-19 call."""
    from cmtlib.data.io import ImageReadError

    out = []
    for path in files:
        try:
            result, _, _ = predictor.predict(path)
        except ImageReadError as err:
            out.append({"flagged": True, "refused": str(err), "reasons": ["refused at reading"]})
            continue
        verdict = result["in_distribution"]
        out.append({"flagged": verdict["in_distribution"] is False, "reasons": verdict["reasons"], "score": verdict["score"],
                    "p_covid": result["probabilities"]["covid"]})
    return out


def write_odd(pairs: list[tuple[str, np.ndarray]], folder: Path) -> list[tuple[str, Path]]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (kind, image) in enumerate(pairs):
        path = folder / f"{i:04d}-{kind}.png"
        Image.fromarray(image).save(path)
        out.append((kind, path))
    return out


def rates(kinds: list[str], verdicts: list[dict]) -> dict[str, dict]:
    total, flagged = Counter(kinds), Counter(k for k, v in zip(kinds, verdicts) if v["flagged"])
    return {k: {"n": total[k], "flagged": flagged[k], "share": flagged[k] / total[k]} for k in KINDS if total[k]}


def measure(run_dir: Path, n_films: int, n_real: int, seed: int, standalone: int) -> dict:
    from cmtlib.data.io import read_image
    from cmtlib.predict import Predictor

    predictor = Predictor(run_dir)
    run = predictor.run
    films, masks, ids = test_files(run, n_films, seed)
    real = real_films(n_real, seed)
    masks_read = [np.asarray(read_image(m)[0] > 0.5, np.uint8) * 255 for m in masks[:n_films]]
    sources = {"run's test films": films, "real films (cxr-public)": real}
    result: dict = {"run": str(run.path), "share_set": predictor.reference.share, "sources": {}}
    if not predictor.reference.available:
        raise SystemExit(f"{run.path}: the in-distribution check is not available ({predictor.reference.why_not})")
    with tempfile.TemporaryDirectory() as tmp:
        kinds: list[str] = []
        verdicts: list[dict] = []
        for i, (name, files) in enumerate(sources.items()):
            pairs = odd_inputs([read_image(f)[0] for f in files], masks_read if i == 0 else [], seed=seed + i, n_standalone=standalone if i == 0 else 0)
            written = write_odd(pairs, Path(tmp) / f"odd{i}")
            v = judge_files(predictor, [p for _, p in written])
            result["sources"][name] = {"films": len(files), "odd_inputs": len(written), "by_kind": rates([k for k, _ in written], v)}
            kinds += [k for k, _ in written]
            verdicts += v
        result["by_kind"] = rates(kinds, verdicts)
        result["missed"] = Counter(k for k, v in zip(kinds, verdicts) if not v["flagged"])
    result["issue_kinds"] = _share([v for k, v in zip(kinds, verdicts) if k in ISSUE_KINDS])
    result["further_kinds"] = _share([v for k, v in zip(kinds, verdicts) if k not in ISSUE_KINDS])
    as_films = judge_files(predictor, films)
    result["test_films_predict_path"] = _share(as_films)
    result["real_films_as_they_are"] = _share(judge_files(predictor, real))
    evaluated = run.predictions
    if evaluated is not None and "in_distribution" in evaluated.columns:
        flags = evaluated["in_distribution"].dropna()
        result["test_films_evaluate"] = {"n": len(flags), "flagged": int((flags == 0).sum()), "share": float((flags == 0).mean())}
        by_id = dict(zip(evaluated["image_id"], evaluated["in_distribution"] == 0))
        same = [by_id[i] == v["flagged"] for i, v in zip(ids, as_films) if i in by_id]
        result["predict_agrees_with_evaluate"] = {"n": len(same), "same_verdict": int(sum(same))}
    return result


def _share(verdicts: list[dict]) -> dict:
    n, k = len(verdicts), sum(v["flagged"] for v in verdicts)
    return {"n": n, "flagged": k, "share": k / n if n else float("nan")}


def report(r: dict) -> None:
    print(f"run {r['run']}: thresholds set to flag at most {100 * r['share_set']:.0f} % of films like its validation films")
    print(f"{'kind':10s} {'flagged':>9s} {'share':>7s}   (the issue's kinds first)")
    for kind, s in r["by_kind"].items():
        print(f"{kind:10s} {s['flagged']:4d}/{s['n']:<4d} {s['share']:7.1%}" + ("" if kind in ISSUE_KINDS else "   further kind"))
    for key, label in (("issue_kinds", "odd inputs of the issue's kinds"), ("further_kinds", "odd inputs of further kinds"),
                       ("test_films_evaluate", "the run's test films (cmt evaluate)"),
                       ("test_films_predict_path", "the run's test films (their files, the predict path)"),
                       ("real_films_as_they_are", "real films from cxr-public as they are")):
        if key in r:
            s = r[key]
            print(f"{label}: {s['flagged']} of {s['n']} flagged ({s['share']:.1%})")
    if "predict_agrees_with_evaluate" in r:
        a = r["predict_agrees_with_evaluate"]
        print(f"the predict path and cmt evaluate give the same verdict for {a['same_verdict']} of {a['n']} test films")
    if r["missed"]:
        print("missed: " + ", ".join(f"{k} x{n}" for k, n in r["missed"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an evaluated run folder (cmt train, then cmt evaluate)")
    ap.add_argument("--films", type=int, default=25, help="test films of the run to make odd inputs from")
    ap.add_argument("--real", type=int, default=20, help="real films from cxr-public to make odd inputs from")
    ap.add_argument("--standalone", type=int, default=4, help="sets of the kinds made without a film (noise, photo, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    r = measure(Path(a.run), a.films, a.real, a.seed, a.standalone)
    r["machine"] = {"cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}
    report(r)
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
