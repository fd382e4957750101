"""The comparison page (09_baselines) and the baselines' Grad-CAMs of the CAM page (07): tables and
figures of a finished comparison (cmtlib.experiments.comparison trains it). Images are named by
image_id only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cmtlib.data.cache import open_cache
from cmtlib.experiments.baselines import metrics_row
from cmtlib.experiments.comparison import ROLES, Comparison, Entry
from cmtlib.explain.cam import compute_cams
from cmtlib.explain.overlays import load_images, predict_masks
from cmtlib.metrics import dice, roc_auc, roc_curve
from cmtlib.metrics.operating import describe_rule
from cmtlib.plotting import DISEASE_COLOUR, LUNG_COLOUR, OKABE_ITO, PALETTE, new_figure, style
from cmtlib.report.pages.tables import ci_text, get_path
from cmtlib.run import Run

CLASSIFICATION_COLUMNS = (("covid.sens_at_spec99", "COVID-19 sensitivity at 99 % specificity"), ("covid.auc", "COVID-19 AUC"),
                          ("covid.eer", "equal error rate"), ("covid.accuracy", "COVID-19 accuracy"))
SEGMENTATION_COLUMNS = (("lung.dice", "lung Dice"), ("lung.iou", "lung IoU"), ("disease.dice", "disease Dice"),
                        ("disease.iou", "disease IoU"))


def decision_rule(comp: Comparison) -> str:
    """The threshold rule every compared classifier decided COVID-19 by ('' when none is recorded):
    the report's run's, which the deep baselines inherit and the embedding classifiers apply."""
    rules = {Run(e.folder).info.threshold_rule for e in comp.select("cmtnet", "classifier")} - {""}
    return ", ".join(sorted(rules))


def method_text(comp: Comparison) -> str:
    """How every method was trained and scored, in one paragraph."""
    n_test = len(comp.entries[0].predictions())
    deep = [e for e in comp.select("classifier", "segmentation")]
    rule = decision_rule(comp)
    decides = (f" Every classifier, CMTNet included, calls a film COVID-19 at a threshold chosen on its own validation films by "
               f"one rule: {describe_rule(rule)} (`{rule}`)." if rule and "," not in rule else "")
    return (f"{len(comp.select(*ROLES))} methods are compared on the same {n_test} test films. "
            + (f"The {len(deep)} other networks were trained by the same training program as CMTNet, on the same films, "
               "the same split into training, validation and test films (by patient) and the same image augmentation, "
               "and scored with the same measures. " if deep else "")
            + "The embedding classifiers (SVMs and a random forest) learned from the features CMTNet computes for each "
              "film, on the training films, with their settings chosen on the validation films." + decides)


# ---- tables ----------------------------------------------------------------------------------

def rows_frame(entries: list[Entry]) -> pd.DataFrame:
    """One numeric row per entry (cmtlib.experiments.baselines.metrics_row: value, _ci_low, _ci_high columns)."""
    return pd.DataFrame([metrics_row(e.label, e.metrics(), key=e.key, role=e.role, seed=e.seed, setting=e.setting, init=e.init)
                         for e in entries])


def _table(entries: list[Entry], columns) -> pd.DataFrame:
    rows = []
    for e in entries:
        m = e.metrics()
        row = {"method": e.label, "trained at": e.setting, "starting weights": e.init}
        for key, name in columns:
            section, metric = key.split(".")
            block = get_path(m, section) or {}
            row[name] = ci_text(block.get(metric), block.get(f"{metric}_ci_low"), block.get(f"{metric}_ci_high"))
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "trained at", "starting weights", *(n for _, n in columns)])


def _order(comp: Comparison, roles: tuple[str, ...]) -> list[Entry]:
    """Deep baselines, then CMTNet at their setting, then the embedding classifiers, then the run."""
    rank = {"classifier": 0, "segmentation": 0, "embedding": 2}
    return sorted(comp.select(*roles), key=lambda e: (3 if e.key == "cmtnet-run" else (1 if e.role == "cmtnet" else rank[e.role])))


def classification_table(comp: Comparison) -> pd.DataFrame:
    """Table IV: COVID-19 sensitivity at 99 % specificity, AUC, EER and accuracy, each with its 95 % CI;
    with several seeds, the spread of the sensitivity over them."""
    entries = _order(comp, ("cmtnet", "classifier", "embedding"))
    table = _table(entries, CLASSIFICATION_COLUMNS)
    if len(comp.seeds) > 1:
        table["sensitivity over seeds"] = [seed_spread_text(comp, e.label) for e in entries]
    return table


def segmentation_table(comp: Comparison) -> pd.DataFrame:
    """Lung and disease Dice and IoU (95 % CIs) of the segmentation baselines and CMTNet's decoders."""
    return _table(_order(comp, ("cmtnet", "segmentation")), SEGMENTATION_COLUMNS)


def seed_values(comp: Comparison, label: str, key: str = "covid.sens_at_spec99") -> list[float]:
    return [float(v) for e in comp.entries if e.label == label and (v := get_path(e.metrics(), key)) is not None]


def seed_spread_text(comp: Comparison, label: str) -> str:
    v = seed_values(comp, label)
    if len(v) < 2:
        return "one seed"
    return f"mean {np.mean(v):.3f}, SD {np.std(v, ddof=1):.3f} ({len(v)} seeds)"  # the paper's Fig. 7 gives the SD


def timing_caption(comp: Comparison) -> str:
    total = sum(e.seconds or 0 for e in comp.entries)
    return (f"Seconds each method took to train and score on the machine that made this report ({total:.0f} s in all); "
            "a method trained earlier, for another page, is reused rather than trained again. The embedding classifiers "
            "share their time equally; an empty cell was not recorded.")


def timing_table(comp: Comparison) -> pd.DataFrame:
    """Seconds each method took here (training and evaluation); '' where it was made earlier."""
    return pd.DataFrame([{"method": e.label, "seed": e.seed, "seconds": "" if e.seconds is None else f"{e.seconds:.0f}"}
                         for e in comp.entries if e.key != "cmtnet-run"])


# ---- figures ---------------------------------------------------------------------------------

def seed_figure(comp: Comparison, dpi: int = 110):
    """Fig. 7: COVID-19 sensitivity at 99 % specificity of each method of Table IV (one row each), one
    dot per training seed (the embedding classifiers: per seed of the CMTNet whose embeddings they
    use); with a single seed, the 95 % interval of that run as a grey bar."""
    entries = _order(comp, ("cmtnet", "classifier", "embedding"))
    colours = {"cmtnet": OKABE_ITO["vermillion"], "classifier": OKABE_ITO["blue"], "embedding": OKABE_ITO["green"]}
    with style(dpi):
        fig, axes = new_figure(1, 1, width=7.0, height=0.45 * len(entries) + 1.2, dpi=dpi)
        ax = axes[0, 0]
        for i, e in enumerate(entries):
            values = seed_values(comp, e.label)
            c = e.metrics().get("covid") or {}
            if len(values) == 1 and c.get("sens_at_spec99_ci_low") is not None:
                ax.plot([c["sens_at_spec99_ci_low"], c["sens_at_spec99_ci_high"]], [i, i], color=OKABE_ITO["grey"], lw=6, alpha=0.45)
            ax.plot(values, np.full(len(values), i), "o", color=colours[e.role], ms=7, alpha=0.85)
        ax.set_yticks(range(len(entries)), [e.label for e in entries])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("COVID-19 sensitivity at 99 % specificity")
        ax.set_title(f"One dot per training seed ({len(comp.seeds)} seed{'s' if len(comp.seeds) > 1 else ''})", fontsize=10)
    return fig


def seed_caption(comp: Comparison) -> str:
    if len(comp.seeds) >= 3:
        return (f"Each dot is one training of the network with another random seed ({len(comp.seeds)} seeds): how far "
                "the dots spread shows how much the result depends on chance in training, as in the paper's Fig. 7.")
    return ("Each dot is one training of the network; this report trained each network once, so the spread between "
            "trainings cannot be shown: it needs at least 3 seeds, as params/paper.yaml runs on a GPU. The grey bar is the "
            "95 % confidence range of that single training, which reflects the number of test films, not chance in training.")


def roc_comparison_figure(comp: Comparison, dpi: int = 110):
    """Fig. 8: COVID-19 ROC curves on the test films; left the deep networks, right the classifiers on
    CMTNet's embedding (with the CMTNet run whose embedding they use, dashed)."""
    run = [e for e in comp.entries if e.key == "cmtnet-run"]
    panels = (("Deep networks", [e for e in _order(comp, ("cmtnet", "classifier")) if e.key != "cmtnet-run"] or run),
              ("Classifiers on CMTNet's embedding", _order(comp, ("embedding",))))
    with style(dpi):
        fig, axes = new_figure(1, 2, width=4.6, height=4.2, dpi=dpi)
        for ax, (title, entries) in zip(axes[0], panels):
            for i, e in enumerate(entries + (run if title.startswith("Classifiers") else [])):
                df = e.predictions()
                y, s = pd.to_numeric(df["label_covid"], errors="coerce"), pd.to_numeric(df["p_covid"], errors="coerce")
                keep = (y.notna() & s.notna()).to_numpy()
                if keep.sum() == 0 or len(np.unique(y[keep])) < 2:
                    continue
                fpr, tpr, _ = roc_curve(y[keep].to_numpy(), s[keep].to_numpy())
                dashed = e.key == "cmtnet-run" and title.startswith("Classifiers")
                ax.plot(fpr, tpr, drawstyle="steps-post", lw=2 if e.role == "cmtnet" else 1.3, ls="--" if dashed else "-",
                        color=OKABE_ITO["black"] if e.role == "cmtnet" else PALETTE[i % len(PALETTE)],
                        label=f"{e.label} (AUC {roc_auc(y[keep].to_numpy(), s[keep].to_numpy()):.3f})")
            ax.plot([0, 1], [0, 1], color=OKABE_ITO["grey"], lw=0.8)
            ax.axvline(0.01, color=OKABE_ITO["grey"], ls=":", lw=1)
            ax.set(xlabel="false-positive rate (1 - specificity)", ylabel="sensitivity", title=title, ylim=(0, 1.02))
            ax.legend(loc="lower right", fontsize=7)
    return fig


@dataclass
class OverlaySet:
    """Test films with reference masks and each segmentation method's predicted probabilities."""

    images: np.ndarray  # (N, S, S) uint8, from the report's run's cache
    true: dict[str, np.ndarray]  # task -> (N, S, S) bool
    predicted: dict[str, dict[str, np.ndarray]]  # method label -> task -> (N, S, S) float in [0, 1], resized to S
    dice: dict[str, dict[str, np.ndarray]]  # method label -> task -> (N,) Dice at the method's own image size
    image_ids: list[str]


def choose_films(index: pd.DataFrame, has_region: np.ndarray, n: int = 4, seed: int = 0) -> list[str]:
    """Test films with both reference masks and a disease region: half COVID-19 and half other disease
    where there are enough, else any such film; a seeded choice, in image_id order."""
    ok = ((index["split"] == "test") & (index["has_lung"] == "1") & (index["has_disease"] == "1")).to_numpy() & has_region
    rng = np.random.default_rng(seed)
    picked: list[str] = []
    for label, k in (("label_covid", n - n // 2), ("label_other", n // 2), ("", n)):
        pool = sorted(set(index.loc[ok & ((index[label] == "1").to_numpy() if label else True), "image_id"].astype(str)) - set(picked))
        k = min(k, n - len(picked), len(pool))
        picked += [str(i) for i in rng.choice(pool, size=k, replace=False)] if k > 0 else []
    return sorted(picked)


def overlay_set(comp: Comparison, n: int = 4, seed: int = 0) -> OverlaySet:
    """Figs. 5-6: the same test films (``choose_films``) through every segmentation baseline and CMTNet,
    each model on the films of its own cache (its own image size), shown at the report run's size."""
    seg = _order(comp, ("cmtnet", "segmentation"))
    index, _, _, disease, _ = open_cache(_cache(seg[-1]))
    ids = choose_films(index, np.asarray(disease).reshape(len(index), -1).any(1), n, seed)
    shown = load_images(_cache(seg[-1]), image_ids=ids)
    predicted, scores = {}, {}
    for e in seg:
        films = load_images(_cache(e), image_ids=ids)
        probs = predict_masks(_model(e)[0], films.images)
        predicted[e.label] = {k: _resized(v, shown.images.shape[-1]) for k, v in probs.items()}
        scores[e.label] = {k: dice(v >= 0.5, getattr(films, k)) for k, v in probs.items()}
    return OverlaySet(shown.images, {"lung": shown.lung, "disease": shown.disease}, predicted, scores, shown.image_ids)


def _cache(e: Entry) -> Path:
    return Run.open(e.folder).cache_dir()


def _model(e: Entry):
    """(the entry's best model on the CPU, its input side)."""
    model, meta = Run.open(e.folder).load_model("best", "cpu")
    return model, int(meta["preprocessing"]["input_size"][0])


def _resized(a: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) arrays resized to (N, size, size): bilinear, uint8 kept uint8."""
    if a.shape[-1] == size:
        return a
    t = F.interpolate(torch.as_tensor(np.asarray(a, dtype=np.float32))[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return t.round().clamp(0, 255).numpy().astype(np.uint8) if a.dtype == np.uint8 else t.numpy()


def overlay_figure(data: OverlaySet, task: str = "lung", dpi: int = 110):
    """One row per film; columns: the reference outline, then each method's (p >= 0.5) with its Dice
    (at the method's own image size, as in the segmentation table)."""
    methods = [m for m, p in data.predicted.items() if task in p]
    colour = LUNG_COLOUR if task == "lung" else DISEASE_COLOUR
    with style(dpi):
        fig, axes = new_figure(len(data.images), 1 + len(methods), width=2.2, height=2.35, dpi=dpi)
        for r, img in enumerate(data.images):
            for c, name in enumerate(["reference", *methods]):
                ax = axes[r, c]
                ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
                ax.set_axis_off()
                mask = data.true[task][r] if c == 0 else data.predicted[name][task][r] >= 0.5
                if mask.any():
                    ax.contourf(mask.astype(float), levels=[0.5, 1.5], colors=[colour], alpha=0.35)
                    ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
                score = "" if c == 0 else f"\nDice {data.dice[name][task][r]:.2f}"
                head = (name if r == 0 or c == 0 else "").replace(", ", ",\n").replace(" (", "\n(")
                ax.set_title((f"{data.image_ids[r]}\n" if c == 0 else "") + head + score, fontsize=7)
    return fig


# ---- Grad-CAM of the classification baselines (for page 07) -------------------------------------

def baseline_cams(comp: Comparison, images, target_index: int = 0, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Grad-CAM of the COVID-19 logit (``target_index`` 0 of ``multilabel``) of each trained
    classification baseline (first seed) on ``images``, each at the baseline's own input size and
    brought back to the images' size.

    Shape:
        images: (N, H, W) uint8 or float in [0, 1] (H == W); returns label -> (N, H, W) float32 in [0, 1].
    """
    images = np.asarray(images)
    out = {}
    for e in comp.select("classifier"):
        model, size = _model(e)
        x = _resized(images if images.dtype == np.uint8 else images.astype(np.float32), size)
        maps = compute_cams(model, x, methods=("gradcam",), target_index=target_index, batch_size=batch_size)["gradcam"]
        out[e.label] = np.clip(_resized(maps, images.shape[-1]), 0, 1).astype(np.float32)
    return out
