"""Figures of the data and training pages: functions take arrays / DataFrames and return matplotlib
Figures in the project's style (cmtlib.plotting), shown once where `show.figure` puts them."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cmtlib.plotting import DISEASE_COLOUR, LUNG_COLOUR, OKABE_ITO, PHASE_STYLE, SPLIT_COLOURS, fit_title, new_figure, styled
from cmtlib.report.pages.tables import counts_table


@styled
def counts_figure(df: pd.DataFrame, columns: Sequence[str] = ("source", "view", "class"), dpi: int = 110):
    """One horizontal bar chart per column (e.g. source, view, class), bars stacked by split.

    Args:
        df: manifest rows (needs `split` and the named columns; 'class' is derived from the labels).
    """
    fig, axes = new_figure(1, len(columns), width=4.2, height=max(2.4, 0.35 * _max_levels(df, columns) + 1.2), dpi=dpi)
    for ax, col in zip(axes[0], columns):
        table = counts_table(df, col).drop(index="total").drop(columns="total")
        left = np.zeros(len(table))
        for split in table.columns:
            colour = SPLIT_COLOURS.get(split, OKABE_ITO["grey"])
            ax.barh(table.index.astype(str), table[split].to_numpy(), left=left, color=colour, label=split)
            left += table[split].to_numpy()
        ax.set_title(f"by {col}")
        ax.set_xlabel("images")
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=max(len(labels), 1), title="split", frameon=False)
    return fig


def _max_levels(df: pd.DataFrame, columns: Sequence[str]) -> int:
    return max((counts_table(df, c).shape[0] - 1 for c in columns), default=1)


@styled
def bar_figure(counts: pd.Series, title: str, xlabel: str = "images", dpi: int = 110):
    """A horizontal bar chart of one count per label (e.g. images per licence)."""
    fig, axes = new_figure(1, 1, width=6.0, height=max(2.0, 0.35 * len(counts) + 1.0), dpi=dpi)
    ax = axes[0, 0]
    ax.barh([str(i) for i in counts.index], counts.to_numpy(), color=OKABE_ITO["blue"])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    return fig


@styled
def sample_grid(images: np.ndarray, lung: np.ndarray | None = None, disease: np.ndarray | None = None,
                titles: Sequence[str] = (), ncols: int = 4, dpi: int = 110):
    """Chest X-rays with the lung outline (sky blue) and disease region (vermillion, shaded).

    Shape:
        images: (N, H, W) uint8 or float in [0, 1]; lung, disease: (N, H, W) 0/1, or None.
        An all-zero mask draws nothing (unknown and empty look alike here; titles say which).
    """
    from matplotlib.patches import Patch

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = new_figure(nrows, ncols, width=2.6, height=2.9, dpi=dpi)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255 if images.dtype == np.uint8 else 1, interpolation="bilinear")
        if lung is not None and lung[i].any():
            ax.contour(lung[i].astype(float), levels=[0.5], colors=[LUNG_COLOUR], linewidths=1.5)
        if disease is not None and disease[i].any():
            shade = np.ma.masked_where(disease[i] == 0, disease[i].astype(float))
            ax.imshow(shade, cmap=_single_colour(DISEASE_COLOUR), alpha=0.35, vmin=0, vmax=1)
            ax.contour(disease[i].astype(float), levels=[0.5], colors=[DISEASE_COLOUR], linewidths=1.0)
        if i < len(titles):
            ax.set_title(fit_title(titles[i]), fontsize=9)
    fig.legend(handles=[Patch(edgecolor=LUNG_COLOUR, facecolor="none", linewidth=1.5, label="lung outline"),
                        Patch(edgecolor=DISEASE_COLOUR, facecolor=DISEASE_COLOUR, alpha=0.5, label="disease region")],
               loc="outside lower center", ncols=2, frameon=False)
    return fig


def _single_colour(colour: str):
    from matplotlib.colors import ListedColormap

    return ListedColormap([colour])


# --- training history -------------------------------------------------------------------------
_PHASES = ("train", "val")
_SEP = r"[_/.\- ]"


# A history term ending in one of these is a validation metric; any other phased term is a loss
# (the engine logs train_<term> / val_<term> loss terms and val_covid_auc, val_lung_dice, ...).
METRIC_SUFFIXES = ("auc", "dice", "iou", "acc", "accuracy", "eer", "ece", "sens", "spec", "f1", "precision", "recall")


def history_terms(columns: Sequence[str]) -> dict[str, dict[str, dict[str, str]]]:
    """Group history columns into {'loss': {term: {phase: column}}, 'metric': {...}}.

    The phase (train / val) is a prefix or suffix (`train_lung`, `val/loss/lung`, `loss_lung_val`);
    a term ending in a metric name (auc, dice, ...) is a metric, any other is a loss term, and the
    bare `loss` is 'total'. Columns without a phase (epoch, lr, seconds) are left out.
    """
    out: dict[str, dict[str, dict[str, str]]] = {"loss": {}, "metric": {}}
    for col in columns:
        name = str(col).lower()
        phase, rest = None, name
        for p in _PHASES:
            m = re.fullmatch(rf"{p}(?:{_SEP}+)(.+)", name) or re.fullmatch(rf"(.+?)(?:{_SEP}+){p}", name)
            if m:
                phase, rest = p, m.group(1)
                break
        if phase is None:
            continue
        tokens = [t for t in re.split(rf"{_SEP}+", rest) if t]
        if tokens and tokens[-1] in METRIC_SUFFIXES:
            kind, term = "metric", "_".join(tokens)
        else:
            kind, term = "loss", "_".join(t for t in tokens if t != "loss") or "total"
        out[kind].setdefault(term, {})[phase] = col
    return out


# Plain names for the engine's history terms (anything else is shown with '_' as a space).
TERM_LABELS = {
    "total": "all tasks together", "lung": "lung outline", "disease": "disease region", "healthy": "healthy or not",
    "covid": "COVID-19", "other": "other disease", "multilabel": "COVID-19 and other disease",
    "covid_auc": "COVID-19 AUC", "lung_dice": "lung Dice", "disease_dice": "disease Dice",
}


def term_label(term: str) -> str:
    return TERM_LABELS.get(term, term.replace("_", " "))


def _epochs(history: pd.DataFrame) -> np.ndarray:
    return history["epoch"].to_numpy() if "epoch" in history.columns else np.arange(1, len(history) + 1)


@styled
def curves_figure(history: pd.DataFrame, kind: str = "loss", ncols: int = 3, dpi: int = 110):
    """One small chart per loss term (kind='loss', train and validation lines) or per validation
    metric (kind='metric'), against the epoch. Returns None when history has no such columns."""
    from matplotlib.ticker import MaxNLocator

    terms = history_terms(list(history.columns))[kind]
    if not terms or history.empty:
        return None
    order = sorted(terms, key=lambda t: (t != "total", t))
    ncols = min(ncols, len(order))
    nrows = -(-len(order) // ncols)
    fig, axes = new_figure(nrows, ncols, width=3.6, height=2.7, dpi=dpi)
    x = _epochs(history)
    for ax, term in zip(axes.flat, order):
        for phase in _PHASES:
            col = terms[term].get(phase)
            if col is not None:
                y = pd.to_numeric(history[col], errors="coerce").to_numpy()
                ax.plot(x, y, label="training" if phase == "train" else "validation", **PHASE_STYLE[phase])
        ax.set_title(term_label(term))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if kind == "loss":
            ax.set_ylabel("loss")
        elif term.endswith(("auc", "dice", "iou", "acc", "accuracy")):
            ax.set_ylim(0, 1.02)  # bounded scores on their whole scale: a jump from 0.98 to 0.99 looks small
    for ax in list(axes.flat)[len(order):]:
        ax.set_axis_off()
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center", ncols=2, frameon=False)
    return fig


__all__ = ["bar_figure", "counts_figure", "curves_figure", "history_terms", "sample_grid"]
