"""Glue of the result pages (notebooks 03-08): what every page says about its run, and the plain
tables of the evaluation, outlines and misclassification pages (03, 05, 06).

Builders are pure (DataFrames and strings in, DataFrames and strings out) and tested; the few
helpers that show something on a page return None, like cmtlib.report.page. Column and measure
names are plain words for clinicians; images are named by image_id only.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmtlib.errors import ConfigError, MissingInputError
from cmtlib.report import page
from cmtlib.report.tables import as_number, get_path, safe_table

# metrics.json key -> (plain name, how to read it). The order is the page's.
METRICS = (
    ("covid.auc", "COVID-19 detection: area under the ROC curve",
     "1 = every COVID-19 film scores above every other film; 0.5 = chance"),
    ("covid.sens_at_spec99", "COVID-19 detection: sensitivity at 99 % specificity (threshold chosen on validation)",
     "share of COVID-19 films flagged at the threshold fixed beforehand on the validation films to allow 1 false alarm in 100"),
    ("covid.sens_at_spec99_oracle", "COVID-19 detection: sensitivity at 99 % specificity (threshold chosen on the test films)",
     "the same with the threshold tuned on the test films themselves: optimistic, an upper bound"),
    ("covid.eer", "COVID-19 detection: equal error rate",
     "error rate at the threshold where missed COVID-19 films and false alarms are equally common (lower is better)"),
    ("covid.accuracy", "COVID-19 detection: accuracy at probability 0.5", "share of films called correctly COVID-19 or not"),
    ("healthy.accuracy", "Healthy or unhealthy: accuracy at probability 0.5", "share of films called correctly healthy or unhealthy"),
    ("other.accuracy", "Other disease: accuracy at probability 0.5", "share of films called correctly as showing another disease or not"),
    ("covid_as_unhealthy", "COVID-19 films called unhealthy",
     "share of COVID-19 films that the healthy/unhealthy output calls unhealthy (higher is better)"),
    ("lung.dice", "Lung outline: Dice overlap", "overlap of the outlined lungs with the reference outline (1 = identical, 0 = none)"),
    ("lung.iou", "Lung outline: intersection over union", "a stricter overlap score (1 = identical)"),
    ("disease.dice", "Disease region: Dice overlap", "overlap with the reference disease region, on films that have one (1 = identical)"),
    ("disease.iou", "Disease region: intersection over union", "a stricter overlap score (1 = identical)"),
    ("calibration.ece", "COVID-19 probability: expected calibration error",
     "average gap between the stated COVID-19 probability and how often it is COVID-19 (0 = honest probabilities)"),
)
# by_view / by_source tables: (metrics key, plain column name).
GROUP_KEYS = (("covid.auc", "COVID-19 AUC"), ("covid.sens_at_spec99", "sensitivity at 99 % specificity"),
              ("covid.accuracy", "COVID-19 accuracy"), ("healthy.accuracy", "healthy/unhealthy accuracy"),
              ("lung.dice", "lung Dice"), ("disease.dice", "disease Dice"), ("calibration.ece", "calibration error"))
CONFUSION_COLUMNS = {"n": "films", "tn": "true negatives", "fp": "false positives", "fn": "false negatives",
                     "tp": "true positives", "task": "decision"}
MIN_NEGATIVES = 100  # below this a 1 % false-alarm rate cannot be estimated (DESIGN.md, Metrics)


# ---- every page ------------------------------------------------------------------------------

def set_threads(n: int) -> None:
    """CPU threads for torch and for numpy / scikit-learn (BLAS, OpenMP); 0 leaves the defaults.

    On a shared CPU one thread is often several times faster than two: two pages' kernels, or
    other jobs, fight for the cores otherwise. The limit stays in force for the kernel's life.
    """
    if n < 0:
        raise ConfigError(f"threads must be >= 0 (0 = the libraries' defaults), got {n}")
    if n == 0:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(int(n))
    threadpool_limits(limits=int(n))


def cache_dir(run: Any) -> Path:
    """The data cache the run was trained and evaluated on (run.json `data_cache`)."""
    path = run.info_value("data_cache", default="")
    if not path or not (Path(path) / "index.csv").is_file():
        raise MissingInputError(f"the data cache of {run.run_dir} ({path or 'not recorded in run.json'}) is not on this "
                                "machine; these pages draw the films from it: run where the cache is, or rebuild it "
                                "with the run's params (cmt train --params ... prepares it)")
    return Path(path)


def load_run_model(run: Any, which: str = "best"):
    """The run's trained model on the CPU, in eval mode (cmtlib.checkpoint.load_model)."""
    from cmtlib.checkpoint import load_model

    model, _ = load_model(run.run_dir, which, "cpu")
    return model


def provenance_line(params: Any, predictions: pd.DataFrame | None = None) -> str:
    """Where the films come from, in one line (synthetic phantoms, or the named public collections)."""
    from cmtlib.report.data_summary import SOURCE_NOTES

    if params.data.data_kind == "synthetic":
        return ("Synthetic chest X-ray phantoms drawn by cmtlib, not patients: results here show that the method and "
                "software work, not how they would perform in a clinic.")
    sources = []
    if predictions is not None and "source" in predictions.columns:
        sources = sorted(predictions["source"].fillna("").astype(str).replace("", "unknown").unique())
    named = [f"{s} ({next((v for k, v in SOURCE_NOTES.items() if s.lower().startswith(k)), 'a public collection')})"
             for s in sources]
    return ("Public research collections of chest X-rays" + (f": {'; '.join(named)}" if named else "")
            + ". They are convenience samples, not a clinical population.")


def context_rows(params: Any, run: Any) -> list[tuple[str, str]]:
    """(label, text) rows every result page starts with: where the weights and the data come from."""
    from cmtlib.report.training_summary import weights_text

    return [("network's starting weights", weights_text(run.info)),
            ("data", provenance_line(params, run.predictions))]


def context(params: Any, run: Any) -> None:
    """Show `context_rows` as a small table."""
    page.facts(context_rows(params, run))


def bullets_html(items: Iterable[str], empty: str = "None.") -> str:
    items = [str(i) for i in items]
    if not items:
        return page.text_html(empty)
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def bullets(items: Iterable[str], empty: str = "None.") -> None:
    """A bulleted list of plain sentences (or `empty` said when there are none)."""
    page.show_html(bullets_html(items, empty))


# ---- page 3: evaluation ----------------------------------------------------------------------

def _metric(metrics: dict | None, key: str) -> tuple[Any, Any, Any]:
    """(value, ci_low, ci_high) of a dotted metrics.json key ('covid_as_unhealthy' is top-level)."""
    section, _, name = key.rpartition(".")
    block = get_path(metrics, section) if section else metrics
    if not isinstance(block, dict):
        return None, None, None
    return block.get(name), block.get(f"{name}_ci_low"), block.get(f"{name}_ci_high")


def metrics_table(metrics: dict | None) -> pd.DataFrame:
    """The test metrics with plain names: measure, value, 95 % confidence interval, how to read it."""
    rows = []
    for key, name, meaning in METRICS:
        value, low, high = _metric(metrics, key)
        v, lo, hi = as_number(value), as_number(low), as_number(high)
        rows.append({"measure": name,
                     "value": "not available (no ground truth)" if v is None else f"{v:.3f}",
                     "95 % confidence interval": "" if v is None or lo is None or hi is None else f"{lo:.3f} to {hi:.3f}",
                     "how to read it": meaning})
    return pd.DataFrame(rows)


def threshold_text(metrics: dict | None, threshold: dict | None) -> str:
    """The COVID-19 threshold in words: its value and how it was chosen."""
    t = as_number((threshold or {}).get("covid_threshold", get_path(metrics, "covid.threshold")))
    if t is None:
        return ("No COVID-19 threshold could be chosen on the validation films (none is COVID-negative, or the model has "
                "no COVID-19 output), so sensitivity at 99 % specificity is not available.")
    return (f"The COVID-19 threshold is {t:.3g}: a film whose COVID-19 probability is at or above it is called COVID-19. "
            "It was chosen on the validation films, before the test films were scored, so that at most 1 in 100 "
            "COVID-negative validation films is falsely flagged, and then held fixed.")


def negatives_warnings(metrics: dict | None, threshold: dict | None) -> list[str]:
    """With fewer than 100 COVID-negative films in validation or test, that the 1 % false-alarm rate
    cannot be estimated there (DESIGN.md, Metrics); [] otherwise."""
    out = []
    n_val = (threshold or {}).get("n_negative")
    if n_val is not None and int(n_val) < MIN_NEGATIVES:
        out.append(f"The validation split has only {int(n_val)} COVID-negative films, fewer than {MIN_NEGATIVES}: the 1 % "
                   "false-alarm rate cannot be estimated. The threshold sits above every validation negative, so "
                   "'sensitivity at 99 % specificity' here means sensitivity with no validation false alarm.")
    n_test = get_path(metrics, "counts.n_negative")
    if n_test is not None and int(n_test) < MIN_NEGATIVES:
        out.append(f"The test split has only {int(n_test)} COVID-negative films, fewer than {MIN_NEGATIVES}: the 1 % "
                   "false-alarm rate cannot be estimated on it (a single false alarm is already more than 1 %).")
    return out


# metrics.json names in the evaluation's notes -> plain words (longest first, so no name is cut).
_NOTE_WORDS = {"sens_at_spec99_oracle": "sensitivity at 99 % specificity (threshold chosen on the test films)",
               "sens_at_spec99": "sensitivity at 99 % specificity", "covid_as_unhealthy": "COVID-19 films called unhealthy",
               "calibration.ece": "calibration error", "covid.": "COVID-19 ", "healthy.": "healthy/unhealthy ",
               "other.": "other-disease ", "lung.": "lung ", "disease.": "disease ", "dice": "Dice", "iou": "IoU",
               "auc": "AUC", "eer": "equal error rate", "CIs": "confidence intervals", "CI null": "no confidence interval"}
_NOTE_RE = re.compile("|".join(rf"(?<!\w){re.escape(k)}" + (r"(?!\w)" if k[-1].isalnum() else "")
                               for k in sorted(_NOTE_WORDS, key=len, reverse=True)))


def plain_notes(notes: Iterable[str]) -> list[str]:
    """metrics.json's notes with its key names replaced by plain words."""
    return [_NOTE_RE.sub(lambda m: _NOTE_WORDS[m.group(0)], str(n)) for n in notes or []]


def counts_text(metrics: dict | None) -> str:
    c = get_path(metrics, "counts") or {}
    if not c:
        return "The test counts were not recorded."
    return (f"{c.get('n_images', '?')} test films from {c.get('n_patients', '?')} patients: {c.get('n_covid', '?')} "
            f"COVID-19 and {c.get('n_negative', '?')} COVID-negative (the rest have no COVID-19 label).")


def group_metrics_table(metrics: dict, by: str) -> pd.DataFrame:
    """metrics.json's by_view / by_source with plain column names (values 'x (low-high)')."""
    from cmtlib.explain.plots import group_table

    if f"by_{by}" not in (metrics or {}):
        return pd.DataFrame()
    return group_table(metrics, by, GROUP_KEYS).rename(columns={"images": "films", "COVID-19": "COVID-19 films"})


def confusion_table(table: pd.DataFrame) -> pd.DataFrame:
    """review.group_confusion_table with plain column names."""
    return table.rename(columns=CONFUSION_COLUMNS)


def ci_sentence(metrics: dict | None) -> str:
    ci = get_path(metrics, "ci") or {}
    n = ci.get("n_boot")
    return ("Confidence intervals: 95 %, from " + (f"{n} " if n else "") + "bootstrap resamples of the test patients "
            "(a patient's films stay together), with the threshold held fixed. A wide interval means few test films.")


# ---- page 5: outlines ------------------------------------------------------------------------

def dice_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per class and task: films with a reference outline, median Dice and its quartiles, worst Dice."""
    from cmtlib.explain.overlays import CLASSES, true_class

    cls = true_class(predictions)
    rows = []
    for task, name in (("lung", "lungs"), ("disease", "disease region")):
        col = f"{task}_dice"
        d = pd.to_numeric(predictions[col], errors="coerce") if col in predictions.columns else pd.Series(np.nan, index=predictions.index)
        for c in CLASSES:
            x = d[(cls == c) & d.notna()]
            rows.append({"outline": name, "class": c, "films with a reference": len(x),
                         "median Dice": x.median() if len(x) else np.nan,
                         "middle half of films": f"{x.quantile(0.25):.2f} to {x.quantile(0.75):.2f}" if len(x) else "",
                         "lowest Dice": x.min() if len(x) else np.nan})
    out = pd.DataFrame(rows)
    return out[out["films with a reference"] > 0].reset_index(drop=True)


def cases_table(cases: pd.DataFrame) -> pd.DataFrame:
    """overlay_cases' chosen cases: class, which case, image, Dice."""
    if cases is None or cases.empty:
        return pd.DataFrame(columns=["class", "case", "image", "Dice"])
    return cases.rename(columns={"rank": "case", "image_id": "image", "dice": "Dice"})[["class", "case", "image", "Dice"]]


# ---- page 6: misclassification review --------------------------------------------------------

REVIEW_COLUMNS = {"image_id": "image", "offset_days": "day since admission", "day_bin": "days group",
                  "label_covid": "COVID-19 (truth)", "label_healthy": "healthy (truth)", "p_covid": "COVID-19 probability",
                  "p_healthy": "healthy probability", "p_other": "other-disease probability", "errors": "what went wrong",
                  "also_missed_covid": "also below the COVID-19 threshold"}
# What each review table shows (a page is ~1000 px wide: the rest of review's columns are implied,
# e.g. the truth by 'what went wrong', or the same for every row, e.g. the finding of COVID-19 films).
MISCLASSIFIED_SHOWN = ("image_id", "errors", "source", "view", "offset_days", "sex", "age", "finding", "p_covid", "p_healthy")
CALLED_HEALTHY_SHOWN = ("image_id", "source", "view", "offset_days", "sex", "age", "p_covid", "p_healthy", "also_missed_covid")


def _yes_no(x: Any) -> str:
    v = as_number(x)
    return "unknown" if v is None else ("yes" if v == 1 else "no")


def review_table(df: pd.DataFrame, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """A review table (review.misclassified, review.covid_called_healthy) with plain column names
    and values: labels as yes / no, days and ages as whole numbers, no file paths; `columns` keeps
    those of review's columns (in that order) that the table has."""
    out = safe_table(df)
    if columns is not None:
        out = out[[c for c in columns if c in out.columns]]
    for col in ("label_covid", "label_healthy"):
        if col in out.columns:
            out[col] = out[col].map(_yes_no)
    if "also_missed_covid" in out.columns:
        out["also_missed_covid"] = out["also_missed_covid"].map(lambda v: "unknown" if pd.isna(v) else ("yes" if v else "no"))
    for col in ("offset_days", "age"):
        if col in out.columns:
            out[col] = out[col].map(lambda v: "" if as_number(v) is None else f"{as_number(v):.0f}")
    return out.rename(columns=REVIEW_COLUMNS)


def misclassified_table(df: pd.DataFrame) -> pd.DataFrame:
    return review_table(df, MISCLASSIFIED_SHOWN)


def called_healthy_table(df: pd.DataFrame) -> pd.DataFrame:
    return review_table(df, CALLED_HEALTHY_SHOWN)


def error_rate_table(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """review.error_rates with plain names; `what` names the group column (e.g. 'view')."""
    out = table.rename(columns={"group": what, "n": "films", "errors": "wrong", "error_rate": "error rate"})
    out["error rate"] = [("" if math.isnan(r) else f"{100 * r:.0f} %") for r in out["error rate"].astype(float)]
    return out
