"""The External validation page (10_external): the run judged, at the threshold fixed in development,
on films from outside its training collections (cmtlib.experiments.external made the evaluations).

Per external set and per collection in it: films, patients and class mix; AUC where both classes are
present; sensitivity and specificity at the frozen threshold with patient-bootstrap 95 % intervals;
the score distribution beside the internal test films'; calibration; and plain sentences ("31 of 35
COVID-19 films from this collection are flagged ..."). Per set and collection too, the films the
in-distribution check (cmtlib.indist) finds unlike the run's training films, and what those films
score. Images are never named here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cmtlib.explain.review import known_covid
from cmtlib.plotting import OKABE_ITO, new_figure, styled
from cmtlib.report.pages.evaluation import flag_counts, flags
from cmtlib.report.pages.tables import as_number, ci_text, get_path
from cmtlib.run import Run

HOLDOUT_LABEL = "films held out of this run's own data"


@dataclass
class ExternalSet:
    """One external evaluation: its name, predictions.csv and metrics.json."""

    name: str
    predictions: pd.DataFrame
    metrics: dict[str, Any]

    @property
    def label(self) -> str:
        return HOLDOUT_LABEL if self.name == "holdout" else f"external set {self.name}"


def load_external(run: Run) -> list[ExternalSet]:
    """Every evaluated <run>/external/<name>/ (Run.externals: holdout first, then by name)."""
    return [ExternalSet(e.name, e.predictions, e.metrics or {}) for e in run.externals()]


def _class_mix(df: pd.DataFrame) -> dict[str, int]:
    y = pd.to_numeric(df.get("label_covid", pd.Series(dtype=str)), errors="coerce")
    return {"films": len(df), "patients": int(df["patient_id"].replace("", np.nan).nunique()) if "patient_id" in df else len(df),
            "COVID-19": int((y == 1).sum()), "COVID-negative": int((y == 0).sum()), "label unknown": int(y.isna().sum())}


def _figures(block: dict) -> dict[str, str]:
    covid = (block or {}).get("covid") or {}
    return {"AUC": ci_text(covid.get("auc"), covid.get("auc_ci_low"), covid.get("auc_ci_high")),
            "sensitivity at the threshold": ci_text(covid.get("sensitivity"), covid.get("sensitivity_ci_low"), covid.get("sensitivity_ci_high")),
            "specificity at the threshold": ci_text(covid.get("specificity"), covid.get("specificity_ci_low"), covid.get("specificity_ci_high")),
            "calibration error": ci_text(get_path(block, "calibration.ece"), get_path(block, "calibration.ece_ci_low"),
                                         get_path(block, "calibration.ece_ci_high"))}


def summary_table(sets: list[ExternalSet], internal: dict | None = None, internal_predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per set and per collection in it (and the internal test films first, to compare):
    class mix, AUC, sensitivity and specificity at the frozen threshold, calibration error."""
    rows = []
    if internal is not None and internal_predictions is not None:
        rows.append({"films from": "internal test films (same collections as training)", **_class_mix(internal_predictions), **_figures(internal)})
    for s in sets:
        rows.append({"films from": s.label, **_class_mix(s.predictions), **_figures(s.metrics)})
        by_source = s.metrics.get("by_source") or {}
        if len(by_source) > 1:
            for source, block in sorted(by_source.items()):
                part = s.predictions[s.predictions["source"].fillna("").replace("", "unknown") == source]
                rows.append({"films from": f"  {s.label}: {source}", **_class_mix(part), **_figures(block)})
    return pd.DataFrame(rows)


def verdicts(sets: list[ExternalSet], threshold: float | None) -> list[str]:
    """Plain sentences per set and collection: how many COVID-19 films are flagged, how many
    COVID-negative films falsely flagged, at the threshold fixed in development."""
    if threshold is None:
        return ["The run has no operating threshold, so no film is called COVID-19."]
    out = []
    for s in sets:
        groups = [(s.label, s.predictions)] + ([(f"{s.label} ({src})", g) for src, g in s.predictions.groupby(s.predictions["source"].fillna(""))]
                                               if s.predictions["source"].nunique() > 1 else [])
        for label, df in groups:
            y, p = known_covid(df)
            pos, neg = p[y == 1], p[y == 0]
            parts = []
            if len(pos):
                parts.append(f"{int((pos >= threshold).sum())} of {len(pos)} COVID-19 films are flagged")
            if len(neg):
                parts.append(f"{int((neg >= threshold).sum())} of {len(neg)} COVID-negative films are falsely flagged")
            if parts:
                out.append(f"{label[0].upper()}{label[1:]}: " + " and ".join(parts) + f" at the threshold fixed in development ({threshold:.3g}).")
    return out


@styled
def score_figure(sets: list[ExternalSet], internal_predictions: pd.DataFrame | None, threshold: float | None, dpi: int = 110):
    """The COVID-19 probability of every film, one row per set (internal test first), COVID-19 films
    in vermillion, COVID-negative in blue, the frozen threshold as a dashed line."""
    rows = ([("internal test", internal_predictions)] if internal_predictions is not None else []) + [(s.label, s.predictions) for s in sets]
    fig, axes = new_figure(1, 1, width=7.0, height=0.7 * len(rows) + 1.2, dpi=dpi)
    ax = axes[0, 0]
    rng = np.random.default_rng(0)  # a fixed jitter: the figure is the same on every run
    for i, (_, df) in enumerate(rows):
        df = df[_known(df)]  # the rows known_covid keeps, so the flags line up with them
        y, p = known_covid(df)
        f = flags(df)
        outside = (f == 0).to_numpy() if f is not None else np.zeros(len(df), bool)
        for cls, colour, offset in ((0, OKABE_ITO["blue"], -0.15), (1, OKABE_ITO["vermillion"], 0.15)):
            for ring in (False, True):  # films the in-distribution check flags: open rings
                keep = (y == cls) & (outside == ring)
                v = p[keep]
                ax.scatter(v, np.full(len(v), i + offset) + rng.uniform(-0.08, 0.08, len(v)), s=14 if ring else 10, alpha=0.8 if ring else 0.6,
                           facecolors="none" if ring else colour, edgecolors=colour, linewidths=0.9,
                           label=None if i or ring else ("COVID-19" if cls else "COVID-negative"))
    if any((flags(df) == 0).any() for _, df in rows if flags(df) is not None):
        ax.scatter([], [], s=14, facecolors="none", edgecolors=OKABE_ITO["black"], label="unlike the training films (ring)")
    if threshold is not None:
        ax.axvline(threshold, color=OKABE_ITO["black"], ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("COVID-19 probability")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=4, frameon=False)
    return fig


def _known(df: pd.DataFrame) -> pd.Series:
    """Rows whose COVID-19 label and score are both known (what known_covid returns)."""
    return pd.to_numeric(df["label_covid"], errors="coerce").notna() & pd.to_numeric(df["p_covid"], errors="coerce").notna()


def _groups(s: ExternalSet) -> list[tuple[str, pd.DataFrame]]:
    """A set whole, then each collection in it when it holds several."""
    source = s.predictions["source"].fillna("").replace("", "unknown")
    return [(s.label, s.predictions)] + ([(f"  {s.label}: {name}", g) for name, g in s.predictions.groupby(source)] if source.nunique() > 1 else [])


def in_distribution_table(sets: list[ExternalSet], internal_predictions: pd.DataFrame | None, threshold: float | None) -> pd.DataFrame:
    """Per set and per collection in it (the internal test films first): films, how many the
    in-distribution check flags as unlike the training films, and what the flagged films score (their
    COVID-19 probabilities, how many reach the threshold); empty when no evaluation has the check."""
    groups = ([("internal test films (same collections as training)", internal_predictions)] if internal_predictions is not None else [])
    groups += [g for s in sets for g in _groups(s)]
    rows = [{"films from": label, **flag_counts(df, threshold)} for label, df in groups if flags(df) is not None]
    return pd.DataFrame(rows)


def in_distribution_verdicts(sets: list[ExternalSet], threshold: float | None) -> list[str]:
    """Plain sentences per set and collection: how many films look unlike the training films, and
    what they score."""
    out = []
    for s in sets:
        for label, df in _groups(s):
            if flags(df) is None:
                continue
            c = flag_counts(df, threshold)
            text = f"{label.strip()[0].upper()}{label.strip()[1:]}: {c['flagged']} of {c['films']} films ({c['share flagged']}) look unlike the films this run was trained on"
            if c["flagged"]:
                text += f"; their COVID-19 probabilities: {c['COVID-19 probability of the flagged films']}"
                if threshold is not None:
                    text += f", {c['flagged films at or above the threshold']} at or above the threshold"
                text += f" (most common reasons: {c['most common reasons']})"
            out.append(text + ".")
    return out


def index_rows(run: Run) -> list[dict[str, str]]:
    """External figures for the report's index, beside the internal ones: set, AUC, sensitivity and
    specificity at the frozen threshold (with intervals)."""
    return [{"set": s.label, **{k: v for k, v in _figures(s.metrics).items() if k != "calibration error"}} for s in load_external(run)]


def threshold_value(run: Run) -> float | None:
    """The run's frozen operating threshold (None when it has none)."""
    return as_number(run.operating_threshold)
