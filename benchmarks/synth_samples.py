"""Render docs/synthetic_samples.png: a dozen synthetic films with their ground truth.

Each tile shows one film of the default data set (`make_synthetic(seed=0)`'s cohort) with the lung
outline (cyan) and the disease mask's outline (red) drawn from the generator's ground truth, whether or not
that film publishes the mask in the manifest, and a caption: finding, view, source, day.

    python benchmarks/synth_samples.py [--out docs/synthetic_samples.png] [--size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from cmtlib.data.synth.cohort import Case, make_cohort
from cmtlib.data.synth.render import render
from cmtlib.fileio import atomic_path

# (kind, view or None for any, target day or None): healthy PA and AP, COVID early to late, and
# each other disease once.
WANTED = [
    ("healthy", "PA", None), ("healthy", "AP", None), ("covid", None, 2), ("covid", None, 6),
    ("covid", None, 9), ("covid", None, 15), ("consolidation", None, None), ("effusion", None, None),
    ("cardiomegaly", None, None), ("atelectasis", None, None), ("nodule", None, None), ("pneumothorax", None, None),
]


def pick_cases(cases: list[Case]) -> list[Case]:
    """One case per WANTED entry: the first of that kind and view, the COVID ones nearest the day."""
    chosen: list[Case] = []
    for kind, view, day in WANTED:
        pool = [c for c in cases if c.kind == kind and (view is None or c.view == view) and c not in chosen]
        if not pool:
            raise SystemExit(f"no {kind} case in the cohort; use a larger --n")
        if day is not None:
            pool.sort(key=lambda c: (abs(c.day - day), c.index))
        chosen.append(pool[0])
    return chosen


def caption(case: Case) -> str:
    day = "" if case.day is None else f" · day {case.day}"  # healthy films have no day
    return f"{case.finding}\n{case.view} · {case.source}{day}"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "synthetic_samples.png"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=2000, help="cohort size to pick from (as make_synthetic's n)")
    a = parser.parse_args(argv)

    cases = pick_cases(make_cohort(a.n, a.seed))
    fig, axes = plt.subplots(3, 4, figsize=(12, 10.2), dpi=90)
    for ax, case in zip(axes.flat, cases, strict=True):
        film = render(case, a.size, a.seed)
        ax.imshow(film.image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        ax.contour(film.lung, levels=[0.5], colors=["#32d6ff"], linewidths=0.9)
        if film.disease is not None and film.disease.any():
            # Outline only, so the opacity itself stays visible under it.
            ax.contour(film.disease, levels=[0.5], colors=["#ff3030"], linewidths=1.0)
        ax.set_title(caption(case), fontsize=9)
        ax.set_axis_off()
    fig.suptitle("cmtlib synthetic chest films (cyan: lung mask; red: disease mask outline)", fontsize=11)
    fig.tight_layout()
    out = Path(a.out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    # 256 colours hold the grey films and the two outline colours: a third of the RGBA file's size.
    picture = Image.open(buf).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    with atomic_path(out) as tmp:
        picture.save(tmp, format="PNG", optimize=True)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
