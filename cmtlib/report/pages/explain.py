"""Glue of the explanation pages (notebooks 04 and 07): which films the CAM page shows, plain
names for methods and measures, page 7's tables. (Page 8's glue: cmtlib.report.pages.audit.)

Page 7 writes its per-image agreement to `<report_dir>/cam_agreement.csv` (with the run it belongs
to in `cam_agreement.json`); `load_agreement` reads it back for the same run only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmtlib.explain.cam import DEFAULT_METHODS, agreement_summary, cam_comparison
from cmtlib.explain.checks import DEFAULT_LABEL, DISEASE
from cmtlib.explain.map_truth import TARGETS, value
from cmtlib.explain.embeddings import predicted_labels, true_labels
from cmtlib.explain.overlays import load_images, true_class
from cmtlib.fileio import write_json
from cmtlib.runtime import quietly

METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM", "layercam": "LayerCAM",
                "scorecam": "ScoreCAM", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
                "model disease map": "CMTNet's disease map", "disease decoder": "CMTNet's disease map"}
LAYER_NAMES = {"last": "last block", "fused": "blocks 3 and 4 fused", "block2": "block 2", "block3": "block 3", "block4": "block 4"}
DEFAULT_COLUMN = "HiResCAM, blocks 3 and 4 (default)"  # the figure's column of the default map (explain.checks.DEFAULT_MAP)
MEASURE_NAMES = {"mass_in_lung": "share of the map inside the lungs",
                 "pointing_game": "hottest point inside the disease region",
                 "iou_disease": "overlap with the disease region (IoU, map at half its maximum)"}
AGREEMENT_FILE, AGREEMENT_META = "cam_agreement.csv", "cam_agreement.json"


def method_name(key: str) -> str:
    """A method, or a map "method @ layer", in plain words: "HiResCAM, blocks 3 and 4 fused"."""
    method, sep, layer = key.partition(" @ ")
    return f"{METHOD_NAMES.get(method, method)}, {LAYER_NAMES.get(layer, layer)}" if sep else METHOD_NAMES.get(key, key)


def named_maps(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same maps keyed by their display names (figure column titles)."""
    return {method_name(k): v for k, v in maps.items()}


# ---- page 4: embeddings ----------------------------------------------------------------------

def class_frame(frame: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """An EmbeddingMaps frame relabelled with the three classes (COVID-19 / healthy / other disease),
    matched by image_id, so the same map is shown a second time without recomputing it."""
    ids = predictions["image_id"].astype(str).to_numpy()
    true = pd.Series(true_labels(predictions, "class"), index=ids)
    pred = pd.Series(predicted_labels(predictions, "class"), index=ids)
    key = frame["image_id"].astype(str)
    return frame.assign(true=true.reindex(key).to_numpy(), predicted=pred.reindex(key).to_numpy())


def embedding_settings(maps: Any) -> list[tuple[str, Any]]:
    s = maps.settings
    return [("test films mapped", s.get("n")), ("t-SNE perplexity", f"{s.get('perplexity'):.0f}"),
            ("UMAP neighbours", s.get("n_neighbors") if maps.umap_available else "UMAP not run"),
            ("random seed", s.get("seed"))]


# ---- page 7: CAMs ----------------------------------------------------------------------------

def choose_cam_images(index: pd.DataFrame, disease_known: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Positions of `n` films for the CAM page, the same every run: COVID-19 films with a reference
    disease region first (up to half, rounded up: the measures against the disease region need
    them), then the other classes and the remaining COVID-19 films in turn, each group shuffled
    with `seed`.

    Args:
        index: the films' index rows (label_* columns, '' or NaN = unknown).
        disease_known: (N,) bool, True where a non-empty reference disease region exists.
    """
    if n <= 0 or len(index) == 0:
        return np.zeros(0, int)
    rng = np.random.default_rng(seed)
    cls = true_class(index).to_numpy()
    covid_masked = np.flatnonzero((cls == "COVID-19") & np.asarray(disease_known, bool))
    first = list(rng.permutation(covid_masked)[: (n + 1) // 2])
    queues = []
    for c in ("healthy", "other disease", "COVID-19", ""):
        members = [int(i) for i in rng.permutation(np.flatnonzero(cls == c)) if i not in first]
        if members:
            queues.append(members)
    picked = [int(i) for i in first]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return np.asarray(picked, int)


def cam_images(cache_dir: str | Path, n: int, seed: int = 0, split: str = "test"):
    """The `choose_cam_images` films of a cache's split as an ImageSet (cmtlib.explain.overlays)."""
    data = load_images(cache_dir, split)
    known = data.has_disease & data.disease.any(axis=(1, 2))
    return data.take(choose_cam_images(data.index, known, n, seed))


def cam_titles(data: Any) -> list[str]:
    """'image_id\\nclass' per film of an ImageSet."""
    cls = true_class(data.index).replace("", "class unknown")
    return [f"{i}\n{c}" for i, c in zip(data.image_ids, cls)]


def cam_films_table(data: Any, predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """The CAM page's films in row order: image, class, reference disease region, COVID-19
    probability (from predictions.csv, matched by image_id, when given)."""
    out = pd.DataFrame({"row": np.arange(1, len(data.image_ids) + 1), "image": data.image_ids,
                        "class": true_class(data.index).replace("", "unknown").to_numpy(),
                        "reference disease region": np.where(data.has_disease & data.disease.any(axis=(1, 2)), "yes",
                                                             np.where(data.has_disease, "none", "unknown"))})
    if predictions is not None and {"image_id", "p_covid"} <= set(predictions.columns):
        p = pd.to_numeric(predictions.set_index(predictions["image_id"].astype(str))["p_covid"], errors="coerce")
        out["COVID-19 probability"] = p.reindex(out["image"]).to_numpy()
    return out


def compare_cams(model: Any, data: Any, methods=None):
    """cam_comparison on an ImageSet, progress bars and library warnings kept off the page, the
    methods renamed to their display names (so page 8's verdict names them alike)."""
    result = quietly(cam_comparison, model, data.images, data.lung, data.disease, data.has_lung, data.has_disease,
                     data.image_ids, methods=tuple(methods or DEFAULT_METHODS))
    result.per_image["method"] = result.per_image["method"].map(method_name)
    result.summary.index = [method_name(k) for k in result.summary.index]
    result.maps = named_maps(result.maps)
    result.seconds_per_image = {method_name(k): v for k, v in result.seconds_per_image.items()}
    return result


def gradcam_columns(cmtnet_maps: dict[str, np.ndarray], baseline_maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CMTNet's Grad-CAM first, then each baseline's, keyed by figure column titles.

    Shape:
        every map: (N, H, W) in [0, 1], the same films in the same order.
    """
    columns = {"CMTNet Grad-CAM": cmtnet_maps[method_name("gradcam")]}
    columns.update({f"{label} Grad-CAM": maps for label, maps in baseline_maps.items()})
    return columns


def agreement_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd (films where defined) of each agreement measure by method, with plain names."""
    table = agreement_summary(per_image, formatted=True).rename(columns=MEASURE_NAMES)
    return table.rename_axis("map").reset_index()


def uniform_text(per_image: pd.DataFrame) -> str:
    """The share of an even map inside the lungs, as the sentence under the agreement table."""
    share = uniform_share(per_image)
    if math.isnan(share):
        return "No film here has a reference lung outline, so the share inside the lungs cannot be judged."
    return (f"A map spread evenly over the film would put {100 * share:.0f} % of itself inside the lungs: a method must "
            "do clearly better than that to show that it looks at the lungs.")


def uniform_share(per_image: pd.DataFrame) -> float:
    """What a map spread evenly over the image puts inside the lungs: the lungs' mean share of it."""
    if "lung_area" not in per_image.columns:
        return math.nan
    area = pd.to_numeric(per_image.drop_duplicates("image_id")["lung_area"], errors="coerce")
    return float(area.mean()) if area.notna().any() else math.nan


def cost_table(seconds: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"map": list(seconds), "seconds per film (this machine)": [round(v, 3) for v in seconds.values()]})


def save_agreement(report_dir: str | Path, run_dir: str | Path, per_image: pd.DataFrame) -> None:
    """Page 7's per-image agreement for page 8 (returns None: nothing shows on the page)."""
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    per_image.to_csv(folder / AGREEMENT_FILE, index=False)
    write_json(folder / AGREEMENT_META, {"run_dir": str(Path(run_dir).resolve())})


def load_agreement(report_dir: str | Path, run_dir: str | Path) -> pd.DataFrame | None:
    """Page 7's table when it is in report_dir and belongs to run_dir, else None."""
    folder = Path(report_dir)
    if not (folder / AGREEMENT_FILE).is_file() or not (folder / AGREEMENT_META).is_file():
        return None
    meta = json.loads((folder / AGREEMENT_META).read_text(encoding="utf-8"))
    if meta.get("run_dir") != str(Path(run_dir).resolve()):
        return None
    return pd.read_csv(folder / AGREEMENT_FILE, dtype={"image_id": str})


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


# ---- page 7: the checks against truth (cmtlib.explain.checks) -------------------------------

def _ci(estimate: Any, low: Any, high: Any, fmt: str = "{:.2f}") -> str:
    """'0.86 (0.74 to 0.97)'; '–' without an estimate, no interval where it is undefined."""
    estimate, low, high = _f(estimate), _f(low), _f(high)
    if math.isnan(estimate):
        return "–"
    return fmt.format(estimate) + ("" if math.isnan(low) or math.isnan(high) else f" ({fmt.format(low)} to {fmt.format(high)})")


def reliance_table(summary: dict) -> pd.DataFrame:
    """Reliance by group: films, median drop with its interval, mean drop."""
    rows = []
    for group, words in (("later", "past day 3"), ("early", "days 0-3 (faint)"), ("all", "all")):
        r = summary[group]
        rows.append({"COVID-19 films with a lesion": words, "films": r["n"],
                     "median drop of the COVID-19 probability (95 % CI)": _ci(r["median"], r["ci_low"], r["ci_high"]),
                     "mean drop": "–" if r["n"] == 0 else f"{r['mean']:.2f}"})
    return pd.DataFrame(rows)


def not_read_text(summary: dict, limit: int = 12) -> str:
    """The films whose lesion the network does not read (drop below NOT_READ), named."""
    from cmtlib.explain.reliance import NOT_READ

    ids = summary["not_read"]
    if not ids:
        return f"On every film the lesion's removal lowers the COVID-19 probability by at least {NOT_READ:.1f}."
    shown = ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
    return (f"{len(ids)} film(s) whose COVID-19 probability moves by less than {NOT_READ:.1f} when the lesion is removed (the "
            f"network does not read their lesion; most are early, faint films): {shown}.")


def truth_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per map: the later films' pointing, share on the lesion (times an even map's) and overlap, each with
    its interval; the early films' pointing."""
    from cmtlib.explain.map_truth import TARGETS

    rows = []
    for name in dict.fromkeys(summary["map"]):
        def cell(measure, group="later"):
            hit = summary[(summary["map"] == name) & (summary["group"] == group) & (summary["measure"] == measure)]
            return _ci(hit["mean"].iloc[0], hit["ci_low"].iloc[0], hit["ci_high"].iloc[0]) if len(hit) else "–"
        point = summary[(summary["map"] == name) & (summary["group"] == "later") & (summary["measure"] == "pointing")]
        ratio = summary[(summary["map"] == name) & (summary["group"] == "later") & (summary["measure"] == "ratio")]
        shows = len(point) and len(ratio) and point["mean"].iloc[0] >= TARGETS["pointing"] and ratio["mean"].iloc[0] >= TARGETS["ratio"]
        rows.append({"map": method_name(name), "films past day 3": int(point["n"].iloc[0]) if len(point) else 0,
                     "hottest point inside the lesion": cell("pointing"),
                     "share on the lesion, times an even map's": cell("ratio"), "overlap with the lesion (IoU)": cell("iou"),
                     "hottest point inside, days 0-3": cell("pointing", "early"),
                     "shows the lesion": "yes" if shows else "no"})
    return pd.DataFrame(rows)


def faithfulness_table(summary: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"map": summary["map"].map(method_name), "films": summary["n"],
                         "ROAD score of the map": summary["road"].round(3), "ROAD score of a random ordering": summary["road_random"].round(3),
                         "gain over random (95 % CI)": [_ci(g, lo, hi, "{:.3f}") for g, lo, hi in zip(summary["gain"], summary["ci_low"], summary["ci_high"])],
                         "faithful": np.where(summary["faithful"], "yes", "no")})


def randomisation_table(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"weights replaced by random ones": table["randomised"].str.replace("heads", "the heads", regex=False),
                         "median rank correlation with the map of the trained network": table["median_spearman"].round(2),
                         "films": table["n"]})


def checks_verdicts(summary: dict) -> list[str]:
    """Plain sentences: does the network read the lesion, which maps show it, is the default map
    faithful and does it pass the randomisation check."""
    out = []
    rel = summary["reliance"]
    if rel is not None:
        later = rel["later"]
        reads = "reads the lesion" if rel["reads_lesion"] else "does not rely on the lesion alone"
        out.append(f"Removing only the lesion from a film (its twin) lowers the COVID-19 probability by {later['median']:.2f} on the median "
                   f"film past day 3 ({later['n']} films; 95 % CI {later['ci_low']:.2f} to {later['ci_high']:.2f}): the network {reads}.")
    maps = summary["maps"]
    if maps is not None:
        passed = [name for name in dict.fromkeys(maps["map"]) if name != DISEASE
                  and all(value(maps, name, m) >= bar for m, bar in TARGETS.items())]
        out.append("Maps whose hottest point lies inside the lesion on at least 70 % of the films past day 3, with at least three "
                   "times an even map's share on the lesion: " + ("; ".join(method_name(p) for p in passed) if passed else "none") + ".")
    faith = summary["faithfulness"].set_index("map").loc[DEFAULT_LABEL]
    out.append(f"The default map ({method_name(DEFAULT_LABEL)}) is {'faithful' if faith['faithful'] else 'not shown to be faithful'}: removing the "
               f"pixels it ranks highest lowers the COVID-19 probability more than removing random pixels (gain {faith['gain']:.2f}, "
               f"95 % CI {faith['ci_low']:.2f} to {faith['ci_high']:.2f}, {int(faith['n'])} films).")
    out.append("With every weight of the classifier replaced by random ones the default map "
               + ("changes, as it should: it shows what the network learned." if summary["randomisation_passed"]
                  else "barely changes: it shows the film's structure more than what the network learned."))
    return out
