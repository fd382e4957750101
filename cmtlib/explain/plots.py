"""Figures of the evaluation and explanation pages (3-8): arrays / DataFrames in, a Figure out.

Built in the project's figure style (cmtlib.plotting: Okabe-Ito colours, object API, no pyplot).
Images are titled by image_id only, never by file path or file name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cmtlib.explain.cam import MEASURES
from cmtlib.explain.review import confusion_matrices, group_confusion_table, known_covid
from cmtlib.metrics import reliability_curve, roc_auc, roc_curve, sensitivity_at, specificity_at
from cmtlib.plotting import OKABE_ITO, fit_title, new_figure, styled

LABEL_COLOURS = {"COVID-19": OKABE_ITO["vermillion"], "non-COVID": OKABE_ITO["blue"], "healthy": OKABE_ITO["green"],
                 "other disease": OKABE_ITO["blue"], "(unknown)": OKABE_ITO["grey"]}
LUNG, DISEASE = OKABE_ITO["sky"], OKABE_ITO["vermillion"]


def _image(ax, img) -> None:
    img = np.asarray(img)
    ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1, interpolation="bilinear")
    ax.set_axis_off()


# ---- page 3: evaluation ----------------------------------------------------------------------

@styled
def roc_figure(y, scores, threshold: float | None = None, name: str = "model", others: dict | None = None, dpi: int = 110):
    """ROC (left) and the same with a log false-positive axis (right, where 99 % specificity lives),
    the operating point at ``threshold`` marked with its sensitivity and specificity.

    Shape:
        y: (N,) 0/1; scores: (N,); others: name -> (y, scores) drawn as extra curves.
    """
    fig, axes = new_figure(1, 2, width=4.2, height=3.8, dpi=dpi)
    curves = {name: (y, scores), **(others or {})}
    for i, (label, (yy, ss)) in enumerate(curves.items()):
        fpr, tpr, _ = roc_curve(yy, ss)
        for ax in axes[0]:
            ax.plot(fpr, tpr, drawstyle="steps-post", lw=2 if i == 0 else 1.2, label=f"{label} (AUC {roc_auc(yy, ss):.3f})")
    if threshold is not None and not math.isnan(threshold):
        sens, spec = sensitivity_at(y, scores, threshold), specificity_at(y, scores, threshold)
        for ax in axes[0]:
            ax.plot([1 - spec], [sens], "o", ms=8, mfc="none", mew=2, color=OKABE_ITO["black"],
                    label=f"threshold {threshold:.3g}: sens {sens:.2f}, spec {spec:.3f}")
    for ax in axes[0]:
        ax.axvline(0.01, color=OKABE_ITO["grey"], ls=":", lw=1)
        ax.set_xlabel("false-positive rate (1 - specificity)")
        ax.set_ylabel("sensitivity")
        ax.set_ylim(0, 1.02)
    axes[0, 0].plot([0, 1], [0, 1], color=OKABE_ITO["grey"], lw=0.8)
    axes[0, 0].set_title("ROC")
    axes[0, 1].set_xscale("log")
    axes[0, 1].set_xlim(1e-3, 1)
    axes[0, 1].set_title("log false-positive rate (dotted: 1 %)")
    axes[0, 0].legend(loc="lower right", fontsize=8)
    return fig


@styled
def confusion_figure(matrices: dict, labels=("negative", "positive"), ncols: int = 4, dpi: int = 110):
    """One 2 x 2 count table per entry ([[tn, fp], [fn, tp]]: rows truth, columns prediction).

    Args:
        matrices: title -> (2, 2) counts (e.g. ``confusion_matrices`` output); many = small multiples.
        labels: (negative, positive) names, or title -> such a pair.
    """
    n = max(len(matrices), 1)
    ncols = min(ncols, n)
    fig, axes = new_figure(-(-n // ncols), ncols, width=2.9, height=2.7, dpi=dpi)
    for ax, (title, m) in zip(axes.flat, matrices.items()):
        m = np.asarray(m)
        names = labels.get(title, ("negative", "positive")) if isinstance(labels, dict) else labels
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=12,
                    color="white" if v > 0.6 * max(m.max(), 1) else "black")
        ax.set_xticks([0, 1], names)
        ax.set_yticks([0, 1], names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.grid(False)
        ax.set_title(f"{title} (n={int(m.sum())})", fontsize=10)
    for ax in list(axes.flat)[len(matrices):]:
        ax.set_axis_off()
    return fig


CONFUSION_LABELS = {"COVID-19": ("non-COVID", "COVID-19"), "healthy / unhealthy": ("unhealthy", "healthy")}


GROUP_KEYS = (("covid.auc", "COVID-19 AUC"), ("covid.sens_at_spec99", "sens. at 99 % spec."), ("covid.accuracy", "COVID-19 acc."),
              ("healthy.accuracy", "healthy acc."), ("lung.dice", "lung Dice"), ("disease.dice", "disease Dice"),
              ("calibration.ece", "ECE"))


def group_table(metrics: dict, by: str = "view", keys=GROUP_KEYS, formatted: bool = True) -> pd.DataFrame:
    """metrics.json's ``by_view`` / ``by_source`` as a table: one row per group, counts, then each key.

    Returns:
        with ``formatted``: text cells "0.95 (0.91-0.98)" ('' where null); else the value plus
        ``<label> low`` / ``<label> high`` columns.
    """
    groups = metrics.get(f"by_{by}")
    if groups is None:
        raise KeyError(f"metrics has no by_{by}; metrics.json from cmtlib.metrics.metrics_from_predictions holds by_view and by_source")
    rows = []
    for g, m in groups.items():
        row = {by: g, "images": m.get("counts", {}).get("n_images"), "COVID-19": m.get("counts", {}).get("n_covid")}
        for key, label in keys:
            sec, name = key.split(".")
            d = m.get(sec) or {}
            v, lo, hi = (d.get(name), d.get(f"{name}_ci_low"), d.get(f"{name}_ci_high"))
            v, lo, hi = (math.nan if x is None else float(x) for x in (v, lo, hi))
            if formatted:
                row[label] = "" if math.isnan(v) else f"{v:.3f}" + ("" if math.isnan(lo) else f" ({lo:.3f}-{hi:.3f})")
            else:
                row.update({label: v, f"{label} low": lo, f"{label} high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


@styled
def reliability_figure(curve, ece: float, dpi: int = 110):
    """Reliability diagram (mean predicted vs observed COVID-19 rate per bin) above the bin counts.

    Args:
        curve: ``cmtlib.metrics.reliability_curve`` output (centres, mean_predicted, observed, counts).
        ece: the expected calibration error, shown in the title.
    """
    fig, axes = new_figure(2, 1, width=4.4, height=2.2, dpi=dpi, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax, cnt = axes[0, 0], axes[1, 0]
    ax.plot([0, 1], [0, 1], color=OKABE_ITO["grey"], lw=0.8, label="perfect calibration")
    ok = np.asarray(curve.counts) > 0
    ax.plot(np.asarray(curve.mean_predicted)[ok], np.asarray(curve.observed)[ok], "o-", color=OKABE_ITO["blue"], label="model")
    ax.set_ylabel("observed COVID-19 rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    width = 1.0 / max(len(curve.counts), 1)
    cnt.bar(curve.centres, curve.counts, width=width * 0.9, color=OKABE_ITO["grey"])
    cnt.set_xlabel("predicted COVID-19 probability")
    cnt.set_ylabel("images")
    cnt.set_xlim(0, 1)
    return fig


def evaluation_figures(predictions: pd.DataFrame, metrics: dict, threshold: float | None = None, dpi: int = 110) -> dict:
    """Page 3 entry point: every figure and table of the evaluation page from predictions.csv rows
    and metrics.json (threshold: metrics' covid.threshold unless given).

    Returns:
        dict: roc, confusion, confusion_by_view, confusion_by_source, reliability (Figures; None
        without both classes), by_view, by_source, confusion_table_by_view, confusion_table_by_source
        (DataFrames).
    """
    if threshold is None:
        t = (metrics.get("covid") or {}).get("threshold")
        threshold = math.nan if t is None else float(t)
    y, p = known_covid(predictions)
    both = 0 < y.sum() < len(y)
    ece = (metrics.get("calibration") or {}).get("ece")
    out = {"roc": roc_figure(y, p, threshold, dpi=dpi) if both else None,
           "confusion": confusion_figure(confusion_matrices(predictions, threshold), CONFUSION_LABELS, dpi=dpi),
           "reliability": reliability_figure(reliability_curve(y, p), math.nan if ece is None else float(ece), dpi=dpi) if len(y) else None}
    for by in ("view", "source"):
        out[f"confusion_by_{by}"] = confusion_figure(confusion_matrices(predictions, threshold, by), CONFUSION_LABELS["COVID-19"], dpi=dpi)
        out[f"confusion_table_by_{by}"] = group_confusion_table(predictions, by, threshold)
        out[f"by_{by}"] = group_table(metrics, by) if f"by_{by}" in metrics else pd.DataFrame()
    return out

# ---- page 4: embeddings ----------------------------------------------------------------------

@styled
def embedding_figure(frame: pd.DataFrame, dpi: int = 110):
    """The paper's Fig. 10: t-SNE (and UMAP when present) coloured by true and by predicted label.

    Args:
        frame: ``EmbeddingMaps.frame`` (true, predicted, tsne_x, tsne_y, umap_x, umap_y).
    """
    maps = [m for m in ("tsne", "umap") if f"{m}_x" in frame.columns and frame[f"{m}_x"].notna().any()]
    fig, axes = new_figure(len(maps), 2, width=4.0, height=3.6, dpi=dpi)
    order = sorted(set(frame["true"]) | set(frame["predicted"]), key=lambda c: list(LABEL_COLOURS).index(c) if c in LABEL_COLOURS else 99)
    extra = iter(OKABE_ITO[c] for c in ("orange", "purple", "yellow", "black", "sky"))
    colours = {c: LABEL_COLOURS.get(c) or next(extra, OKABE_ITO["grey"]) for c in order}
    for r, m in enumerate(maps):
        for c, col in enumerate(("true", "predicted")):
            ax = axes[r, c]
            for label in reversed(order):  # COVID-19 drawn last, on top
                sel = frame[col] == label
                if sel.any():
                    ax.scatter(frame.loc[sel, f"{m}_x"], frame.loc[sel, f"{m}_y"], s=12, alpha=0.8, color=colours[label], label=label)
            ax.set_title(f"{'t-SNE' if m == 'tsne' else 'UMAP'}, {col} labels")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=max(len(handles), 1), frameon=False)
    return fig


# ---- page 5: overlays ------------------------------------------------------------------------

def _outline(ax, mask, colour, ls="-", lw=1.4) -> None:
    if np.asarray(mask).any():
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=[colour], linestyles=[ls], linewidths=lw)


@styled
def overlay_figure(cases, dpi: int = 110):
    """Page 5: rows = class, columns = best / median / worst; true masks solid (disease shaded),
    predictions (p >= 0.5) dashed. Titles: image_id, rank and Dice.

    Args:
        cases: ``OverlayCases`` from cmtlib.explain.overlays.
    """
    from matplotlib.lines import Line2D

    table = cases.cases
    classes = list(dict.fromkeys(table["class"])) or ["(none)"]
    ranks = list(dict.fromkeys(table["rank"])) or ["(none)"]
    fig, axes = new_figure(len(classes), len(ranks), width=2.8, height=3.0, dpi=dpi)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, (_, r) in enumerate(table.iterrows()):
        ax = axes[classes.index(r["class"]), ranks.index(r["rank"])]
        _image(ax, cases.images[k])
        if cases.known["disease"][k] and cases.true["disease"][k].any():
            ax.imshow(np.ma.masked_where(~cases.true["disease"][k], np.ones_like(cases.images[k], float)),
                      cmap=_one(DISEASE), alpha=0.3, vmin=0, vmax=1)
        for task, colour in (("lung", LUNG), ("disease", DISEASE)):
            if cases.known[task][k]:
                _outline(ax, cases.true[task][k], colour)
            if task in cases.predicted:
                _outline(ax, cases.predicted[task][k] >= 0.5, colour, ls="--")
        ax.set_title(fit_title(f"{r['image_id']}\n{r['class']}, {r['rank']}: {cases.task} Dice {r['dice']:.2f}", 30), fontsize=8)
    handles = [Line2D([], [], color=LUNG, label="lung, true"), Line2D([], [], color=LUNG, ls="--", label="lung, predicted"),
               Line2D([], [], color=DISEASE, label="disease, true"), Line2D([], [], color=DISEASE, ls="--", label="disease, predicted")]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False, fontsize=8)
    return fig


def _one(colour):
    from matplotlib.colors import ListedColormap

    return ListedColormap([colour])


# ---- page 6: review --------------------------------------------------------------------------

@styled
def error_rate_figure(tables: dict, dpi: int = 110):
    """Bars of error rate per group, one panel per table, each bar labelled errors/n.

    Args:
        tables: title -> ``cmtlib.explain.review.error_rates`` output (group, n, errors, error_rate).
    """
    fig, axes = new_figure(1, max(len(tables), 1), width=4.0, height=3.0, dpi=dpi)
    for ax, (title, t) in zip(axes.flat, tables.items()):
        x = np.arange(len(t))
        ax.bar(x, t["error_rate"].fillna(0), color=OKABE_ITO["vermillion"])
        for i, (e, n) in enumerate(zip(t["errors"], t["n"])):
            ax.text(i, 0.01 if n == 0 else float(t["error_rate"].iloc[i]) + 0.01, f"{e}/{n}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, t["group"].astype(str), rotation=30 if len(t) > 4 else 0)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("error rate")
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
    return fig


@styled
def cases_figure(images, titles: Sequence[str], ncols: int = 4, dpi: int = 110):
    """A grid of films (the paper's Fig. 9), titled by image_id and metadata (review.case_titles).

    Shape:
        images: (N, H, W) uint8 or float in [0, 1].
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    fig, axes = new_figure(max(1, -(-n // ncols)), ncols, width=2.6, height=2.9, dpi=dpi)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            _image(ax, images[i])
            ax.set_title(fit_title(titles[i], 30) if i < len(titles) else "", fontsize=8)
    return fig


# ---- page 7: CAMs ----------------------------------------------------------------------------

@styled
def cam_figure(images, maps: dict, lung=None, disease=None, titles: Sequence[str] = (), alpha: float = 0.45, dpi: int = 110):
    """Rows of images; a column per map (CAM methods, the model's disease map) over the image, and
    a last ground-truth column (disease shaded, lung outlined). Maps are drawn as given on a 0-1
    scale: CAMs are min-max normalised per image, the disease map is a probability.

    Shape:
        images: (N, H, W); maps: name -> (N, H, W) in [0, 1]; lung, disease: (N, H, W) 0/1 or None.
    """
    n, names = len(images), list(maps)
    fig, axes = new_figure(max(n, 1), len(names) + 1, width=2.1, height=2.2, dpi=dpi)
    for i in range(n):
        for j, name in enumerate(names):
            ax = axes[i, j]
            _image(ax, images[i])
            ax.imshow(maps[name][i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
            if lung is not None:
                _outline(ax, lung[i], "white", lw=0.8)
            if i == 0:
                ax.set_title(name, fontsize=9)
        ax = axes[i, -1]
        _image(ax, images[i])
        if disease is not None and np.asarray(disease[i]).any():
            ax.imshow(np.ma.masked_where(~np.asarray(disease[i], bool), np.ones(np.shape(images[i]))), cmap=_one(DISEASE),
                      alpha=0.45, vmin=0, vmax=1)
        if lung is not None:
            _outline(ax, lung[i], LUNG)
        ax.set_title(("ground truth\n" if i == 0 else "") + (fit_title(titles[i]) if i < len(titles) else ""), fontsize=8)
    return fig


@styled
def agreement_figure(summary: pd.DataFrame, dpi: int = 110):
    """Mean ± sd of each agreement measure by method (``cam.agreement_summary`` numeric output)."""
    fig, axes = new_figure(1, len(MEASURES), width=3.4, height=3.0, dpi=dpi)
    y = np.arange(len(summary))
    for ax, k in zip(axes.flat, MEASURES):
        ax.barh(y, summary[f"{k}_mean"].fillna(0), xerr=summary[f"{k}_sd"].fillna(0), color=OKABE_ITO["blue"])
        ax.set_yticks(y, summary.index.astype(str))
        ax.invert_yaxis()
        ax.set_xlim(0, 1.05)
        ax.set_title(k.replace("_", " "))
        ax.grid(axis="y", visible=False)
    return fig


# ---- page 8: shortcut audit ------------------------------------------------------------------

def _bars(ax, labels, values, lows, highs, named, bar: float, title: str, xlabel: str) -> None:
    """Horizontal bars with 95 % intervals, the named cues in vermillion, `bar` as a dotted line."""
    v = np.array([math.nan if x is None else float(x) for x in values])
    lo = np.array([math.nan if x is None else float(x) for x in lows])
    hi = np.array([math.nan if x is None else float(x) for x in highs])
    y = np.arange(len(labels))
    colours = [OKABE_ITO["vermillion"] if n else OKABE_ITO["sky"] for n in named]
    ax.barh(y, np.nan_to_num(v), color=colours)
    err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
    ax.errorbar(np.nan_to_num(v), y, xerr=np.clip(err, 0, None), fmt="none", ecolor=OKABE_ITO["black"], lw=1, capsize=2)
    for i, x in enumerate(v):
        ax.text(0.0 if math.isnan(x) else max(x, 0) + 0.01, i, "not measured" if math.isnan(x) else f"{x:.2f}", va="center", fontsize=7)
    ax.axvline(bar, color=OKABE_ITO["black"], ls=":", lw=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)


@styled
def audit_figure(audit: dict, dpi: int = 110):
    """Left: the network verdict's deciding checks (change of the COVID-19 probability per cue, with
    95 % intervals; dotted: the bar to name a cue). Right: the data verdict (AUC of the label from each
    cue; dotted: the bar for metadata). Named cues in vermillion.

    Args:
        audit: a run's shortcut_audit.json (cmtlib.experiments.audit).
    """
    from cmtlib.explain.verdicts import DATA_AUC, NET_EFFECT

    fig, axes = new_figure(1, 2, width=4.6, height=3.6, dpi=dpi)
    net = audit["network_verdict"]["cues"]
    _bars(axes[0, 0], list(net), [c["effect"] for c in net.values()], [c["ci_low"] for c in net.values()],
          [c["ci_high"] for c in net.values()], [c["named"] for c in net.values()], NET_EFFECT,
          "network: does the score follow it?", "change of p(COVID-19)")
    axes[0, 0].set_xlim(min(-0.1, axes[0, 0].get_xlim()[0]), max(0.5, axes[0, 0].get_xlim()[1]))
    data = audit["data_verdict"]["cues"]
    _bars(axes[0, 1], list(data), [c["auc"] for c in data.values()], [c["ci_low"] for c in data.values()],
          [c["ci_high"] for c in data.values()], [c["named"] for c in data.values()], DATA_AUC,
          "data: does it predict the label?", "AUC (0.5: no)")
    axes[0, 1].set_xlim(0, 1.1)
    return fig
